"""What every entry point shares: turning user errors into one line and exit code 2."""

from __future__ import annotations

import sys
import warnings
from typing import Callable

from anomaly.errors import AnomalyError, AnomalyWarning


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> str:
    if issubclass(category, AnomalyWarning):
        return f"warning: {message}\n"
    return _default_format(message, category, filename, lineno, line)


_default_format = warnings.formatwarning


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Call `main`; print an AnomalyError as one line on stderr and return 2."""
    warnings.formatwarning = _one_line_warning
    try:
        return main(argv)
    except AnomalyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def fmt(value) -> str:
    """A metric for a table: 3 decimals, or '-' when undefined."""
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def print_metrics(results: list[dict]) -> None:
    """A short table, one row per (method, dtype)."""
    cols = ("method", "dtype", "n_images", "image_auroc", "pixel_auroc", "aupro_0.3", "tpr", "tnr",
            "balanced_accuracy", "f1", "images_per_second")
    rows = [[fmt(r.get(c)) for c in cols] for r in results]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for row in rows:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))
