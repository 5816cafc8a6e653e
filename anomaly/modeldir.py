"""The saved model directory, read and written in one place.

    <output_dir>/<dataset>/<category>/<architecture>/<loss>/<YYYY-mm-dd_HH-MM-SS>/
        <architecture>_b<batch>_e<best epoch>.keras
        config.yaml  history.csv  plots/  inspection/  checkpoint/
        finetune/<method>_<dtype>/finetune.json ...
        test/<method>_<dtype>/metrics.json  predictions.csv  images/  maps/
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import yaml

from anomaly.errors import AnomalyError

MODEL_SUFFIXES = (".keras", ".hdf5", ".h5", ".npz")
CONFIG_FILE = "config.yaml"


def new_model_dir(output_dir: str | Path, dataset_name: str, architecture: str, variant: str) -> Path:
    """Create a fresh timestamped model directory; never reuses an existing one."""
    base = Path(output_dir) / dataset_name / architecture / variant
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
        raise AnomalyError(f"-p {path}: no {CONFIG_FILE} beside the model file (not a model directory made by anomaly-train)")
    return path.parent, path


def read_config(model_dir: Path) -> dict[str, Any]:
    """The resolved configuration saved by training."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.exists():
        raise AnomalyError(f"{model_dir}: no {CONFIG_FILE} (not a model directory made by anomaly-train)")
    return yaml.safe_load(path.read_text())


def write_text(path: Path, text: str) -> None:
    """Write a file whole or not at all (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


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
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
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


def finetune_dir(model_dir: Path, method: str, dtype: str) -> Path:
    return Path(model_dir) / "finetune" / f"{method}_{dtype}"


def test_dir(model_dir: Path, method: str, dtype: str) -> Path:
    return Path(model_dir) / "test" / f"{method}_{dtype}"


def finetune_results(model_dir: Path) -> list[Path]:
    """Every finetune.json of a model directory, sorted."""
    return sorted((Path(model_dir) / "finetune").glob("*/finetune.json"))
