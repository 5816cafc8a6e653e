"""What every figure shares: the non-interactive backend, saving, and grey images shown grey."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures go to files; no display is needed, even where one exists
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save(fig, path: Path) -> None:
    """Write a figure as PNG (making its folder) and close it, so long runs do not pile up figures."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def gray(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """A single-channel image as (H, W) with a grey colour map; colour images as they are."""
    return (image[..., 0], "gray") if image.shape[-1] == 1 else (image, None)
