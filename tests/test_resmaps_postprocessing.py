"""Tests for anomaly.resmaps, anomaly.postprocessing and the finetune pair search."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from anomaly import resmaps
from anomaly.errors import AnomalyError
from anomaly.postprocessing import (
    best_balanced_accuracy,
    classify,
    image_scores,
    largest_area_table,
    largest_region_areas,
    segment,
    synthetic_pair,
    threshold_grid,
)
from anomaly.resmaps import THRESHOLD_GRID, residual_maps


def skimage_ssim(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Reference local SSIM map of one (H, W, C) pair, averaged over channels."""
    return np.mean([structural_similarity(x[..., c], y[..., c], full=True, data_range=1.0,
                                          gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=True)[1]
                    for c in range(x.shape[-1])], axis=0)


def pair(channels: int, n: int = 2, size: int = 48, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, size, size, channels))
    y = np.clip(x + rng.normal(0, 0.15, x.shape), 0, 1)
    return x, y


# --------------------------------------------------------------------------- ssim / residual maps


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_map_matches_skimage(channels):
    x, y = pair(channels)
    ours = resmaps.ssim_map(x, y).numpy()
    assert ours.shape == (2, 48, 48)
    for i in range(2):
        np.testing.assert_allclose(ours[i], skimage_ssim(x[i], y[i]), atol=1e-4)


def test_ssim_map_on_independent_images_matches_skimage():
    rng = np.random.default_rng(5)
    x, y = rng.random((1, 48, 48, 1)), rng.random((1, 48, 48, 1))
    np.testing.assert_allclose(resmaps.ssim_map(x, y).numpy()[0], skimage_ssim(x[0], y[0]), atol=1e-4)


def test_ssim_residual_is_one_minus_ssim_clipped():
    x, y = pair(1)
    maps = residual_maps(x, y, "ssim")
    assert maps.shape == (2, 48, 48) and maps.dtype == np.float32
    ref = np.clip(1 - np.stack([skimage_ssim(x[i], y[i]) for i in range(2)]), 0, 1)
    np.testing.assert_allclose(maps, ref, atol=1e-4)
    assert maps.min() >= 0.0 and maps.max() <= 1.0


@pytest.mark.parametrize("method", ["ssim", "mssim", "l2"])
@pytest.mark.parametrize("channels", [1, 3])
def test_identical_images_give_zero_maps(method, channels):
    x, _ = pair(channels)
    np.testing.assert_allclose(residual_maps(x, x, method, "float64"), 0.0, atol=1e-5)
    np.testing.assert_array_equal(residual_maps(x, x, method, "uint8"), 0.0)


def test_mssim_scales_leave_room_for_the_window():
    assert resmaps.mssim_scales(256) == (2, 4, 8)
    assert resmaps.mssim_scales(48) == (2, 4)  # 48 / 8 = 6 px is smaller than the 11-px window
    assert resmaps.mssim_scales(16) == (1,)


def test_mssim_is_the_mean_of_coarse_ssim_residuals():
    import tensorflow as tf

    x, y = pair(3, size=48)
    expected = []
    for f in (2, 4):  # box means by reshaping, SSIM by scikit-image
        down = [a.reshape(2, 48 // f, f, 48 // f, f, 3).mean(axis=(2, 4)) for a in (x, y)]
        residual = (1 - np.stack([skimage_ssim(down[0][i], down[1][i]) for i in range(2)])) / 2
        expected.append(tf.image.resize(residual[..., None].astype(np.float32), (48, 48), "bilinear")[..., 0])
    np.testing.assert_allclose(residual_maps(x, y, "mssim"), np.mean(expected, axis=0), atol=1e-4)


def test_mssim_ignores_blur_of_fine_texture_but_not_a_missing_part():
    # What an autoencoder does to every image (blur fine texture) against what a defect is
    # (a missing region): the full-resolution SSIM flags both, the multi-scale map mainly the second.
    from scipy import ndimage

    rng = np.random.default_rng(0)
    coarse = ndimage.zoom(rng.random((12, 12)), 8, order=1)[None, :, :, None]
    x = np.clip(0.8 * coarse + 0.2 * rng.random((1, 96, 96, 1)), 0, 1)
    blurred = ndimage.gaussian_filter(x, sigma=(0, 1.5, 1.5, 0))
    broken = blurred.copy()
    broken[0, 40:64, 40:64] = 0.0
    for method in ("ssim", "mssim"):
        blur = residual_maps(x, blurred, method)[0]
        defect = residual_maps(x, broken, method)[0]
        ratio = defect[44:60, 44:60].mean() / blur[44:60, 44:60].mean()
        if method == "ssim":
            ssim_ratio = ratio
    assert ratio > 2 * ssim_ratio


def test_l2_is_squared_difference_averaged_over_channels():
    x, y = pair(3)
    maps = residual_maps(x, y, "l2")
    np.testing.assert_allclose(maps, ((x - y) ** 2).mean(axis=-1), rtol=1e-5, atol=1e-7)


def test_colour_only_difference_is_visible():
    # a change of hue with the same luma: lost by a grey conversion, seen by per-channel maps
    x = np.full((1, 32, 32, 3), 0.5)
    y = x + np.array([0.114, 0.0, -0.299])
    assert abs((y - x)[0, 0, 0] @ np.array([0.299, 0.587, 0.114])) < 1e-12
    np.testing.assert_allclose(residual_maps(x, y, "l2"), (0.114 ** 2 + 0.299 ** 2) / 3, rtol=1e-5)
    assert residual_maps(x, y, "ssim").min() > 0.01


def test_local_defect_scores_higher_than_the_rest():
    rng = np.random.default_rng(3)
    x = rng.random((1, 48, 48, 1)) * 0.2 + 0.4
    y = x.copy()
    y[0, 20:28, 20:28] = 1.0 - y[0, 20:28, 20:28]
    for method in ("ssim", "mssim", "l2"):
        maps = residual_maps(x, y, method)[0]
        inside = maps[21:27, 21:27].min()
        outside = np.delete(maps, np.s_[12:36], axis=0).max()
        assert inside > outside, method


@pytest.mark.parametrize("method", ["ssim", "mssim", "l2"])
def test_uint8_maps_are_integers_0_to_255(method):
    x, y = pair(1)
    y[0] = 1.0 - x[0]
    maps = residual_maps(x, y, method, "uint8")
    assert np.all(maps == np.round(maps))
    assert maps.min() >= 0 and maps.max() <= 255
    assert maps.max() > 1  # really on the 0..255 scale
    np.testing.assert_allclose(maps, residual_maps(x, y, method, "float64") * 255, atol=0.5 + 1e-3)


def test_uint8_l2_known_values():
    x = np.zeros((1, 4, 4, 1))
    y = np.concatenate([np.full((1, 2, 4, 1), 1.0), np.full((1, 2, 4, 1), 0.5)], axis=1)
    maps = residual_maps(x, y, "l2", "uint8")[0]
    np.testing.assert_array_equal(maps[:2], 255)
    np.testing.assert_array_equal(maps[2:], 64)  # 0.25 * 255 = 63.75


def test_unknown_method_or_dtype():
    x, y = pair(1, n=1, size=16)
    with pytest.raises(AnomalyError, match="--method") as exc:
        residual_maps(x, y, "l1")
    assert "l1" in str(exc.value)
    with pytest.raises(AnomalyError, match="--dtype") as exc:
        residual_maps(x, y, "ssim", "uint16")
    assert "uint16" in str(exc.value)


def test_ssim_maps_for_different_batch_and_image_sizes():
    for n, size in ((1, 32), (3, 32), (2, 40)):
        x, y = pair(1, n=n, size=size, seed=n)
        maps = residual_maps(x, y, "ssim")
        assert maps.shape == (n, size, size)
        np.testing.assert_allclose(maps[0], np.clip(1 - skimage_ssim(x[0], y[0]), 0, 1), atol=1e-4)


def test_ssim_maps_for_rgb_then_grayscale_in_one_process():
    rgb_x, rgb_y = pair(3, n=1, size=32)
    gray_x, gray_y = pair(1, n=1, size=32)
    assert residual_maps(rgb_x, rgb_y, "ssim").shape == (1, 32, 32)
    assert residual_maps(gray_x, gray_y, "ssim").shape == (1, 32, 32)


# --------------------------------------------------------------------------- threshold_grid


def test_threshold_grid_values_are_exact_multiples():
    grid = threshold_grid(0.1, 0.002, 0.3)
    assert 0.27 in grid.tolist()
    assert 0.2 in grid.tolist()
    assert all(len(repr(float(v))) <= 7 for v in grid)  # no 0.27000000000000013
    np.testing.assert_allclose(np.diff(grid), 0.002, rtol=1e-9)
    assert grid[0] == 0.1
    assert 0.0135 in threshold_grid(0.005, 0.0005, 0.05).tolist()


@pytest.mark.parametrize("start, step, maximum", [
    (0.1, 0.002, 0.2871), (0.1, 0.002, 0.27), (0.1, 0.002, 0.3), (0.1, 0.002, 0.999),
    (0.005, 0.0005, 0.0123), (0.005, 0.0005, 0.05), (20.0, 1.0, 255.0), (5.0, 1.0, 37.4),
    (0.1, 0.002, np.float32(0.3)),
])
def test_threshold_grid_reaches_the_maximum(start, step, maximum):
    grid = threshold_grid(start, step, float(maximum))
    # a map whose max is `maximum` has no pixel over the last threshold ...
    assert grid[-1] >= maximum
    maps = np.full((1, 2, 2), float(maximum))
    assert not segment(maps, grid[-1]).any()
    # ... and the grid stops right there
    assert grid[-2] <= maximum
    assert grid[-1] - maximum <= step + 1e-9


def test_threshold_grid_above_an_off_grid_maximum():
    grid = threshold_grid(0.1, 0.002, 0.2871)
    assert grid[-1] == 0.288 and grid[-2] == 0.286
    assert threshold_grid(20.0, 1.0, 255.0)[-1] == 256.0


@pytest.mark.parametrize("maximum", [0.0, 0.05, 0.0999, -1.0])
def test_threshold_grid_never_empty(maximum):
    grid = threshold_grid(0.1, 0.002, maximum)
    assert len(grid) >= 1
    assert grid[0] == 0.1


# --------------------------------------------------------------------------- regions


def test_largest_region_uses_8_connectivity():
    maps = np.zeros((1, 5, 5))
    for i in range(4):
        maps[0, i, i] = 1.0  # a diagonal line: one region with 8-connectivity
    assert largest_region_areas(maps, 0.5).tolist() == [4]


def test_largest_region_per_image_never_merges_across_the_stack():
    maps = np.zeros((3, 4, 6))
    maps[0, -1, :] = 1.0   # bottom row of image 0 ...
    maps[1, 0, :] = 1.0    # ... touches the top row of image 1 when stacked
    maps[1, 0, 0] = 1.0
    maps[2, :2, :2] = 1.0  # image 2 at the same x/y as image 1: a 3-D label would join them
    maps[2, 3, 5] = 1.0
    assert largest_region_areas(maps, 0.5).tolist() == [6, 6, 4]


def test_largest_region_picks_the_largest_and_zero_when_none():
    maps = np.zeros((3, 10, 10))
    maps[0, :2, :2] = 1.0           # 4
    maps[0, 5:8, 5:8] = 1.0         # 9
    maps[2, 9, 9] = 0.5             # not strictly over the threshold
    assert largest_region_areas(maps, 0.5).tolist() == [9, 0, 0]
    assert largest_region_areas(maps, 0.4).tolist() == [9, 0, 1]


def test_largest_area_table_shape_and_monotonic():
    rng = np.random.default_rng(0)
    maps = rng.random((4, 16, 16))
    thresholds = np.array([0.2, 0.5, 0.8, 0.99])
    table = largest_area_table(maps, thresholds)
    assert table.shape == (4, 4)
    assert np.all(np.diff(table, axis=0) <= 0)  # higher threshold, smaller regions
    for k, t in enumerate(thresholds):
        assert table[k].tolist() == largest_region_areas(maps, t).tolist()


def test_segment_drops_small_regions():
    maps = np.zeros((2, 12, 12))
    maps[0, 0:3, 0:3] = 1.0      # 9 px
    maps[0, 8, 8] = 1.0          # 1 px
    maps[0, 10, 0:2] = 1.0       # 2 px
    maps[1, 5:9, 5:9] = 1.0      # 16 px
    seg = segment(maps, 0.5, min_area=9)
    assert seg.dtype == np.bool_ and seg.shape == maps.shape
    expected = np.zeros_like(seg)
    expected[0, 0:3, 0:3] = True
    expected[1, 5:9, 5:9] = True
    np.testing.assert_array_equal(seg, expected)
    np.testing.assert_array_equal(segment(maps, 0.5, min_area=0), maps > 0.5)
    np.testing.assert_array_equal(segment(maps, 0.5, min_area=17), np.zeros_like(seg))


def test_segment_keeps_regions_touching_the_border():
    maps = np.zeros((1, 8, 8))
    maps[0, 0:3, 5:8] = 1.0
    assert segment(maps, 0.5, min_area=9).sum() == 9


def test_classify():
    maps = np.zeros((3, 10, 10))
    maps[0, :2, :5] = 0.9   # 10 px
    maps[1, :1, :3] = 0.9   # 3 px
    assert classify(maps, 0.5, 5).tolist() == [1, 0, 0]
    assert classify(maps, 0.5, 3).tolist() == [1, 1, 0]
    assert classify(maps, 0.95, 1).tolist() == [0, 0, 0]


def test_image_scores_sigma_zero_is_the_max():
    rng = np.random.default_rng(1)
    maps = rng.random((5, 8, 9)).astype(np.float32)
    scores = image_scores(maps, sigma=0)
    assert scores.dtype == np.float64 and scores.shape == (5,)
    np.testing.assert_array_equal(scores, maps.reshape(5, -1).max(axis=1))


def test_image_scores_smoothing_prefers_regions_to_single_pixels():
    maps = np.zeros((2, 32, 32), dtype=np.float32)
    maps[0, 16, 16] = 1.0
    maps[1, 12:21, 12:21] = 0.5
    raw = image_scores(maps, sigma=0)
    smooth = image_scores(maps, sigma=2.0)
    assert raw[0] > raw[1]
    assert smooth[1] > smooth[0]


# --------------------------------------------------------------------------- finetune search


def finetune_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    size = 32
    val = rng.uniform(0.0, 0.15, (6, size, size)).astype(np.float32)
    ft = rng.uniform(0.0, 0.15, (8, size, size)).astype(np.float32)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    for i in range(4, 8):
        r, c = rng.integers(0, size - 10, 2)
        ft[i, r:r + 10, c:c + 10] = 0.8  # a 100 px defect
    return val, ft, labels


@pytest.fixture(scope="module")
def search_pair():
    from anomaly.finetune import search_pair

    return search_pair


def test_search_pair_finds_a_perfect_pair(search_pair):
    val, ft, labels = finetune_case()
    best, table = search_pair(val, ft, labels, "ssim", "float64")
    assert best in table
    assert best["balanced_accuracy"] == 1.0
    assert best["tpr"] == 1.0 and best["tnr"] == 1.0
    assert largest_region_areas(val, best["threshold"]).max() < best["min_area"]
    assert classify(ft, best["threshold"], best["min_area"]).tolist() == labels.tolist()


def test_search_pair_thresholds_clear_every_validation_map(search_pair):
    val, ft, labels = finetune_case(1)
    _, table = search_pair(val, ft, labels, "ssim", "float64")
    assert [row["min_area"] for row in table] == list(range(5, 1005, 5))
    start, step = THRESHOLD_GRID[("float64", "ssim")]
    grid = threshold_grid(start, step, float(val.max())).tolist()
    for row in table:
        assert row["threshold"] in grid
        assert largest_region_areas(val, row["threshold"]).max() < row["min_area"]
        # the lowest such threshold: one step lower would leave a validation region
        k = grid.index(row["threshold"])
        if k > 0:
            assert largest_region_areas(val, grid[k - 1]).max() >= row["min_area"]


def test_search_pair_ties_go_to_the_smallest_min_area(search_pair):
    val, ft, labels = finetune_case(1)
    best, table = search_pair(val, ft, labels, "ssim", "float64")
    top = max(row["balanced_accuracy"] for row in table)
    winners = [row["min_area"] for row in table if row["balanced_accuracy"] == top]
    assert len(winners) > 1  # a real tie ...
    assert table[0]["min_area"] not in winners  # ... not won by the first candidate
    assert best["min_area"] == min(winners)


def test_search_pair_on_uint8_maps(search_pair):
    val, ft, labels = finetune_case(3)
    val8, ft8 = np.round(val * 255), np.round(ft * 255)
    best, _ = search_pair(val8, ft8, labels, "ssim", "uint8", min_areas=(5, 10, 20, 50))
    assert best["balanced_accuracy"] == 1.0
    assert best["threshold"] == int(best["threshold"])
    assert largest_region_areas(val8, best["threshold"]).max() < best["min_area"]


def test_pixel_gaussian_scores_deviation_from_the_training_mean():
    from anomaly.detectors.pixel_gaussian import PixelGaussianDetector

    rng = np.random.default_rng(0)
    train = 0.5 + 0.05 * rng.standard_normal((50, 16, 16, 1)).astype(np.float32)
    det = PixelGaussianDetector((16, 16, 1)).fit(train)
    test = np.full((1, 16, 16, 1), 0.5, np.float32)
    test[0, 4:6, 4:6] = 0.9
    amap = det.anomaly_maps(test)[0]
    assert amap[4:6, 4:6].min() > 5 and np.delete(amap.ravel(), [68, 69, 84, 85]).max() < 1
    flat = PixelGaussianDetector((16, 16, 1), std_floor=0.01).fit(np.full((5, 16, 16, 1), 0.5, np.float32))
    assert flat.anomaly_maps(test)[0].max() == pytest.approx(0.4 / 0.01)


def test_quantile_grid_ends_above_every_validation_pixel():
    from anomaly.postprocessing import quantile_grid

    maps = np.random.default_rng(0).gamma(2.0, 3.0, (5, 16, 16))
    grid = quantile_grid(maps)
    assert np.all(np.diff(grid) > 0) and grid[-1] > maps.max() and grid[0] == pytest.approx(np.median(maps))


def test_normal_only_pair_ignores_one_odd_validation_image():
    from anomaly.finetune import normal_only_pair

    rng = np.random.default_rng(0)
    val = 0.05 * rng.random((20, 32, 32))
    val[7, 10:20, 10:20] = 0.9  # one odd defect-free image
    best, table = normal_only_pair(val, "ssim", "float64", target_fpr=0.05, min_areas=(5, 50, 100))
    assert all(row["val_fpr"] <= 0.05 for row in table)
    assert best["threshold"] < 0.5  # the odd image (1 of 20) is allowed to be flagged
    strict, _ = normal_only_pair(val, "ssim", "float64", target_fpr=0.0, min_areas=(5, 50))
    assert strict["threshold"] >= 0.9  # with no false positive allowed, its 100-px region sets it


def test_map_stats_turn_down_systematic_errors():
    from anomaly.postprocessing import MapStats

    rng = np.random.default_rng(0)
    train = 0.01 * rng.random((30, 16, 16))
    train[:, 0, :] += 0.5  # an edge every image reconstructs badly
    stats = MapStats.fit(train)
    test = 0.01 * rng.random((1, 16, 16))
    test[0, 0, :] += 0.5
    test[0, 8, 8] += 0.3  # a real defect, weaker than the edge error
    z = stats.apply(test)[0]
    assert np.unravel_index(np.argmax(z), z.shape) == (8, 8)
    assert np.unravel_index(np.argmax(test[0]), test[0].shape)[0] == 0  # raw map: the edge wins


def test_too_few_validation_images_for_the_target_rate_warn(recwarn):
    from anomaly.errors import AnomalyWarning
    from anomaly.postprocessing import PostProcessor

    maps = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    with pytest.warns(AnomalyWarning, match="20 or more"):
        PostProcessor("l2").fit(maps, "normal-only", target_fpr=0.05)
    many = np.random.default_rng(0).random((40, 16, 16)).astype(np.float32)
    PostProcessor("l2").fit(many, "normal-only", target_fpr=0.05)
    assert not [w for w in recwarn if issubclass(w.category, AnomalyWarning)]


def _maps_with_blobs(n: int, values, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Maps of 0.1 + noise up to 0.05 with one square of `values[i]` (side 6) in map i; the squares' areas."""
    rng = np.random.default_rng(seed)
    maps = (0.1 + rng.random((n, size, size)) * 0.05).astype(np.float32)
    for i, value in enumerate(values):
        y, x = rng.integers(0, size - 6, 2)
        maps[i, y:y + 6, x:x + 6] = value
    return maps, np.full(n, 36)


def test_synthetic_pair_separates_validation_maps_from_synthetic_defects():
    val, _ = _maps_with_blobs(12, [], seed=0)
    defects, areas = _maps_with_blobs(14, [0.8] * 14, seed=1)
    best, table = synthetic_pair(val, defects, areas, "ssim", "float64", min_areas=(5, 20, 35, 40, 100))
    assert [row["min_area"] for row in table] == [5, 20, 35]  # no larger than the median defect (36 px)
    assert best["balanced_accuracy"] == 1.0 and best["tpr"] == 1.0 and best["tnr"] == 1.0
    assert val.max() <= best["threshold"] < 0.8
    # Half the "defects" darker than the maps around them, invisible to a threshold: the other half is found.
    faint, _ = _maps_with_blobs(14, [0.8] * 7 + [0.0] * 7, seed=1)
    best, _ = synthetic_pair(val, faint, areas, "ssim", "float64", min_areas=(5, 20, 35))
    assert best["tpr"] == 0.5 and best["tnr"] == 1.0


def test_best_balanced_accuracy_is_the_optimum_over_pairs_and_needs_both_classes():
    good, _ = _maps_with_blobs(6, [], seed=2)
    bad, _ = _maps_with_blobs(6, [0.9] * 6, seed=3)
    maps, labels = np.concatenate([good, bad]), np.r_[np.zeros(6), np.ones(6)]
    assert best_balanced_accuracy(maps, labels) == 1.0
    # One defect invisible: 11 of 12 right at best.
    bad[0] = good[0]
    assert best_balanced_accuracy(np.concatenate([good, bad]), labels) == pytest.approx((1 + 5 / 6) / 2)
    assert best_balanced_accuracy(good, np.zeros(6)) is None
    # Image-level maps (one score painted over each map), most images defective: the best threshold
    # lies low among the pixels, and is found; never below the pair the caller chose.
    scores = np.r_[np.linspace(0.0, 0.1, 3), np.linspace(0.2, 0.4, 9)]
    flat = np.broadcast_to(scores[:, None, None], (12, 8, 8)).astype(np.float32)
    labels = np.r_[np.zeros(3), np.ones(9)]
    assert best_balanced_accuracy(flat, labels) == 1.0
    assert best_balanced_accuracy(flat[:, :1, :1], labels, chosen=(0.15, 1)) == 1.0
