"""What every entry point shares: turning user errors into one line and exit code 2."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable

from anomaly.errors import AnomalyError, AnomalyWarning


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> str:
    if issubclass(category, AnomalyWarning):
        return f"warning: {message}\n"
    return _default_format(message, category, filename, lineno, line)


_default_format = warnings.formatwarning


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help texts can be computed when help is shown.

    Help that lists the detectors needs their registry, which imports TensorFlow; computing it
    only for `--help` lets a command reject a wrong path in a fraction of a second.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_help: dict[argparse.Action, Callable[[], str]] = {}

    def add_argument(self, *args, lazy_help: Callable[[], str] | None = None, **kwargs) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if lazy_help is not None:
            self.lazy_help[action] = lazy_help
        return action

    def format_help(self) -> str:
        for action, make in self.lazy_help.items():
            action.help = make()
        return super().format_help()


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's flag text by its name (dest), e.g. {"coreset_ratio": "--coreset-ratio"}."""
    return {a.dest: "/".join(a.option_strings) for a in parser._actions if a.option_strings}


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None,
        parser: argparse.ArgumentParser | None = None) -> int:
    """Call `main`; print an AnomalyError as one line on stderr and return 2.

    Args:
        main: the entry point's main(argv).
        argv: its arguments (sys.argv when None).
        parser: its parser, so an error about an option names the flag that sets it (default:
            the `build_parser()` of main's module).
    """
    warnings.formatwarning = _one_line_warning
    try:
        return main(argv)
    except AnomalyError as exc:
        if parser is None:
            build = getattr(sys.modules.get(main.__module__), "build_parser", None)
            parser = build() if build is not None else None
        flags = flag_names(parser) if parser is not None else {}
        text = f"{flags[exc.option]}: {exc.message}" if exc.option in flags else str(exc)
        print(f"error: {text}", file=sys.stderr)
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
