"""The saved model directory, read and written in one place.

    <output_dir>/<dataset>/<category>/<architecture>/<loss>/<YYYY-mm-dd_HH-MM-SS>/
        <architecture>_b<batch>_e<best epoch>.keras
        config.yaml  history.csv  plots/  inspection/  checkpoint/
        finetune/<method>_<dtype>/finetune.json ...
        test/<method>_<dtype>/metrics.json  predictions.csv  images/  maps/
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from anomaly.errors import AnomalyError

MODEL_SUFFIXES = (".keras", ".hdf5", ".h5", ".npz")
# Every file name of the model directory's contract, in one place.
CONFIG_FILE = "config.yaml"
DETECTOR_FILE = "detector.yaml"       # the detector's class name and hyper-parameters
SUMMARY_FILE = "detector.json"        # fit seconds and what it learned
HISTORY_FILE = "history.csv"
FINETUNE_FILE = "finetune.json"
STATS_FILE = "map_stats.npz"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"


def check_output_dir(output_dir: str | Path, flag: str = "-o") -> Path:
    """Make sure `output_dir` is a writable folder or can be made one, before any work is done.

    Nothing is created: a run that fails later on other input leaves no empty folder behind.

    Raises:
        AnomalyError: it is a file, lies under a file, or its nearest existing folder is not
            writable.
    """
    path = Path(output_dir).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "a file" if existing == path else f"under the file {existing}"
        raise AnomalyError(f"{flag} {path}: expected a folder, got {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AnomalyError(f"{flag} {path}: {existing} is not writable")
    return path


def new_model_dir(output_dir: str | Path, dataset_name: str, architecture: str, variant: str) -> Path:
    """Create a fresh timestamped model directory inside `output_dir`; never reuses an existing one.

    Raises:
        AnomalyError: the names would place the directory outside `output_dir` (e.g. "..").
    """
    root = Path(output_dir).resolve()
    base = root / dataset_name / architecture / variant
    if any(part in ("", ".", "..") for part in Path(dataset_name, architecture, variant).parts) \
            or not base.resolve().is_relative_to(root):
        raise AnomalyError(f"-o {output_dir}: the model directory {base} would not lie inside it")
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    for i in range(1000):
        path = base / (stamp if i == 0 else f"{stamp}_{i}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise AnomalyError(f"{base}: cannot create a new model directory")


def resolve(path: str | Path) -> tuple[Path, Path]:
    """(model directory, model file) for `-p`, which names either of them.

    Raises:
        AnomalyError: the path is missing, is not a model file, or the directory holds none.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise AnomalyError(f"-p {path}: no such model file or directory")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in MODEL_SUFFIXES and p.is_file())
        if not files:
            state = path / "checkpoint" / "state.json"
            hint = " (training did not finish: resume it with anomaly-train --resume)" if state.exists() else ""
            raise AnomalyError(f"-p {path}: no model file (*.keras, *.hdf5, *.npz) in this directory{hint}")
        return path, files[-1]
    if path.suffix not in MODEL_SUFFIXES:
        raise AnomalyError(f"-p {path}: expected a model file (.keras, .hdf5, .h5, .npz) or its directory")
    if not (path.parent / CONFIG_FILE).exists():
        raise AnomalyError(f"-p {path}: no {CONFIG_FILE} beside the model file "
                           "(not a model directory made by anomaly-train)")
    return path.parent, path


def read_config(model_dir: Path) -> dict[str, Any]:
    """The resolved configuration saved by training."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.exists():
        raise AnomalyError(f"{model_dir}: no {CONFIG_FILE} (not a model directory made by anomaly-train)")
    return read_yaml_mapping(path)


def read_yaml_mapping(path, allow_empty: bool = False) -> dict[str, Any]:
    """A YAML file holding a mapping (safe loader: no tags beyond YAML's own types).

    Args:
        path: a file path or a package resource (`importlib.resources`).
        allow_empty: an empty file (or only comments) is an empty mapping rather than an error.

    Raises:
        AnomalyError: the file is missing, unreadable, not YAML or not a mapping.
    """
    path = Path(path) if isinstance(path, str) else path
    try:
        data = yaml.safe_load(path.read_text())
        if data is None and allow_empty:
            data = {}
    except OSError as exc:
        raise AnomalyError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise AnomalyError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise AnomalyError(f"{path}: expected a mapping of option: value")
    return data


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_prefix(name: str) -> str:
    # The writer's pid in the name lets a later run tell a dead run's leftovers from a live one's.
    return f".{name}.tmp-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(target: Path) -> None:
    """Delete the temporary and old copies of `target` left by runs that were killed."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    for kind in ("tmp", "old"):
        for leftover in target.parent.glob(f".{glob.escape(target.name)}.{kind}-*"):
            pid = leftover.name[len(f".{target.name}.{kind}-"):].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write a file whole or not at all (temporary file, then rename), with the umask's permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path.name))
    try:
        # mkstemp makes 0600 files; the result should be readable as any file the user writes.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_yaml(path: Path, data: Any) -> None:
    write_text(path, yaml.safe_dump(data, sort_keys=False))


@contextlib.contextmanager
def replace_folder(target: Path) -> Iterator[Path]:
    """Build a folder under a temporary name and swap it in for `target` only on success.

    Yields:
        The temporary folder to write into. If the block raises (or is interrupted), the
        temporary folder is deleted and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=_tmp_prefix(target.name)))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700 folders; colleagues must read the results
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def unused_folder(base: Path) -> Path:
    """`base`, or `base_1`, `base_2`, ... : the first that does not exist (a run never writes into another's)."""
    base = Path(base)
    return next(p for i in range(10_000) if not (p := base.with_name(f"{base.name}_{i}" if i else base.name)).exists())


def finetune_dir(model_dir: Path, method: str, dtype: str) -> Path:
    return Path(model_dir) / "finetune" / f"{method}_{dtype}"


def test_dir(model_dir: Path, method: str, dtype: str) -> Path:
    return Path(model_dir) / "test" / f"{method}_{dtype}"


def finetune_results(model_dir: Path) -> list[Path]:
    """Every finetune.json of a model directory, sorted."""
    return sorted((Path(model_dir) / "finetune").glob(f"*/{FINETUNE_FILE}"))
