"""Synthetic anomalies: seeded, inside the image, of the documented sizes, and visible."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly.data.synthetic import (
    CUTPASTE,
    DEFECT_KINDS,
    NORMAL,
    SCAR,
    colour_jitter,
    cutpaste,
    make_defect,
    polygon_mask,
    pretext_sample,
    scar,
    validation_defects,
)


def _image(channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random((128, 128, channels)).astype(np.float32)


@pytest.mark.parametrize("polygon", [False, True])
def test_cutpaste_changes_only_the_masked_area_of_the_documented_size(polygon):
    image = _image()
    for seed in range(20):
        out, mask = cutpaste(image, np.random.default_rng(seed), polygon=polygon)
        assert out.shape == image.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
        np.testing.assert_array_equal(out[~mask], image[~mask])
        share = mask.mean()
        assert 0 < share <= 0.15 + 0.01
        if not polygon:
            assert share >= 0.02 - 0.005  # the whole rectangle is pasted
            rows, cols = np.nonzero(mask)
            aspect = (np.ptp(cols) + 1) / (np.ptp(rows) + 1)
            assert 0.25 <= aspect <= 3.6


def test_same_seed_same_anomaly_other_seed_other_anomaly():
    image = _image()
    a, _ = cutpaste(image, np.random.default_rng(3), polygon=True)
    b, _ = cutpaste(image, np.random.default_rng(3), polygon=True)
    c, _ = cutpaste(image, np.random.default_rng(4), polygon=True)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_scar_is_thin_and_one_colour():
    image = np.zeros((128, 128, 3), np.float32)
    for seed in range(10):
        out, mask = scar(image, np.random.default_rng(seed))
        assert 2 * 10 * 0.5 <= mask.sum() <= 16 * 25 * 1.2
        colours = np.unique(out[mask].round(5), axis=0)
        assert len(colours) == 1 and np.all(colours >= 10 / 255 - 1e-6) and np.all(colours <= 240 / 255 + 1e-6)


def test_polygon_mask_is_convex_and_inside_its_box():
    from skimage.morphology import convex_hull_image

    for seed in range(10):
        mask = polygon_mask(40, 60, np.random.default_rng(seed))
        assert mask.shape == (40, 60) and mask.any()
        assert (convex_hull_image(mask) & ~mask).sum() <= 0.1 * mask.sum()  # convex up to its rasterised edge
        assert not mask[0].any() and not mask[:, 0].any()  # points are drawn in the inner 80 %


def test_colour_jitter_works_for_gray_and_rgb():
    rng = np.random.default_rng(0)
    for channels in (1, 3):
        patch = _image(channels)[:20, :20]
        out = colour_jitter(patch, rng)
        assert out.shape == patch.shape and not np.allclose(out, patch)


def test_pretext_samples_of_each_class():
    image = _image()
    normal = pretext_sample(image, NORMAL, np.random.default_rng(0))
    assert any(np.array_equal(normal, np.rot90(image, k)) for k in range(4))  # only rotated
    for label in (CUTPASTE, SCAR):
        sample = pretext_sample(image, label, np.random.default_rng(1))
        assert sample.shape == image.shape
        assert not any(np.array_equal(sample, np.rot90(image, k)) for k in range(4))


# ---------------------------------------------------------------- validation defects


def _part(shape=(96, 128, 3)) -> np.ndarray:
    """A smooth, textured stand-in for a photographed part."""
    from scipy import ndimage

    noise = ndimage.gaussian_filter(np.random.default_rng(7).random(shape), (3, 3, 0))
    return (0.2 + 0.6 * (noise - noise.min()) / np.ptp(noise)).astype(np.float32)


@pytest.mark.parametrize("shape", [(96, 128, 3), (64, 64, 1)])
@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_every_defect_kind_is_seeded_visible_and_its_mask_is_exactly_what_changed(kind, shape):
    image = _part(shape)
    for seed in range(6):
        out, mask = make_defect(image, kind, np.random.default_rng(seed))
        again, same = make_defect(image, kind, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, again)
        np.testing.assert_array_equal(mask, same)
        assert out.shape == image.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
        changed = np.abs(out - image).max(axis=-1)
        assert mask.sum() >= 4, (kind, seed)
        assert (changed[mask] > 4 / 255).all()
        assert (changed[~mask] <= 4 / 255).all()  # nothing outside the mask moved visibly
        assert mask.mean() < 0.2, (kind, seed)  # a defect, not a new image


def test_validation_defects_cover_every_kind_reproducibly():
    images = np.stack([_part()] * 8)
    a = validation_defects(images, seed=3)
    b = validation_defects(images, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    # 5 of each of the 7 kinds needs 35 defects: 5 copies of 8 images, capped at 4 copies.
    assert a.copies == 4 and len(a.kinds) == 32
    assert {a.kinds.count(k) for k in DEFECT_KINDS} <= {4, 5}
    assert validation_defects(np.stack([_part()] * 40), seed=3).copies == 1
    c = validation_defects(images, seed=4)
    assert not np.array_equal(a.images, c.images)
