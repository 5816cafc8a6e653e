"""The result files of a benchmark: results.csv (one row per run) and results.md (a table).

results.csv holds COLUMNS first, then EXTRA_COLUMNS, then any other column a row holds; all
values are strings, as read back. A re-run finds the runs already done by KEY_COLUMNS.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

from anomaly.errors import AnomalyError

COLUMNS = ("dataset", "category", "detector", "variant", "seed", "image_auroc", "pixel_auroc", "aupro_0.3",
           "balanced_accuracy", "f1", "fit_seconds", "test_images_per_second", "peak_memory_mb", "model_dir")
EXTRA_COLUMNS = ("mode", "method", "smooth", "normalize", "epochs", "max_minutes", "epochs_trained", "input_size", "lr",
                 "bank_size", "bank_mb", "run_seconds", "status", "error", "balanced_accuracy_best")
KEY_COLUMNS = COLUMNS[:5]
# The settings a recorded row was made with; a skipped row made with others gets a warning.
SETTING_COLUMNS = ("mode", "smooth", "normalize", "epochs", "max_minutes", "input_size", "lr")
METRIC_COLUMNS = ("image_auroc", "pixel_auroc", "aupro_0.3", "balanced_accuracy", "f1")


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


def sort_key(row: dict) -> tuple:
    """The order of rows in the result files: dataset, category, detector, variant, seed (as a number)."""
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


def fmt(value, decimals: int = 3) -> str:
    """A number to `decimals` places, "-" for an empty or non-numeric value."""
    number = _number(value)
    return "-" if number is None else f"{number:.{decimals}f}"


# The table of results.md and of the final printout: (header, column, decimals or None for text).
_TABLE = (("dataset", "dataset", None), ("category", "category", None), ("detector", "detector", None),
          ("variant", "variant", None), ("seed", "seed", None), ("image AUROC", "image_auroc", 3),
          ("pixel AUROC", "pixel_auroc", 3), ("AUPRO@0.3", "aupro_0.3", 3),
          ("bal. acc.", "balanced_accuracy", 3), ("best bal. acc.", "balanced_accuracy_best", 3), ("F1", "f1", 3),
          ("fit s", "fit_seconds", 1),
          ("test img/s", "test_images_per_second", 1), ("peak MB", "peak_memory_mb", 0),
          ("bank", "bank_size", None), ("status", "status", None))


def _table_cells(rows: Iterable[dict]) -> list[list[str]]:
    return [[str(row.get(col, "")) if dec is None else fmt(row.get(col), dec) for _, col, dec in _TABLE]
            for row in sorted(rows, key=sort_key)]


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
    rows = sorted(rows, key=sort_key)
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


def csv_value(value) -> str:
    """A value as results.csv writes it: None empty, booleans lowercase, floats to 6 significant digits."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
