"""The picture of one tested image, drawn with array operations and Pillow.

A matplotlib figure per image cost about a second (most of a `--save` run on a few hundred
images); composing the panels as arrays and writing them with Pillow takes milliseconds. The
picture holds the same parts: the input, the reconstruction (autoencoders), the heat map over
the input with its colour bar, the threshold marked on the bar and outlined on the map, and the
predicted mask with the true defect outlined.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps  # its colour tables only; no figure is made
from PIL import Image, ImageDraw, ImageFont
from skimage.segmentation import find_boundaries

CYAN = np.array([0.0, 1.0, 1.0])
# Panels smaller than this are enlarged (nearest neighbour) so outlines and text stay legible.
MIN_PANEL = 256
_GAP, _TITLE, _CAPTION, _BAR, _LABELS = 8, 22, 18, 14, 44


def _rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float in [0, 1] from an (H, W, 1) or (H, W, 3) image in [0, 1]."""
    image = np.clip(np.asarray(image, np.float64), 0.0, 1.0)
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]


def _colour(values: np.ndarray, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    scaled = (np.asarray(values, np.float64) - vmin) / ((vmax - vmin) or 1.0)
    return colormaps[cmap](np.clip(scaled, 0.0, 1.0))[..., :3]


def _paint(rgb: np.ndarray, where: np.ndarray, colour: np.ndarray) -> np.ndarray:
    out = rgb.copy()
    out[where] = colour
    return out


def heat_overlay(image: np.ndarray, amap: np.ndarray, bottom: float, top: float,
                 threshold: float | None = None) -> np.ndarray:
    """The map in "inferno" from `bottom` to `top` blended half over the image (both (H, W, 3)
    in [0, 1] out), with the region over `threshold` outlined in cyan."""
    heat = 0.5 * _rgb(image) + 0.5 * _colour(amap, "inferno", bottom, top)
    if threshold is not None:
        heat = _paint(heat, find_boundaries(amap > threshold, mode="inner"), CYAN)
    return heat


def mask_overlay(image: np.ndarray, predicted: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """The predicted mask in orange over the image, the true defect outlined in cyan."""
    seg = _rgb(image).copy()
    mask = np.asarray(predicted, bool)
    seg[mask] = 0.4 * seg[mask] + 0.6 * np.array([1.0, 0.45, 0.0])  # orange, as matplotlib's "autumn"
    if truth is not None:
        seg = _paint(seg, find_boundaries(np.asarray(truth, bool), mode="inner"), CYAN)
    return seg


def render_result(image: np.ndarray, amap: np.ndarray, predicted: np.ndarray,
                  reconstruction: np.ndarray | None = None, truth: np.ndarray | None = None, title: str = "",
                  vmax: float | None = None, threshold: float | None = None) -> np.ndarray:
    """The picture as an (H, W, 3) uint8 array.

    Args:
        image: the input (H, W, C) in [0, 1].
        amap: its anomaly map (H, W).
        predicted: the predicted defect mask (H, W) bool.
        reconstruction: what the map compares against, if the detector has it.
        truth: the true defect mask, if known.
        title: the line above the panels.
        vmax: the top of the colour scale (default: the map's maximum).
        threshold: the decision threshold, marked on the bar and outlined on the map.
    """
    k = max(1, math.ceil(MIN_PANEL / max(amap.shape)))
    base = _rgb(image)
    top = float(vmax or amap.max() or 1.0)
    bottom = min(0.0, float(amap.min()))
    heat = heat_overlay(base, amap, bottom, top, threshold)
    seg = mask_overlay(base, predicted, truth)
    panels = [("input", base)]
    if reconstruction is not None:
        panels.append(("reconstruction", _rgb(reconstruction)))
    panels.append((f"anomaly map (threshold {threshold:.3g})" if threshold is not None else "anomaly map", heat))
    panels.append(("predicted (truth in cyan)" if truth is not None else "predicted", seg))

    h, w = amap.shape[0] * k, amap.shape[1] * k
    bar_after = len(panels) - 2  # the colour bar follows the map panel
    width = len(panels) * (w + _GAP) + _BAR + _LABELS + _GAP
    canvas = np.ones((_TITLE + _CAPTION + h + _GAP, width, 3))
    x, y0 = _GAP // 2, _TITLE + _CAPTION
    xs = []
    for i, (_, panel) in enumerate(panels):
        canvas[y0:y0 + h, x:x + w] = np.kron(panel, np.ones((k, k, 1)))
        xs.append(x)
        x += w + _GAP
        if i == bar_after:
            levels = np.linspace(top, bottom, h)[:, None]
            bar = np.repeat(_colour(levels, "inferno", bottom, top), _BAR, axis=1)
            if threshold is not None and bottom <= threshold <= top:
                row = int(round((top - threshold) / ((top - bottom) or 1.0) * (h - 1)))
                bar[max(row - 1, 0):row + 2] = CYAN
            canvas[y0:y0 + h, x:x + _BAR] = bar
            bar_x = x
            x += _BAR + _LABELS
    picture = Image.fromarray(np.round(canvas * 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    draw.text((_GAP, 4), title, fill=(0, 0, 0), font=font)
    for (name, _), px in zip(panels, xs):
        draw.text((px, _TITLE), name, fill=(0, 0, 0), font=font)
    for value, row in ((top, 0), (bottom, h - 12)):
        draw.text((bar_x + _BAR + 3, y0 + row), f"{value:.3g}", fill=(0, 0, 0), font=font)
    return np.asarray(picture)


def save_result(path: Path, *args, **kwargs) -> None:
    """Write `render_result(*args, **kwargs)` as a PNG at `path` (making its folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # zlib level 1: encoding is most of a picture's cost, and level 6 (Pillow's default) took
    # several times as long for files only ~15 % smaller (docs/speed.md).
    Image.fromarray(render_result(*args, **kwargs)).save(path, compress_level=1)
