"""Running a benchmark grid: each run in a worker process, its row saved as soon as it ends.

Every run goes through the same library calls as the three console scripts in a fresh Python
process (`anomaly.benchmark.worker`), so each run starts from a clean TensorFlow state and has a
peak memory of its own. A re-run with the same output folder skips the runs already recorded
with status ok; failed runs are tried again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from anomaly import modeldir
from anomaly.benchmark.cluster import Resources
from anomaly.benchmark.grid import (
    DEFAULT_BACKBONES,
    DEFAULT_DETECTORS,
    DEFAULT_LOSSES,
    Run,
    plan_grid,
    resolve_settings,
)
from anomaly.benchmark.machine import write_machine
from anomaly.benchmark.results import (
    METRIC_COLUMNS,
    SETTING_COLUMNS,
    csv_value,
    fmt,
    read_results,
    results_csv,
    results_markdown,
    sort_key,
)
from anomaly.errors import AnomalyError


def default_output_dir() -> Path:
    """benchmarks/<YYYY-MM-DD>, today's benchmark folder."""
    return Path("benchmarks") / datetime.now().strftime("%Y-%m-%d")


def _start_worker(args: dict, log_path: Path) -> int:
    """Run one grid cell in a fresh Python process; its output goes to `log_path`.

    Returns:
        The worker's exit code.
    """
    package_root = str(Path(__file__).resolve().parents[2])  # the folder holding anomaly/
    env = dict(os.environ)
    # The worker imports this same copy of the package even when it is not installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"  # so `tail -f` on the log shows training as it happens
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, "-m", "anomaly.benchmark.worker", json.dumps(args)],
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
            "normalize": settings.get("normalize"), "threads": settings.get("threads"),
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
    return {k: csv_value(v) for k, v in row.items()}


def _summary(row: dict) -> str:
    if row.get("status") != "ok":
        return row.get("error") or "failed"
    return (f"image AUROC {fmt(row.get('image_auroc'))}, pixel AUROC {fmt(row.get('pixel_auroc'))}, "
            f"AUPRO {fmt(row.get('aupro_0.3'))}")


def _differences(row: dict, settings: dict) -> list[str]:
    now = {k: csv_value(settings[k]) for k in SETTING_COLUMNS}
    return [f"{k} {row.get(k, '') or '-'} (now {now[k] or '-'})" for k in SETTING_COLUMNS
            if k in row and row.get(k, "") != now[k]]


def run_benchmark(data: Sequence[str | Path], detectors: Sequence[str] = DEFAULT_DETECTORS,
                  losses: Sequence[str] = DEFAULT_LOSSES, seeds: Sequence[int] = (0,),
                  backbones: Sequence[str] = DEFAULT_BACKBONES,
                  output_dir: str | Path | None = None, epochs: int | None = None,
                  input_size: int | None = None, lr: float | None = None, mode: str = "synthetic",
                  progress: bool = True, command: str | None = None, method: str | None = None,
                  smooth: float | None = None, normalize: bool | None = None,
                  max_minutes: float | None = None, input_width: int | None = None, cluster: str | None = None,
                  resources: Resources | None = None) -> list[dict[str, str]]:
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
        mode: finetune mode: "synthetic", "normal-only" or "semi".
        method: the autoencoders' map (ssim, mssim or l2); their default when None.
        smooth: finetune --smooth sigma for every run; each detector's default when None.
        normalize: finetune --normalize for every run; each detector's default when None.
        max_minutes: the autoencoders' training time budget; none when None.
        progress: print a line per run start and end.
        command: the command line to record in machine.json (this process's when None).
        cluster: run the grid on Ray ("local", "auto" or "ray://HOST:PORT", see
            `anomaly.cluster`), each run a task asking for `resources`; None runs one run at a
            time on this machine.
        resources: each Ray task's request (default: 1 CPU).

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
    if cluster is not None:
        from anomaly.cluster import check_address

        check_address(cluster)
        (resources or Resources()).check()
    elif resources is not None:
        raise AnomalyError("needs --cluster (a run's resources are asked of Ray)", "cpus_per_run")

    modeldir.check_output_dir(output_dir)
    command = command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    machine = write_machine(output_dir, command, progress)

    def save() -> None:
        modeldir.write_text(csv_path, results_csv(sorted(rows.values(), key=sort_key)))
        modeldir.write_text(md_path, results_markdown(rows.values(), machine))

    todo = []
    for i, run in enumerate(runs, 1):
        old = rows.get(run.key)
        if old is not None and old.get("status") == "ok":
            if progress:
                diff = _differences(old, settings[(run.detector, run.variant)])
                print(f"[{i}/{len(runs)}] {run.label} ... skipped (done in {csv_path.name})"
                      + (f"; note: recorded with {', '.join(diff)}" if diff else ""), flush=True)
        else:
            todo.append(run)

    def record(run: Run, result: dict, seconds: float) -> dict:
        row = _row(run, settings[(run.detector, run.variant)], result, seconds, output_dir)
        rows[run.key] = row
        save()  # after every run, so an interruption loses at most the runs in progress
        return row

    number = {run.key: i for i, run in enumerate(runs, 1)}
    try:
        if cluster is None:
            for run in todo:
                if progress:
                    print(f"[{number[run.key]}/{len(runs)}] {run.label} ...", end="", flush=True)
                start = time.perf_counter()
                result = _execute(run, settings[(run.detector, run.variant)], output_dir)
                seconds = time.perf_counter() - start
                row = record(run, result, seconds)
                if progress:
                    print(f" {row['status']} in {seconds:.0f} s: {_summary(row)}", flush=True)
        elif todo:
            from anomaly.benchmark.cluster import ATTEMPTS, run_on_ray

            if progress:
                print(f"{len(todo)} runs on Ray ({cluster}), each asking for {resources or Resources()}", flush=True)
            for run, result, seconds, attempt in run_on_ray(todo, settings, output_dir, resources or Resources(),
                                                            cluster, _execute):
                head = f"[{number[run.key]}/{len(runs)}] {run.label} ..."
                if result.get("status") != "ok" and attempt < ATTEMPTS:
                    if progress:
                        print(f"{head} failed ({' '.join(str(result.get('error')).split())[:200]}); trying again",
                              flush=True)
                    continue
                row = record(run, result, seconds)
                if progress:
                    again = f" (attempt {attempt})" if attempt > 1 else ""
                    print(f"{head} {row['status']} in {seconds:.0f} s{again}: {_summary(row)}", flush=True)
    except KeyboardInterrupt:
        if progress:
            print(f" interrupted; results so far are in {csv_path} (re-run the same command to continue)",
                  flush=True)
        raise
    done = [rows[run.key] for run in runs]
    save()
    return done
