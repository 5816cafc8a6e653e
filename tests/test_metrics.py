"""Tests for anomaly.metrics."""

import json

import numpy as np
import pytest
from skimage.measure import label as sk_label
from sklearn.metrics import roc_auc_score

from anomaly.metrics import (
    aupro,
    classification_metrics,
    image_auroc,
    pixel_auroc,
    pro_curve,
)

# --------------------------------------------------------------------------- reference


def slow_pro_points(masks, maps):
    """Dense reference: one point per unique map value, computed from scratch."""
    masks = np.asarray(masks, dtype=bool)
    regions = []
    for i, mask in enumerate(masks):
        lab = sk_label(mask, connectivity=2)
        regions += [(i, lab == r) for r in range(1, lab.max() + 1)]
    neg = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fprs.append((pred & neg).sum() / neg.sum())
        pros.append(np.mean([pred[i][r].mean() for i, r in regions]))
    return np.array(fprs), np.array(pros)


def simplify(x, y, tol=1e-12):
    """Drops repeated points and the interior points of horizontal runs of a curve."""
    pts = [(x[0], y[0])]
    for xi, yi in zip(x[1:], y[1:]):
        if abs(xi - pts[-1][0]) > tol or abs(yi - pts[-1][1]) > tol:
            pts.append((xi, yi))
    out = [pts[0]]
    for prev, cur, nxt in zip(pts[:-2], pts[1:-1], pts[2:]):
        if not (abs(prev[1] - cur[1]) <= tol and abs(cur[1] - nxt[1]) <= tol):
            out.append(cur)
    out.append(pts[-1])
    return np.array([p[0] for p in out]), np.array([p[1] for p in out])


def slow_area(x, y, limit):
    """Segment-by-segment clipped trapezoid area (independent of the module's code)."""
    area = 0.0
    for x0, x1, y0, y1 in zip(x[:-1], x[1:], y[:-1], y[1:]):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_lim) / 2
    return area


def slow_aupro(masks, maps, limit=0.3):
    return slow_area(*slow_pro_points(masks, maps), limit) / limit


def random_case(rng, n=3, h=12, w=12, levels=None):
    """Random blobby masks (some images good) and maps with optional heavy ties."""
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        for _ in range(rng.integers(0, 4)):
            y, x = rng.integers(0, h), rng.integers(0, w)
            masks[i, y : y + rng.integers(1, 5), x : x + rng.integers(1, 5)] = True
        masks[i] |= rng.random((h, w)) < 0.03  # scattered single pixels / diagonals
    if levels is None:
        maps = rng.random((n, h, w)) + 0.5 * masks
    else:
        maps = (rng.integers(0, levels, (n, h, w)) + 2 * masks * rng.integers(0, 2, (n, h, w))) / levels
    return masks, maps.astype(np.float64)


# --------------------------------------------------------------------------- AUROC


@pytest.mark.parametrize("levels", [None, 3, 10, 1000])
@pytest.mark.parametrize("seed", range(5))
def test_pixel_auroc_matches_sklearn(seed, levels):
    rng = np.random.default_rng(seed)
    masks = rng.random((4, 20, 20)) < 0.1
    if levels is None:
        maps = rng.random((4, 20, 20)) + 0.3 * masks
    else:
        maps = rng.integers(0, levels, (4, 20, 20)) / levels + 0.2 * masks
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    got = pixel_auroc(masks, maps)
    assert type(got) is float
    assert got == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_float32_and_all_tied():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 16, 16)) < 0.2
    maps = (rng.random((3, 16, 16)) + masks).astype(np.float32)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert pixel_auroc(masks, np.ones(masks.shape)) == 0.5


def test_pixel_auroc_single_class_and_validation():
    assert pixel_auroc(np.zeros((2, 4, 4), bool), np.random.rand(2, 4, 4)) is None
    assert pixel_auroc(np.ones((2, 4, 4), bool), np.random.rand(2, 4, 4)) is None
    with pytest.raises(ValueError):
        pixel_auroc(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 5)))
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0] = np.nan
    with pytest.raises(ValueError):
        pixel_auroc(np.eye(4, dtype=bool)[None], maps)


def test_image_auroc():
    labels = [0, 0, 1, 1, 0, 1]
    scores = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4]
    got = image_auroc(labels, scores)
    assert type(got) is float
    assert got == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert image_auroc([0, 1], [0.0, 1.0]) == 1.0
    assert image_auroc([True, False], [0.0, 1.0]) == 0.0
    assert image_auroc([0, 0, 0], [0.1, 0.2, 0.3]) is None
    assert image_auroc([1, 1], [0.1, 0.2]) is None
    with pytest.raises(ValueError):
        image_auroc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError):
        image_auroc([0, 1], [0.1, 0.2, 0.3])


# --------------------------------------------------------------------------- PRO


def test_aupro_perfect_map():
    rng = np.random.default_rng(1)
    masks, _ = random_case(rng, n=4, h=32, w=32)
    got = aupro(masks, masks.astype(float))
    assert type(got) is float
    assert got == pytest.approx(1.0, abs=1e-6)


def test_aupro_constant_map():
    """A constant map jumps from (0, 0) to (1, 1): area 0.3 * 0.15 / 0.3 = 0.15."""
    rng = np.random.default_rng(2)
    masks, _ = random_case(rng)
    masks[0, 0, 0] = True
    assert aupro(masks, np.full(masks.shape, 0.7)) == pytest.approx(0.15, abs=1e-12)
    assert aupro(masks, np.full(masks.shape, 0.7), fpr_limit=1.0) == pytest.approx(0.5, abs=1e-12)
    fpr, pro = pro_curve(masks, np.zeros(masks.shape))
    np.testing.assert_array_equal(fpr, [0.0, 1.0])
    np.testing.assert_array_equal(pro, [0.0, 1.0])


def test_aupro_hand_computed():
    """One 4x4 image: region A (1 pixel), region B (2x2), 11 defect-free pixels.

    Scores: A = 0.9; B = 0.5, 0.5, 0.2, 0.2; one defect-free pixel 0.3, others 0.
    Curve (fpr, pro): (0, 0) -> t=0.9 (0, 1/2) -> t=0.5 (0, 3/4) -> t=0.3 (1/11, 3/4)
    -> t=0.2 (1/11, 1) -> t=0 (1, 1). Area to 0.3 = 0.75/11 + (0.3 - 1/11) * 1,
    so AUPRO = (0.3 - 0.25/11) / 0.3 = 61/66.
    """
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True  # region A
    mask[2:4, 2:4] = True  # region B
    m = np.zeros((4, 4))
    m[0, 0] = 0.9
    m[2, 2:4] = 0.5
    m[3, 2:4] = 0.2
    m[0, 3] = 0.3
    fpr, pro = pro_curve(mask, m)
    np.testing.assert_allclose(fpr, [0, 0, 0, 1 / 11, 1 / 11, 1], atol=1e-15)
    np.testing.assert_allclose(pro, [0, 0.5, 0.75, 0.75, 1, 1], atol=1e-15)
    assert aupro(mask, m) == pytest.approx(61 / 66, abs=1e-12)
    assert aupro(mask[None], m[None]) == pytest.approx(61 / 66, abs=1e-12)


def test_pro_is_per_region_not_per_pixel():
    """Detecting only a 1-pixel region scores the same as detecting only a 100-pixel one.

    Curve (0, 0) -> (0, 1/2) -> (1, 1): area to 0.3 = 0.3 * (0.5 + 0.65) / 2, / 0.3.
    """
    mask = np.zeros((32, 32), bool)
    mask[1, 1] = True
    mask[10:20, 10:20] = True
    small = np.zeros((32, 32))
    small[1, 1] = 1.0
    big = np.zeros((32, 32))
    big[10:20, 10:20] = 1.0
    assert aupro(mask, small) == pytest.approx(0.575, abs=1e-12)
    assert aupro(mask, big) == pytest.approx(0.575, abs=1e-12)


def test_regions_are_8_connected_and_per_image():
    # Diagonal pair = one region (8-connectivity) + one isolated pixel = 2 regions.
    mask = np.zeros((6, 6), bool)
    mask[0, 0] = mask[1, 1] = True
    mask[4, 4] = True
    m = np.zeros((6, 6))
    m[0, 0] = 1.0  # half of the diagonal region
    fpr, pro = pro_curve(mask, m)
    np.testing.assert_allclose(pro[:2], [0.0, 0.25])  # (1/2 + 0) / 2, not 1/3
    # The same region in two stacked images counts twice; labelling is per image.
    masks = np.zeros((2, 6, 6), bool)
    masks[:, 2:4, 2:4] = True
    maps = np.zeros((2, 6, 6))
    maps[0, 2:4, 2:4] = 1.0
    fpr, pro = pro_curve(masks, maps)
    np.testing.assert_allclose(pro[:2], [0.0, 0.5])


@pytest.mark.parametrize("levels", [None, 2, 4, 16])
@pytest.mark.parametrize("seed", range(8))
def test_aupro_matches_slow_reference(seed, levels):
    rng = np.random.default_rng(100 + seed)
    masks, maps = random_case(rng, levels=levels)
    if not masks.any():
        masks[0, 3, 3] = True
    fpr, pro = pro_curve(masks, maps)
    # pro_curve returns the vertices of the exact polyline: the dense curve (one
    # point per unique value) without repeats and horizontal-run interior points.
    slow_fpr, slow_pro = simplify(*slow_pro_points(masks, maps))
    assert len(fpr) == len(slow_fpr)
    np.testing.assert_allclose(fpr, slow_fpr, atol=1e-12)
    np.testing.assert_allclose(pro, slow_pro, atol=1e-9)
    assert len(simplify(fpr, pro)[0]) == len(fpr)
    for limit in (0.3, 0.05, 1.0, float(fpr[len(fpr) // 2]) or 0.3):
        assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(
            slow_aupro(masks, maps, limit), abs=1e-6
        )


def test_aupro_curve_monotone_and_float32():
    rng = np.random.default_rng(7)
    masks, maps = random_case(rng, n=5, h=40, w=40, levels=50)
    masks[0, 5, 5] = True
    fpr, pro = pro_curve(masks, maps.astype(np.float32))
    assert fpr[0] == 0 and pro[0] == 0 and fpr[-1] == 1 and pro[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-12)
    assert aupro(masks, maps.astype(np.float32)) == pytest.approx(aupro(masks, maps), abs=1e-12)


def test_aupro_undefined_cases():
    assert aupro(np.zeros((2, 8, 8), bool), np.random.rand(2, 8, 8)) is None
    assert aupro(np.ones((1, 8, 8), bool), np.random.rand(1, 8, 8)) is None
    with pytest.raises(ValueError):
        pro_curve(np.zeros((2, 8, 8), bool), np.random.rand(2, 8, 8))
    with pytest.raises(ValueError):
        aupro(np.eye(8, dtype=bool), np.random.rand(8, 8), fpr_limit=0.0)


# --------------------------------------------------------------------------- decisions


def test_classification_metrics_known_matrix():
    # tp=3, fn=1, tn=4, fp=2
    labels = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    predicted = [1, 1, 1, 0, 0, 0, 0, 0, 1, 1]
    m = classification_metrics(labels, predicted)
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (3, 1, 4, 2)
    assert m["tpr"] == pytest.approx(0.75)
    assert m["tnr"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((0.75 + 4 / 6) / 2)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert m["accuracy"] == pytest.approx(0.7)
    json.dumps(m)
    for key in ("tpr", "tnr", "balanced_accuracy", "f1", "precision", "accuracy"):
        assert type(m[key]) is float
    for key in ("tp", "fp", "tn", "fn"):
        assert type(m[key]) is int


def test_classification_metrics_single_class():
    good = classification_metrics([0, 0, 0], [0, 1, 0])
    assert good["tpr"] is None
    assert good["tnr"] == pytest.approx(2 / 3)
    assert good["balanced_accuracy"] == pytest.approx(2 / 3)
    assert good["f1"] == 0.0 and good["precision"] == 0.0
    assert (good["tp"], good["fp"], good["tn"], good["fn"]) == (0, 1, 2, 0)

    all_good_predicted_good = classification_metrics([0, 0], [0, 0])
    assert all_good_predicted_good["f1"] == 0.0
    assert all_good_predicted_good["accuracy"] == 1.0

    bad = classification_metrics(np.array([True, True]), np.array([True, False]))
    assert bad["tnr"] is None
    assert bad["tpr"] == 0.5 and bad["balanced_accuracy"] == 0.5
    assert bad["precision"] == 1.0
    assert bad["f1"] == pytest.approx(2 / 3)
    json.dumps(good), json.dumps(bad)
