"""Benchmark grids: categories x detectors x variants x seeds, each run train -> finetune -> test.

The pipeline, a module per step:

- `grid`: the dataset categories, the runs of the grid and their training settings, all
  checked before anything is written.
- `runner`: `run_benchmark`, which runs each cell in a fresh Python process (`worker`) and
  saves its row as soon as it ends.
- `worker`: one run (`python -m anomaly.benchmark.worker`): the same library calls as the three
  console scripts (`anomaly.train.train`, `anomaly.finetune.finetune`, `anomaly.evaluate.evaluate`),
  then the run's figures (`anomaly.plots.plot_run`).
- `results`: results.csv and results.md.
- `machine`: machine.json.

A process per run gives each run a clean TensorFlow state and a peak memory of its own. The
output folder holds::

    results.csv     one row per run (COLUMNS first), rewritten atomically after every run
    results.md      the same rows as a markdown table
    machine.json    the machine (CPU, AVX-512, oneDNN, cores, memory, TensorFlow, GPUs), command lines and dates
    models/         the model directories of the runs
    plots/<dataset>_<category>_<detector>_<variant>_s<seed>/  roc.png pro.png hist.png examples.png
    logs/<same name>.log                                       the worker's output

A re-run with the same output folder skips the runs already recorded with status ok, so an
interrupted benchmark continues where it stopped; failed runs are tried again.
"""

# `worker` is not imported here: `python -m anomaly.benchmark.worker` runs it as __main__, and a copy
# already imported by the package would make Python warn and load it twice.
from anomaly.benchmark.grid import (
    DEFAULT_BACKBONES,
    DEFAULT_DETECTORS,
    DEFAULT_LOSSES,
    MAX_DEPTH,
    NO_VARIANT,
    Run,
    check_names,
    find_categories,
    plan_grid,
    resolve_settings,
    trains_epochs,
    variants,
)
from anomaly.benchmark.machine import machine_facts
from anomaly.benchmark.results import (
    COLUMNS,
    EXTRA_COLUMNS,
    KEY_COLUMNS,
    METRIC_COLUMNS,
    SETTING_COLUMNS,
    format_table,
    read_results,
    results_csv,
    results_markdown,
)
from anomaly.benchmark.runner import default_output_dir, run_benchmark

__all__ = ["COLUMNS", "DEFAULT_BACKBONES", "DEFAULT_DETECTORS", "DEFAULT_LOSSES", "EXTRA_COLUMNS", "KEY_COLUMNS",
           "MAX_DEPTH", "METRIC_COLUMNS", "NO_VARIANT", "Run", "SETTING_COLUMNS", "check_names",
           "default_output_dir", "find_categories", "format_table", "machine_facts", "plan_grid", "plot_run",
           "read_results", "resolve_settings", "results_csv", "results_markdown", "run_benchmark", "trains_epochs",
           "variants"]


def __getattr__(name: str):
    """`plot_run`, now in `anomaly.plots`, on first use only: importing matplotlib here would slow
    every worker's start and the command line for a name most callers never use."""
    if name == "plot_run":
        from anomaly.plots import plot_run

        return plot_run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
