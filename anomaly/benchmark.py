"""Benchmark grids: categories x detectors x variants x seeds, each run train -> finetune -> test.

Every run of the grid goes through the same library calls as the three console scripts
(`anomaly.train.train`, `anomaly.finetune.finetune`, `anomaly.evaluate.evaluate`) in a fresh
Python process (`anomaly.benchmark_worker`), so each run starts from a clean TensorFlow state
and has a peak memory of its own. The output folder holds::

    results.csv     one row per run (COLUMNS first), rewritten atomically after every run
    results.md      the same rows as a markdown table
    machine.json    the machine (CPU, cores, memory, TensorFlow, GPUs), command lines and dates
    models/         the model directories of the runs
    plots/<dataset>_<category>_<detector>_<variant>_s<seed>/  roc.png pro.png hist.png examples.png
    logs/<same name>.log                                       the worker's output

A re-run with the same output folder skips the runs already recorded with status ok, so an
interrupted benchmark continues where it stopped; failed runs are tried again.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from anomaly import modeldir
from anomaly.errors import AnomalyError

COLUMNS = ("dataset", "category", "detector", "variant", "seed", "image_auroc", "pixel_auroc", "aupro_0.3",
           "balanced_accuracy", "f1", "fit_seconds", "test_images_per_second", "peak_memory_mb", "model_dir")
EXTRA_COLUMNS = ("mode", "method", "smooth", "normalize", "epochs", "max_minutes", "epochs_trained", "input_size", "lr",
                 "bank_size", "bank_mb", "run_seconds", "status", "error")
KEY_COLUMNS = COLUMNS[:5]
# The settings a recorded row was made with; a skipped row made with others gets a warning.
SETTING_COLUMNS = ("mode", "smooth", "normalize", "epochs", "max_minutes", "input_size", "lr")
METRIC_COLUMNS = ("image_auroc", "pixel_auroc", "aupro_0.3", "balanced_accuracy", "f1")
DEFAULT_DETECTORS = ("mvtecCAE", "pixel-gaussian")
DEFAULT_LOSSES = ("ssim",)
DEFAULT_BACKBONES = ("efficientnet_lite0",)
PLOT_FILES = ("roc.png", "pro.png", "hist.png", "examples.png")
NO_VARIANT = "none"
MAX_DEPTH = 2
N_EXAMPLES = 8
N_GOOD_EXAMPLES = 3


@dataclass(frozen=True)
class Run:
    """One cell of the grid.

    Attributes:
        data_dir: the category folder (holding train/good).
        dataset: the name of the category folder's parent (e.g. "mvtec_ad").
        category: the name of the category folder (e.g. "bottle").
        detector: a name from `anomaly.detectors.list_detectors()`.
        variant: the loss of an autoencoder, "none" for detectors without one.
        seed: the training seed (it also seeds the finetune subset).
    """

    data_dir: Path
    dataset: str
    category: str
    detector: str
    variant: str
    seed: int

    @property
    def key(self) -> tuple[str, ...]:
        """The identity of the run in results.csv (all strings, as read back from the CSV)."""
        return (self.dataset, self.category, self.detector, self.variant, str(self.seed))

    @property
    def name(self) -> str:
        """The folder name of its plots and log."""
        return f"{self.dataset}_{self.category}_{self.detector}_{self.variant}_s{self.seed}"

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.category} {self.detector} {self.variant} seed {self.seed}"


# --------------------------------------------------------------------------- the grid


def default_output_dir() -> Path:
    """benchmarks/<YYYY-MM-DD>, today's benchmark folder."""
    return Path("benchmarks") / datetime.now().strftime("%Y-%m-%d")


def _is_category(folder: Path) -> bool:
    return (folder / "train" / "good").is_dir()


def find_categories(path: str | Path) -> list[Path]:
    """The dataset categories (folders holding train/good) in a folder.

    Args:
        path: a category folder itself, or a root holding categories in sub-folders up to
            two levels deep (e.g. `data/` holding `mvtec_ad/bottle/`).

    Returns:
        `[path]` when `path` is a category; otherwise the categories below it, sorted (a
        category's own sub-folders are not searched).

    Raises:
        AnomalyError: the path does not exist, is not a folder, or holds no category.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise AnomalyError(f"{path}: dataset folder does not exist")
    if not path.is_dir():
        raise AnomalyError(f"{path}: expected a dataset folder, got a file")
    if _is_category(path):
        return [path]
    found: list[Path] = []
    level = [path]
    for _ in range(MAX_DEPTH):
        below = []
        for folder in level:
            # Hidden folders are temporary or tool folders (.tmp-*, .git), never categories.
            for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                (found if _is_category(sub) else below).append(sub)
        level = below
    if not found:
        raise AnomalyError(f"{path}: no dataset category found (expected train/good in it or in "
                           f"sub-folders up to {MAX_DEPTH} levels deep)")
    return sorted(found)


def _unique(values: Iterable) -> list:
    """The values without repeats, in their first order (a repeated flag value is one run)."""
    return list(dict.fromkeys(values))


def check_names(detectors: Sequence[str], losses: Sequence[str], backbones: Sequence[str] = DEFAULT_BACKBONES) -> None:
    """Reject unknown detector or loss names with one line naming the flag.

    Raises:
        AnomalyError: a name is not known.
    """
    from anomaly.config import LOSSES
    from anomaly.detectors import list_detectors

    known = list_detectors()
    for name in detectors:
        if name not in known:
            raise AnomalyError(f"-a/--architectures: unknown architecture '{name}': expected one of "
                               f"{', '.join(known)}")
    for loss in losses:
        if loss not in LOSSES:
            raise AnomalyError(f"-l/--losses: unknown loss '{loss}': expected one of {', '.join(LOSSES)}")
    from anomaly.backbones import list_backbones

    for backbone in backbones:
        if backbone not in list_backbones():
            raise AnomalyError(f"--backbones: unknown backbone '{backbone}': expected one of "
                               f"{', '.join(list_backbones())}")


def variants(detector: str, losses: Sequence[str], backbones: Sequence[str] = DEFAULT_BACKBONES) -> list[str]:
    """The variants of a detector in the grid: the losses of an autoencoder, the backbones of a
    feature detector, else just "none"."""
    from anomaly.detectors import is_autoencoder, uses_backbone

    if is_autoencoder(detector):
        return list(losses)
    return list(backbones) if uses_backbone(detector) else [NO_VARIANT]


def plan_grid(data: Sequence[str | Path], detectors: Sequence[str], losses: Sequence[str],
              seeds: Sequence[int], backbones: Sequence[str] = DEFAULT_BACKBONES) -> list[Run]:
    """The runs of a grid, in the order they run (category, detector, variant, seed).

    Args:
        data: roots or category folders.
        detectors: detector names.
        losses: losses of the autoencoders (detectors without a loss run once per seed).
        seeds: training seeds.
        backbones: backbones of the feature detectors.

    Returns:
        The runs.

    Raises:
        AnomalyError: an unknown name, a folder without categories, a category that cannot
            be tested (no test images, a mask without its image, ...), or two categories with
            the same dataset/category name (their rows and plots would collide).
    """
    from anomaly.data.dataset import find_dataset

    detectors, losses, seeds, backbones = _unique(detectors), _unique(losses), _unique(seeds), _unique(backbones)
    if not detectors or not losses or not seeds or not data or not backbones:
        raise AnomalyError("-d, -a, -l, --backbones and --seeds each need at least one value")
    check_names(detectors, losses, backbones)
    categories: dict[Path, None] = {}
    for path in data:
        for category in find_categories(path):
            categories.setdefault(category.resolve(), None)
    seen: dict[tuple[str, str], Path] = {}
    for category in categories:
        # Indexing a folder takes milliseconds; finding a missing test/ or a mask without its
        # image here saves training a model that could never be tested.
        find_dataset(category).require_test()
        name = (category.parent.name or "data", category.name)
        if name in seen:
            raise AnomalyError(f"{category}: same dataset/category name '{'/'.join(name)}' as {seen[name]} "
                               "(results would collide; benchmark them into different output folders)")
        seen[name] = category
    return [Run(category, category.parent.name or "data", category.name, detector, variant, int(seed))
            for category in categories for detector in detectors
            for variant in variants(detector, losses, backbones) for seed in seeds]


def resolve_settings(runs: Sequence[Run], epochs: int | None, input_size: int | None, lr: float | None,
                     mode: str, method: str | None = None, smooth: float | None = None,
                     normalize: bool | None = None, max_minutes: float | None = None,
                     input_width: int | None = None) -> dict[tuple[str, str], dict]:
    """Resolve and check the training configuration of every (detector, variant) up front.

    Running `load_train_config` here, before anything is written, turns a bad flag value
    (an input size that is not a multiple of 32, mssim on small images, a negative rate)
    into one error line instead of a grid of failed runs.

    Returns:
        For each (detector, variant): the overrides to pass to `load_train_config` in the
        worker (without data_dir, seed and output_dir) and the resolved epochs, input_size
        and lr (and max_minutes, the autoencoders' training budget). A non-square input size
        is "HxW".
    """
    from anomaly.config import load_train_config
    from anomaly.detectors import is_autoencoder, uses_backbone
    from anomaly.finetune import MODES

    if mode not in MODES:
        raise AnomalyError(f"--mode: unknown mode '{mode}': expected one of {', '.join(MODES)}")
    settings: dict[tuple[str, str], dict] = {}
    for run in runs:
        if (run.detector, run.variant) in settings:
            continue
        overrides = {"architecture": run.detector, "epochs": epochs, "input_size": input_size,
                     "input_width": input_width, "lr": lr}
        if is_autoencoder(run.detector):
            overrides["loss"] = run.variant
            overrides["max_minutes"] = max_minutes
        elif uses_backbone(run.detector):
            overrides["backbone"] = run.variant
        overrides = {k: v for k, v in overrides.items() if v is not None}
        config = load_train_config({**overrides, "data_dir": str(run.data_dir), "seed": run.seed})
        # Epochs mean nothing to a detector fitted in one pass, the learning rate nothing to a
        # detector without the autoencoders' schedule.
        trained = is_autoencoder(run.detector)
        epochs_used = trained or run.detector in ("fre-tae", "feature-ae")
        settings[(run.detector, run.variant)] = {
            "overrides": overrides, "epochs": config.epochs if epochs_used else None,
            "input_size": config.input_size if config.input_width is None else "x".join(map(str, config.image_size)),
            "lr": config.lr if trained else None, "mode": mode,
            "max_minutes": config.max_minutes if trained else None,
            # --map applies to autoencoders; other detectors keep their own map.
            "method": method if trained else None, "smooth": smooth, "normalize": normalize}
    return settings


# --------------------------------------------------------------------------- machine facts


def machine_facts() -> dict:
    """The machine a benchmark ran on: CPU model, cores, memory, TensorFlow, GPUs, Python.

    Returns:
        A JSON-ready dict.
    """
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))  # the cores this process may use, not the machine's
    except AttributeError:
        cores = os.cpu_count()
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        memory = None
    return {"cpu": cpu, "cores": cores, "memory_gib": memory, "tensorflow": tf.__version__,
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
            "python": platform.python_version(), "platform": platform.platform()}


def _write_machine(output_dir: Path, command: str, progress: bool) -> dict:
    """Write machine.json; earlier invocations on the same folder are kept in `invocations`."""
    path = output_dir / "machine.json"
    facts = machine_facts()
    invocations = []
    if path.exists():
        try:
            old = json.loads(path.read_text())
            invocations = list(old.get("invocations", []))
            before = {k: old.get(k) for k in ("cpu", "cores", "gpus")}
            if progress and before != {k: facts[k] for k in before}:
                print(f"warning: {path} records another machine ({before}); timings in results.csv mix both")
        except (OSError, ValueError, AttributeError):
            invocations = []
    now = datetime.now().isoformat(timespec="seconds")
    invocations.append({"date": now, "command": command})
    data = {**facts, "command": command, "date": now, "invocations": invocations}
    modeldir.write_json(path, data)
    return data


# --------------------------------------------------------------------------- results files


def read_results(path: Path) -> dict[tuple[str, ...], dict[str, str]]:
    """The rows of an existing results.csv by run key (empty when the file does not exist).

    Raises:
        AnomalyError: the file is not a results.csv of this tool.
    """
    path = Path(path)
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ())[:len(COLUMNS)] != COLUMNS:
            raise AnomalyError(f"{path}: not a results.csv of anomaly-benchmark (expected the columns "
                               f"{', '.join(COLUMNS)}); use another output folder")
        return {tuple(row[k] for k in KEY_COLUMNS): row for row in reader}


def _sort_key(row: dict) -> tuple:
    seed = row.get("seed", "")
    return (row["dataset"], row["category"], row["detector"], row["variant"],
            int(seed) if str(seed).lstrip("-").isdigit() else 0)


def results_csv(rows: Iterable[dict]) -> str:
    """results.csv text: COLUMNS, then EXTRA_COLUMNS, then any other column a row holds."""
    rows = list(rows)
    fields = list(COLUMNS + EXTRA_COLUMNS)
    for row in rows:
        fields += [k for k in row if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _number(value) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _fmt(value, decimals: int = 3) -> str:
    number = _number(value)
    return "-" if number is None else f"{number:.{decimals}f}"


# The table of results.md and of the final printout: (header, column, decimals or None for text).
_TABLE = (("dataset", "dataset", None), ("category", "category", None), ("detector", "detector", None),
          ("variant", "variant", None), ("seed", "seed", None), ("image AUROC", "image_auroc", 3),
          ("pixel AUROC", "pixel_auroc", 3), ("AUPRO@0.3", "aupro_0.3", 3),
          ("bal. acc.", "balanced_accuracy", 3), ("F1", "f1", 3), ("fit s", "fit_seconds", 1),
          ("test img/s", "test_images_per_second", 1), ("peak MB", "peak_memory_mb", 0),
          ("bank", "bank_size", None), ("status", "status", None))


def _table_cells(rows: Iterable[dict]) -> list[list[str]]:
    return [[str(row.get(col, "")) if dec is None else _fmt(row.get(col), dec) for _, col, dec in _TABLE]
            for row in sorted(rows, key=_sort_key)]


def format_table(rows: Iterable[dict]) -> str:
    """A plain-text table of result rows, sorted by dataset, category, detector, variant, seed."""
    headers = [h for h, _, _ in _TABLE]
    cells = _table_cells(rows)
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(v.ljust(w) if dec is None else v.rjust(w) for v, w, (_, _, dec) in zip(r, widths, _TABLE))
              for r in cells]
    return "\n".join(lines)


def results_markdown(rows: Iterable[dict], machine: dict | None = None) -> str:
    """results.md: the rows as a markdown table (metrics to 3 decimals) and the errors below it."""
    rows = sorted(rows, key=_sort_key)
    lines = ["# Benchmark results", ""]
    if machine:
        gpus = ", ".join(machine.get("gpus") or []) or "no GPU"
        facts = (f"{machine.get('date', '')}: {machine.get('cpu')}, {machine.get('cores')} cores, "
                 f"{machine.get('memory_gib')} GiB, {gpus}; TensorFlow {machine.get('tensorflow')}, "
                 f"Python {machine.get('python')}")
        lines += [facts, "", f"    {machine.get('command', '')}", ""]
    legend = ("Test metrics exclude the images used for finetuning. fit s: wall time of fitting; "
              "test img/s: test images per second end to end; peak MB: the run's peak resident memory; "
              "bank: the memory bank's size (patchcore: patches, padim: Gaussians, one per grid position, "
              "knn: images, kmeans: centroids). "
              "Model directories (`model_dir` in results.csv) are relative to this folder.")
    lines += [legend, ""]
    aligns = ["---" if dec is None else "---:" for _, _, dec in _TABLE]
    lines.append("| " + " | ".join(h for h, _, _ in _TABLE) + " |")
    lines.append("| " + " | ".join(aligns) + " |")
    lines += ["| " + " | ".join(r) + " |" for r in _table_cells(rows)]
    errors = [r for r in rows if r.get("status") != "ok"]
    if errors:
        lines += ["", "## Errors", ""]
        lines += [f"- {r['dataset']}/{r['category']} {r['detector']} {r['variant']} seed {r['seed']}: "
                  f"{r.get('error') or r.get('status')}" for r in errors]
    return "\n".join(lines) + "\n"


def _csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# --------------------------------------------------------------------------- running


def _start_worker(args: dict, log_path: Path) -> int:
    """Run one grid cell in a fresh Python process; its output goes to `log_path`.

    Returns:
        The worker's exit code.
    """
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    # The worker imports this same copy of the package even when it is not installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"  # so `tail -f` on the log shows training as it happens
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, "-m", "anomaly.benchmark_worker", json.dumps(args)],
                              check=False, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    return proc.returncode


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def _execute(run: Run, settings: dict, output_dir: Path) -> dict:
    """Run one cell through the worker and return its result (status ok or error)."""
    result_file = output_dir / "logs" / f".{run.name}.result.json"
    log_path = output_dir / "logs" / f"{run.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result_file.unlink(missing_ok=True)  # a stale result must not pass for this attempt's
    args = {"data_dir": str(run.data_dir), "detector": run.detector, "variant": run.variant,
            "seed": run.seed, "overrides": settings["overrides"], "mode": settings["mode"],
            "method": settings.get("method"), "smooth": settings.get("smooth"),
            "normalize": settings.get("normalize"),
            "models_dir": str((output_dir / "models").resolve()),
            "plots_dir": str((output_dir / "plots" / run.name).resolve()),
            "result_file": str(result_file.resolve()), "parent_pid": os.getpid()}
    code = _start_worker(args, log_path)
    if result_file.exists():
        result = json.loads(result_file.read_text())
        result_file.unlink()
        return result
    last = _last_line(log_path)
    return {"status": "error",
            "error": f"worker exited with code {code} without a result (log {log_path})"
                     + (f": {last}" if last else "")}


def _row(run: Run, settings: dict, result: dict, seconds: float, output_dir: Path) -> dict[str, str]:
    row = {"dataset": run.dataset, "category": run.category, "detector": run.detector, "variant": run.variant,
           "seed": run.seed, "mode": settings["mode"], "smooth": settings.get("smooth"),
           "normalize": settings.get("normalize"), "epochs": settings["epochs"],
           "max_minutes": settings.get("max_minutes"),
           "input_size": settings["input_size"], "lr": settings["lr"], "run_seconds": round(seconds, 1)}
    for key in METRIC_COLUMNS + ("fit_seconds", "test_images_per_second", "peak_memory_mb", "method",
                                 "epochs_trained", "bank_size", "bank_mb", "status", "error"):
        if key in result:
            row[key] = result[key]
    if result.get("model_dir"):
        model_dir = Path(result["model_dir"])
        try:
            # Relative to the output folder, so the folder can be moved or copied whole.
            model_dir = model_dir.resolve().relative_to(output_dir.resolve())
        except ValueError:
            pass
        row["model_dir"] = model_dir.as_posix()
    row["error"] = " ".join(str(row.get("error") or "").split())  # one line, whatever the worker sent
    for key in ("fit_seconds", "test_images_per_second"):
        if isinstance(row.get(key), float):
            row[key] = round(row[key], 2)
    for key in ("peak_memory_mb", "bank_mb"):
        if isinstance(row.get(key), float):
            row[key] = round(row[key], 2)
    return {k: _csv_value(v) for k, v in row.items()}


def _summary(row: dict) -> str:
    if row.get("status") != "ok":
        return row.get("error") or "failed"
    return (f"image AUROC {_fmt(row.get('image_auroc'))}, pixel AUROC {_fmt(row.get('pixel_auroc'))}, "
            f"AUPRO {_fmt(row.get('aupro_0.3'))}")


def _differences(row: dict, settings: dict) -> list[str]:
    now = {k: _csv_value(settings[k]) for k in SETTING_COLUMNS}
    return [f"{k} {row.get(k, '') or '-'} (now {now[k] or '-'})" for k in SETTING_COLUMNS
            if k in row and row.get(k, "") != now[k]]


def run_benchmark(data: Sequence[str | Path], detectors: Sequence[str] = DEFAULT_DETECTORS,
                  losses: Sequence[str] = DEFAULT_LOSSES, seeds: Sequence[int] = (0,),
                  backbones: Sequence[str] = DEFAULT_BACKBONES,
                  output_dir: str | Path | None = None, epochs: int | None = None,
                  input_size: int | None = None, lr: float | None = None, mode: str = "normal-only",
                  progress: bool = True, command: str | None = None, method: str | None = None,
                  smooth: float | None = None, normalize: bool | None = None,
                  max_minutes: float | None = None, input_width: int | None = None) -> list[dict[str, str]]:
    """Run a benchmark grid (or the part of it not yet done) and write its result files.

    Everything is checked before the output folder is created: names, dataset folders and
    the training configuration of every detector/variant.

    Args:
        data: roots or category folders (see `find_categories`).
        detectors: detector names (autoencoders and baselines).
        losses: losses of the autoencoders.
        seeds: training seeds.
        backbones: backbones of the feature detectors.
        output_dir: the benchmark folder; benchmarks/<YYYY-MM-DD> when None.
        epochs: the training epoch cap; the configuration's when None.
        input_size: the image size; the configuration's when None.
        input_width: the width of non-square images; input_size when None.
        lr: a fixed peak learning rate; None runs the learning-rate finder.
        mode: finetune mode, "semi" or "normal-only".
        method: the autoencoders' map (ssim, mssim or l2); their default when None.
        smooth: finetune --smooth sigma for every run; each detector's default when None.
        normalize: finetune --normalize for every run; each detector's default when None.
        max_minutes: the autoencoders' training time budget; none when None.
        progress: print a line per run start and end.
        command: the command line to record in machine.json (this process's when None).

    Returns:
        The result rows of this grid (as written to results.csv, all values strings), in
        grid order.

    Raises:
        AnomalyError: bad input, before anything is written.
    """
    runs = plan_grid(data, detectors, losses, seeds, backbones)
    settings = resolve_settings(runs, epochs, input_size, lr, mode, method, smooth, normalize, max_minutes,
                                input_width)
    output_dir = Path(output_dir) if output_dir else default_output_dir()
    csv_path, md_path = output_dir / "results.csv", output_dir / "results.md"
    rows = read_results(csv_path)  # before mkdir: a foreign CSV leaves the folder untouched

    modeldir.check_output_dir(output_dir)
    command = command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    machine = _write_machine(output_dir, command, progress)

    def save() -> None:
        modeldir.write_text(csv_path, results_csv(sorted(rows.values(), key=_sort_key)))
        modeldir.write_text(md_path, results_markdown(rows.values(), machine))

    done = []
    for i, run in enumerate(runs, 1):
        cell = settings[(run.detector, run.variant)]
        head = f"[{i}/{len(runs)}] {run.label} ..."
        old = rows.get(run.key)
        if old is not None and old.get("status") == "ok":
            if progress:
                diff = _differences(old, cell)
                print(f"{head} skipped (done in {csv_path.name})"
                      + (f"; note: recorded with {', '.join(diff)}" if diff else ""), flush=True)
            done.append(old)
            continue
        if progress:
            print(head, end="", flush=True)
        start = time.perf_counter()
        try:
            result = _execute(run, cell, output_dir)
        except KeyboardInterrupt:
            if progress:
                print(f" interrupted; results so far are in {csv_path} (re-run the same command to continue)",
                      flush=True)
            raise
        seconds = time.perf_counter() - start
        row = _row(run, cell, result, seconds, output_dir)
        rows[run.key] = row
        save()  # after every run, so an interruption loses at most the run in progress
        done.append(row)
        if progress:
            print(f" {row['status']} in {seconds:.0f} s: {_summary(row)}", flush=True)
    save()
    return done


# --------------------------------------------------------------------------- plots of one run


def _examples(rows: list[dict]) -> list[dict]:
    """Up to N_EXAMPLES rows: the lowest-scored defective images (the detector's hardest
    misses) and the highest-scored good ones (its nearest false alarms), defective first."""
    defective = sorted((r for r in rows if r["label"] == 1), key=lambda r: r["score"])
    good = sorted((r for r in rows if r["label"] == 0), key=lambda r: -r["score"])
    n_good = min(len(good), N_GOOD_EXAMPLES, N_EXAMPLES)
    n_defective = min(len(defective), N_EXAMPLES - n_good)
    n_good = min(len(good), N_EXAMPLES - n_defective)  # fill with good ones when defects are few
    return defective[:n_defective] + good[:n_good]


def plot_run(test_dir: str | Path, data_dir: str | Path, color_mode: str, out_dir: str | Path,
             aupro: float | None = None, title: str = "") -> list[Path]:
    """Write roc.png, hist.png, examples.png and (with masks) pro.png for one tested model.

    Reads `predictions.csv` and the maps saved by `evaluate(save=True)`; the images used for
    finetuning are left out, as they are from the metrics.

    Args:
        test_dir: the model's `test/<method>_<dtype>/` folder.
        data_dir: the dataset category folder the model was tested on.
        color_mode: "grayscale" or "rgb", to read the example images as the model saw them.
        out_dir: where the figures go.
        aupro: the AUPRO@0.3 to print on the PRO figure.
        title: a title for every figure.

    Returns:
        The figures written.
    """
    import numpy as np

    from anomaly import benchmark_plots as bp
    from anomaly.data.dataset import find_dataset
    from anomaly.data.io import read_image, read_mask
    from anomaly.metrics import pro_curve

    test_dir, out_dir = Path(test_dir), Path(out_dir)
    with (test_dir / "predictions.csv").open(newline="") as f:
        rows = [{**r, "label": int(r["label"]), "score": float(r["score"])} for r in csv.DictReader(f)
                if r["used_for_finetune"] != "true"]
    labels = np.array([r["label"] for r in rows], dtype=int)
    scores = np.array([r["score"] for r in rows], dtype=np.float64)
    written = [out_dir / "roc.png", out_dir / "hist.png"]
    bp.plot_roc(labels, scores, written[0], title=title)
    bp.plot_score_histograms(labels, scores, written[1], title=title)

    dataset = find_dataset(data_dir)
    samples = {s.relpath: s for s in dataset.test}
    maps_dir = test_dir / "maps"

    def load_map(relpath: str) -> np.ndarray:
        return np.load(maps_dir / f"{relpath}.npy")

    def load_mask(relpath: str, shape) -> np.ndarray:
        s = samples[relpath]
        return read_mask(s.mask_path, s.path, shape) if s.mask_path else np.zeros(shape, bool)

    if dataset.has_masks and rows and maps_dir.is_dir():
        maps = np.stack([load_map(r["image"]) for r in rows])
        masks = np.stack([load_mask(r["image"], maps.shape[1:]) for r in rows])
        if masks.any() and not masks.all():
            fpr, pro = pro_curve(masks, maps)
            bp.plot_pro(fpr, pro, out_dir / "pro.png", aupro=aupro, title=title)
            written.append(out_dir / "pro.png")

    if maps_dir.is_dir():
        picked = _examples(rows)
        maps = [load_map(r["image"]) for r in picked]
        images = [read_image(samples[r["image"]].path, color_mode, m.shape) for r, m in zip(picked, maps)]
        truths = [load_mask(r["image"], m.shape) if dataset.has_masks else None for r, m in zip(picked, maps)]
        captions = [f"{r['defect_type']} {r['score']:.3g} -> {'defective' if r['predicted'] == '1' else 'good'}"
                    for r in picked]
        vmax = float(np.quantile(np.stack(maps), 0.999)) if maps else None
        bp.plot_examples(images, maps, captions, out_dir / "examples.png", truths=truths, vmax=vmax,
                         title=(title + "  " if title else "") + "hardest defective, highest-scored good")
        written.append(out_dir / "examples.png")
    return written
