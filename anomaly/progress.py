"""Progress of the long steps (fitting, finetuning, testing): a bar with the count, the rate and the
time left on a terminal, one line per step in a log (Keras' `Progbar`).

A step is opened with `step(label, total)` where the work is started; the batch loops deep inside
the detectors report with `advance(n)` and need not know whether anyone is watching.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_open: ContextVar[list | None] = ContextVar("anomaly_progress", default=None)


@contextmanager
def step(label: str, total: int, enabled: bool = True, unit: str = "image") -> Iterator[None]:
    """Show the images processed inside this block as one progress bar of `total` images.

    Args:
        label: what the step does, printed above the bar ("testing 83 images").
        total: the images (or other units) the step processes.
        enabled: False shows nothing (`-q`); a step nested in one whose bar is still running
            shows nothing either; one after its bar is full (a later phase, e.g. choosing a
            memory bank from the features of all images) shows its own.
        unit: what is counted.
    """
    outer = _open.get()
    if not enabled or total <= 0 or (outer is not None and outer[1] < outer[2]):
        yield
        return
    import keras

    print(label, flush=True)
    # A live bar on a terminal; in a log only the finished line (Keras' verbose=2).
    bar = keras.utils.Progbar(total, unit_name=unit, verbose=1 if sys.stdout.isatty() else 2)
    token = _open.set([bar, 0, total])
    try:
        yield
    finally:
        _open.reset(token)


def advance(n: int) -> None:
    """Count `n` more images done in the open step (if any); a step that passes over its images
    twice (maps, then the detector's own scores) shows the first pass only."""
    state = _open.get()
    if state is None:
        return
    bar, done, total = state
    n = min(n, total - done)
    if n > 0:
        state[1] = done + n
        bar.add(n)
