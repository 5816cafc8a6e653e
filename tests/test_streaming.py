"""Training sets read from their files batch by batch: `ImageFiles`, and the detectors and pipelines
that stream it give what they give on the same images held in memory."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from anomaly.data import io
from anomaly.data.io import ImageFiles, materialise, read_images
from anomaly.data.pipeline import Augmentation, evaluation_dataset, training_dataset
from anomaly.detectors import patchcore
from anomaly.detectors.feature_ae import FeatureAEDetector
from anomaly.detectors.features import sample_rows
from anomaly.detectors.padim import PaDiMDetector, RunningMoments
from anomaly.detectors.patchcore import PatchCoreDetector, greedy_coreset
from anomaly.detectors.pixel_gaussian import PixelGaussianDetector
from anomaly.errors import AnomalyError

FEATURES = {"input_shape": (64, 64, 3), "weights": "random"}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ANOMALY_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "anomaly-cache"))


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    """70 smooth random 8-bit RGB PNGs of 40x48 (so reading resizes them)."""
    root = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(3)
    paths = []
    for i in range(70):
        coarse = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
        pixels = np.asarray(Image.fromarray(coarse).resize((48, 40), Image.BILINEAR), np.int16)
        pixels = np.clip(pixels + rng.integers(-20, 21, pixels.shape), 0, 255).astype(np.uint8)
        path = root / f"{i:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def good(demo_root):
    """The first 6 training images of the 64 px demo set."""
    return sorted((demo_root / "train" / "good").glob("*.png"))[:6]


@pytest.fixture
def streamed(monkeypatch):
    """Every `ImageFiles` set is over the in-memory limit, and reading one whole fails the test."""
    monkeypatch.setattr(io, "IN_MEMORY_BYTES", 0)
    # `materialise`'s default limit was bound when it was defined: patch it too.
    monkeypatch.setattr(io.materialise, "__defaults__", (0,))

    def whole(self, dtype=None, copy=None):
        raise AssertionError("the whole ImageFiles set was read at once")

    monkeypatch.setattr(ImageFiles, "__array__", whole)


# ImageFiles


def test_image_files_index_like_the_array_read_at_once(pngs):
    paths = pngs[:7]
    files = ImageFiles(paths, "rgb", (32, 32), workers=2)
    whole = read_images(paths, "rgb", (32, 32))
    assert files.shape == whole.shape == (7, 32, 32, 3) and len(files) == 7
    assert files.nbytes == whole.nbytes and files.dtype == whole.dtype and files.ndim == 4
    np.testing.assert_array_equal(files[3], whole[3])
    np.testing.assert_array_equal(files[np.int64(-1)], whole[-1])
    np.testing.assert_array_equal(files[2:5], whole[2:5])
    np.testing.assert_array_equal(files[[2, 0]], whole[[2, 0]])
    np.testing.assert_array_equal(files[np.array([6, 1, 1])], whole[[6, 1, 1]])
    np.testing.assert_array_equal(np.asarray(files), whole)
    parts = list(files.batches(3))
    assert [len(p) for p in parts] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    np.testing.assert_array_equal(np.stack(list(files)), whole)
    np.testing.assert_array_equal(np.concatenate(list(io.batches(whole, 3))), whole)

    gray = ImageFiles(paths[:2], "grayscale", (16, 24))
    assert gray.shape == (2, 16, 24, 1)
    np.testing.assert_array_equal(np.asarray(gray), read_images(paths[:2], "grayscale", (16, 24)))


def test_materialise_reads_only_a_set_within_the_limit(pngs):
    files = ImageFiles(pngs[:3], "rgb", (32, 32))
    small = materialise(files, limit=files.nbytes)
    assert isinstance(small, np.ndarray)
    np.testing.assert_array_equal(small, read_images(pngs[:3], "rgb", (32, 32)))
    assert materialise(files, limit=files.nbytes - 1) is files
    assert isinstance(materialise(files), np.ndarray)  # 36 KiB: well under the default


def test_prepare_keeps_a_large_set_on_disk_and_checks_its_shape(pngs, streamed):
    det = PixelGaussianDetector(input_shape=(32, 32, 1))
    files = ImageFiles(pngs[:3], "grayscale", (32, 32))
    assert det.prepare(files) is files
    with pytest.raises(AnomalyError, match="takes"):
        det.prepare(ImageFiles(pngs[:3], "rgb", (32, 32)))


def test_an_unreadable_file_is_named(pngs, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    files = ImageFiles([pngs[0], bad, pngs[1]], "rgb", (32, 32))
    with pytest.raises(AnomalyError, match="broken.png"):
        files[1]
    with pytest.raises(AnomalyError, match="broken.png"):
        list(files.batches(2))
    with pytest.raises(AnomalyError, match="colour mode"):
        ImageFiles(pngs[:1], "cmyk", (32, 32))


# Streamed statistics


def _feature_batches(x, sizes):
    start = 0
    for size in sizes:
        yield x[start:start + size]
        start += size


@pytest.mark.parametrize("sizes", [(6,), (1, 2, 3), (2, 2, 2), (5, 1)])
def test_sample_rows_equals_sampling_the_concatenated_rows(sizes):
    x = np.random.default_rng(0).normal(size=(6, 3, 4, 5)).astype(np.float32)
    rows = x.reshape(-1, 5)
    for n, seed in [(10, 0), (10, 1), (71, 7)]:
        expected = rows[np.random.default_rng(seed).choice(len(rows), n, replace=False)]
        got = sample_rows(_feature_batches(x, sizes), len(rows), n, seed)
        np.testing.assert_array_equal(got, expected)
    # Not more rows than there are: all of them, in order.
    np.testing.assert_array_equal(sample_rows(_feature_batches(x, sizes), len(rows), len(rows), 0), rows)
    np.testing.assert_array_equal(sample_rows(_feature_batches(x, sizes), len(rows), 1000, 0), rows)


@pytest.mark.parametrize("sizes", [(8, 8, 5), (1, 20), (21,), (3, 1, 1, 16)])
def test_running_moments_equal_the_moments_of_all_samples(sizes):
    rng = np.random.default_rng(2)
    x = 10.0 + rng.normal(size=(21, 2, 3, 4)) * rng.uniform(0.1, 3.0, size=4)
    moments = RunningMoments()
    for batch in _feature_batches(x, sizes):
        moments.add(batch)
    assert moments.count == 21
    np.testing.assert_allclose(moments.mean, x.mean(axis=0), rtol=1e-10, atol=1e-10)
    cov = moments.covariance()
    assert cov.shape == (2, 3, 4, 4)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(cov[i, j], np.cov(x[:, i, j], rowvar=False), rtol=1e-10, atol=1e-10)


def test_pixel_gaussian_streamed_equals_in_memory(pngs, streamed):
    # 70 images: two batches of 64 and 6, merged.
    files = ImageFiles(pngs, "grayscale", (32, 32))
    in_memory = read_images(pngs, "grayscale", (32, 32))
    streamed_fit = PixelGaussianDetector(input_shape=(32, 32, 1), std_floor=1e-4).fit(files)
    memory_fit = PixelGaussianDetector(input_shape=(32, 32, 1), std_floor=1e-4).fit(in_memory)
    np.testing.assert_allclose(streamed_fit.mean_, in_memory.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(streamed_fit.std_, in_memory.astype(np.float64).std(axis=0), atol=1e-6)
    np.testing.assert_allclose(streamed_fit.mean_, memory_fit.mean_, atol=1e-6)
    np.testing.assert_allclose(streamed_fit.std_, memory_fit.std_, atol=1e-6)


def test_padim_streamed_equals_in_memory(good, streamed):
    files = ImageFiles(good, "rgb", (64, 64))
    images = read_images(good, "rgb", (64, 64))
    a = PaDiMDetector(**FEATURES, dims=16, batch_size=2).fit(files)
    b = PaDiMDetector(**FEATURES, dims=16, batch_size=2).fit(images)
    np.testing.assert_array_equal(a.channels_, b.channels_)
    np.testing.assert_allclose(a.mean_, b.mean_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.precision_, b.precision_, rtol=1e-4, atol=1e-4)


# PatchCore


def _coverage(features: np.ndarray, bank: np.ndarray) -> float:
    """The largest distance from a feature to its nearest bank row."""
    f, b = features.astype(np.float64), bank.astype(np.float64)
    d2 = (f * f).sum(1)[:, None] - 2 * f @ b.T + (b * b).sum(1)[None]
    return float(np.sqrt(np.maximum(d2.min(axis=1), 0)).max())


def _nearest(rows: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Each row's distance to its nearest feature."""
    r, f = rows.astype(np.float64), features.astype(np.float64)
    d2 = (r * r).sum(1)[:, None] - 2 * r @ f.T + (f * f).sum(1)[None]
    return np.sqrt(np.maximum(d2.min(axis=1), 0))


def test_patchcore_exact_bank_is_the_greedy_coreset_of_all_patches(good, streamed):
    images = read_images(good, "rgb", (64, 64))
    det = PatchCoreDetector(**FEATURES, coreset_ratio=0.1, min_bank_size=1, batch_size=2)
    total, n, width = det.bank_plan(len(images))
    features = det.patch_features(images).reshape(-1, width)
    assert len(features) == total and 1 < n < total
    expected = features[greedy_coreset(features, n, seed=det.seed)]
    np.testing.assert_array_equal(det.fit(images).memory_bank_, expected)
    # The same bank when the images are streamed from their files.
    np.testing.assert_array_equal(det.fit(ImageFiles(good, "rgb", (64, 64))).memory_bank_, expected)


def test_patchcore_chunked_bank_covers_the_patches(good, streamed, monkeypatch):
    monkeypatch.setattr(patchcore, "EXACT_BYTES", 0)
    monkeypatch.setattr(patchcore, "CHUNK_ROWS", 500)  # 2 images of 256 patches a chunk: 3 chunks
    files = ImageFiles(good, "rgb", (64, 64))
    det = PatchCoreDetector(**FEATURES, coreset_ratio=0.1, min_bank_size=1, batch_size=2)
    total, n, width = det.bank_plan(len(files))
    bank = det.fit(files).memory_bank_
    assert bank.shape == (n, width) and bank.dtype == np.float32

    images = read_images(good, "rgb", (64, 64))
    features = det.patch_features(images).reshape(-1, width)
    scale = float(np.linalg.norm(features, axis=1).mean())
    assert _nearest(bank, features).max() <= 1e-5 * scale  # every bank row is a patch feature
    assert len(np.unique(bank, axis=0)) == n

    np.testing.assert_array_equal(det.fit(files).memory_bank_, bank)  # deterministic

    exact = features[greedy_coreset(features, n, seed=det.seed)]
    # Measured: the worst-covered patch is 1.09x as far from the chunked bank as from the exact one
    # (1.0-1.17 over other seeds, ratios and chunk sizes); a random sample of as many rows: 1.4-1.5.
    assert _coverage(features, bank) <= 1.3 * _coverage(features, exact)

    maps = det.anomaly_maps(images[:2])
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all()


# feature-ae


def test_feature_ae_trains_on_a_seeded_sample_of_positions(good, streamed, monkeypatch):
    from anomaly.detectors import feature_ae

    det = FeatureAEDetector(**FEATURES, epochs=1, latent_dim=8, batch_size=2)
    h, w, width = det.output_shape(det._local_patches)
    keep = 20
    monkeypatch.setattr(feature_ae, "FEATURE_BYTES", 4 * width * len(good) * keep)

    images = read_images(good, "rgb", (64, 64))
    files = ImageFiles(good, "rgb", (64, 64))
    full = det.patch_features(images).reshape(len(good), h * w, width)
    sample = det._position_sample(files, keep, seed=3)
    assert sample.shape == (len(good), keep, 1, width)
    scale = float(np.linalg.norm(full, axis=-1).mean())
    for i in range(len(good)):
        d = np.linalg.norm(sample[i, :, 0, None].astype(np.float64) - full[i][None], axis=-1)
        assert d.min(axis=1).max() <= 1e-5 * scale  # each sampled row is a position of its own image
        assert len(set(d.argmin(axis=1))) == keep  # distinct positions
    np.testing.assert_array_equal(det._position_sample(images, keep, seed=3), sample)
    assert not np.array_equal(det._position_sample(images, keep, seed=4), sample)

    shapes = []
    sampler = FeatureAEDetector._position_sample

    def spy(self, *args, **kwargs):
        out = sampler(self, *args, **kwargs)
        shapes.append(out.shape)
        return out

    monkeypatch.setattr(FeatureAEDetector, "_position_sample", spy)
    det.fit(files, ImageFiles(good[:2], "rgb", (64, 64)))
    assert shapes[0][1:3] == (keep, 1) and shapes[0][1] < h * w  # trained on the sample, not whole maps
    maps = det.anomaly_maps(images[:3])
    assert maps.shape == (3, 64, 64) and np.isfinite(maps).all()


# tf.data pipelines


def test_pipelines_from_files_yield_the_batches_of_the_images_in_memory(pngs, streamed):
    paths = pngs[:7]
    files = ImageFiles(paths, "rgb", (32, 32))
    images = read_images(paths, "rgb", (32, 32))

    def batches(ds):
        return [(x.numpy(), y.numpy()) for x, y in ds]

    aug = Augmentation(rotation=20.0, shift=0.1, brightness=0.2)
    from_files = batches(training_dataset(files, 3, seed=5, aug=aug, first_epoch=1, epochs=3))
    in_memory = batches(training_dataset(images, 3, seed=5, aug=aug, first_epoch=1, epochs=3))
    assert [len(x) for x, _ in from_files] == [3, 3, 1] * 2
    for (fx, fy), (mx, _) in zip(from_files, in_memory, strict=True):
        np.testing.assert_array_equal(fx, mx)
        np.testing.assert_array_equal(fy, fx)
    # Augmented, and each epoch in its own order: not the images as read.
    assert not np.array_equal(from_files[0][0], images[:3])
    assert not np.array_equal(from_files[0][0], from_files[3][0])

    from_files = batches(evaluation_dataset(files, 3))
    in_memory = batches(evaluation_dataset(images, 3))
    assert [len(x) for x, _ in from_files] == [3, 3, 1]
    for (fx, fy), (mx, _) in zip(from_files, in_memory, strict=True):
        np.testing.assert_array_equal(fx, mx)
        np.testing.assert_array_equal(fy, fx)
    np.testing.assert_array_equal(np.concatenate([x for x, _ in from_files]), images)
