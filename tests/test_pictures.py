"""Tests for the per-image test picture (anomaly.plots.result)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from anomaly.plots.result import MIN_PANEL, render_result, save_result

CYAN = (0, 255, 255)


def _scene(size: int = 64):
    image = np.full((size, size, 1), 0.5)
    amap = np.zeros((size, size))
    amap[20:30, 20:30] = 1.0  # one anomalous square
    truth = np.zeros((size, size), bool)
    truth[40:50, 40:50] = True  # the true defect somewhere else
    return image, amap, amap > 0.5, truth


def _cyan(picture: np.ndarray) -> np.ndarray:
    return np.all(picture == CYAN, axis=-1)


def test_the_picture_outlines_the_threshold_and_the_truth_and_marks_the_bar(tmp_path):
    image, amap, predicted, truth = _scene()
    picture = render_result(image, amap, predicted, truth=truth, threshold=0.5, title="t")
    k = MIN_PANEL // 64
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[0] > 64 * k
    cyan = _cyan(picture)
    columns = np.nonzero(cyan.any(axis=0))[0]
    # three cyan things from left to right: the map's outline, the bar's mark, the truth's outline
    groups = np.split(columns, np.nonzero(np.diff(columns) > 1)[0] + 1)
    assert len(groups) == 3
    outline, _, true_outline = groups
    assert len(outline) == 10 * k and len(true_outline) == 10 * k  # the squares' width, enlarged
    # no threshold: nothing outlined on the map, no mark on the bar
    plain = render_result(image, amap, predicted, truth=truth)
    plain_columns = np.nonzero(_cyan(plain).any(axis=0))[0]
    assert len(plain_columns) == 10 * k and np.all(np.diff(plain_columns) == 1)  # the truth's outline only
    save_result(tmp_path / "a" / "b.png", image, amap, predicted, truth=truth, threshold=0.5, title="t")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a" / "b.png")), picture)


def test_a_reconstruction_adds_a_panel_and_colour_images_stay_colour():
    image, amap, predicted, _ = _scene()
    colour = np.zeros((64, 64, 3))
    colour[..., 0] = 1.0  # red
    without = render_result(colour, amap, predicted)
    with_rec = render_result(colour, amap, predicted, reconstruction=colour)
    assert with_rec.shape[1] > without.shape[1] and with_rec.shape[0] == without.shape[0]
    assert (np.all(without == (255, 0, 0), axis=-1)).sum() > 64 * 64  # the red input panel
