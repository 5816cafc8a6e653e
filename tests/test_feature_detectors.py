"""Feature detectors: their building blocks, and each one through train -> finetune -> test."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from anomaly.cli import finetune as finetune_cli
from anomaly.cli import test as test_cli
from anomaly.cli import train as train_cli
from anomaly.cli.common import run
from anomaly.detectors.features import local_patches, to_full_map
from anomaly.detectors.patchcore import augmented_bank, greedy_coreset, nearest_distances
from tests.conftest import train_args


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ANOMALY_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "anomaly-cache"))


def test_greedy_coreset_covers_every_cluster_first():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [100, 0], [0, 100], [100, 100]], np.float32)
    points = np.concatenate([c + rng.normal(0, 1, (50, 2)) for c in centres]).astype(np.float32)
    chosen = greedy_coreset(points, 4, projection_dim=128, seed=0)
    assert sorted(set(chosen // 50)) == [0, 1, 2, 3]  # one point from each cluster
    np.testing.assert_array_equal(chosen, greedy_coreset(points, 4, seed=0))


def test_nearest_distances_match_brute_force():
    rng = np.random.default_rng(1)
    q, b = rng.normal(size=(30, 16)).astype(np.float32), rng.normal(size=(50, 16)).astype(np.float32)
    full = np.linalg.norm(q[:, None] - b[None], axis=-1)
    d, idx = nearest_distances(tf.constant(q), tf.constant(augmented_bank(b)), k=3)
    np.testing.assert_allclose(d.numpy(), np.sort(full, axis=1)[:, :3], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(idx.numpy()[:, 0], full.argmin(axis=1))


def test_local_patches_average_inside_the_map_and_align_scales():
    fine = tf.reshape(tf.range(16, dtype=tf.float32), (1, 4, 4, 1))
    coarse = tf.ones((1, 2, 2, 3))
    out = local_patches([fine, coarse]).numpy()
    assert out.shape == (1, 4, 4, 4)
    assert out[0, 0, 0, 0] == pytest.approx(np.mean([0, 1, 4, 5]))  # corner: 4 pixels, no zero padding
    np.testing.assert_allclose(out[..., 1:], 1.0)
    # PatchCore's neighbourhood: 1 keeps each position, 5 averages a wider window
    np.testing.assert_array_equal(local_patches([fine], neighbourhood=1).numpy(), fine.numpy())
    wide = local_patches([fine], neighbourhood=5).numpy()
    assert wide[0, 0, 0, 0] == pytest.approx(np.mean([0, 1, 2, 4, 5, 6, 8, 9, 10]))


def test_full_map_keeps_a_constant_and_centres_a_peak():
    np.testing.assert_allclose(to_full_map(tf.fill((1, 8, 8), 2.0), (64, 64), 4.0).numpy(), 2.0, rtol=1e-5)
    peak = np.zeros((1, 9, 9), np.float32)
    peak[0, 4, 4] = 1.0
    out = to_full_map(tf.constant(peak), (72, 72), 2.0).numpy()[0]
    assert np.unravel_index(out.argmax(), out.shape) in {(35, 35), (35, 36), (36, 35), (36, 36)}


FEATURE_DETECTORS = [("patchcore", []), ("padim", []), ("fre", []), ("fre-tae", ["-e", "3"]), ("knn", []),
                     ("kmeans", []),
                     ("feature-ae", ["-e", "2"]), ("cutpaste", ["-e", "2"])]


@pytest.mark.parametrize("detector, extra", FEATURE_DETECTORS)
def test_feature_detector_runs_the_shared_pipeline(detector, extra, demo_root, tmp_path):
    if detector == "cutpaste":
        # A coarser patch map, through a config file: patch_stride 32 is 8 px at 64 px, an 8 x 8 grid of
        # 8 px patches per image where the default (2 px) embeds 29 x 29: the same code, 13 times the work.
        config = tmp_path / "cutpaste.yaml"
        config.write_text("patch_stride: 32\n")
        extra = [*extra, "--config", str(config)]
    assert train_cli.main(train_args(demo_root, tmp_path, "-a", detector, *extra)) == 0
    (model_file,) = tmp_path.rglob(f"{detector}.npz")
    model_dir = model_file.parent
    assert model_dir.parent.name == "efficientnet_lite0"  # the variant level is the backbone
    info = json.loads((model_dir / "detector.json").read_text())
    assert info["fit_seconds"] > 0
    assert finetune_cli.main(["-p", str(model_file), "-q"]) == 0
    (result,) = model_dir.glob("finetune/*/finetune.json")
    params = json.loads(result.read_text())
    assert params["mode"] == "synthetic" and params["finetune_images"] == []  # the default uses no test image
    assert (result.parent / "synthetic_defects.png").is_file()
    assert test_cli.main(["-p", str(model_dir), "--save", "-q"]) == 0
    metrics = json.loads((model_dir / "test" / result.parent.name / "metrics.json").read_text())
    assert 0.0 <= metrics["image_auroc"] <= 1.0
    saved = np.load(next((model_dir / "test").rglob("*.npy")))
    assert saved.shape == (64, 64) and saved.dtype == np.float32
    if detector == "patchcore":  # one map kind: another is a one-line error
        assert run(finetune_cli.main, ["-p", str(model_file), "-m", "ssim", "-q"]) == 2
    if detector == "cutpaste":  # its own image score, history and plots
        assert params["image_score"] == "detector"
        assert (model_dir / "history.csv").read_text().count("\n") == 3  # header + 2 epochs
        assert (model_dir / "plots" / "synthetic_examples.png").exists() and (model_dir / "plots" / "tsne.png").exists()
        assert params["method"] == "dense"
        # Synthetic finetuning decides with regions over the threshold, not with its own image score.
        assert finetune_cli.main(["-p", str(model_file), "--mode", "synthetic", "-q"]) == 0
        synthetic = json.loads(result.read_text())
        assert synthetic["mode"] == "synthetic" and synthetic["image_score"] == "detector"
        for method in ("patch", "gradcam"):  # the other maps, from the saved model
            assert finetune_cli.main(["-p", str(model_file), "-m", method, "-q"]) == 0
            assert test_cli.main(["-p", str(model_dir), "-m", method, "-q"]) == 0
            metrics = json.loads((model_dir / "test" / f"{method}_float64" / "metrics.json").read_text())
            assert metrics["pixel_auroc"] >= 0
    if detector in ("knn", "kmeans"):
        assert metrics["pixel_auroc"] is None and metrics["aupro_0.3"] is None  # image-level
        assert np.ptp(saved) == 0
    else:
        assert 0.0 <= metrics["pixel_auroc"] <= 1.0 and 0.0 <= metrics["aupro_0.3"] <= 1.0


@pytest.mark.parametrize("neighbourhood", [1, 5])
def test_patchcore_maps_use_the_neighbourhood_it_was_fitted_with(demo_root, neighbourhood):
    """With every patch in the bank, the training images' own maps are zero: the maps average the
    features over the same window as the bank (they once always used 3)."""
    from anomaly.data.io import read_images
    from anomaly.detectors.patchcore import PatchCoreDetector

    images = read_images(sorted((demo_root / "train" / "good").glob("*.png"))[:2], "rgb", (64, 64))
    det = PatchCoreDetector((64, 64, 3), coreset_ratio=1.0, neighbourhood=neighbourhood, map_sigma=0.0).fit(images)
    # float32 distances round to a few hundredths; a mismatched window gave 7 to 13 here
    assert np.abs(det.anomaly_maps(images)).max() < 0.1


def test_patchcore_bank_is_seeded_and_sized_by_the_ratio(demo_root, tmp_path):
    from anomaly.config import load_train_config
    from anomaly.data.io import read_images
    from anomaly.detectors.patchcore import PatchCoreDetector

    config = load_train_config({"data_dir": str(demo_root), "architecture": "patchcore", "input_size": 64,
                                "coreset_ratio": 0.05, "min_bank_size": 10})
    images = read_images(sorted((demo_root / "train" / "good").glob("*.png")), "rgb", (64, 64))
    a = PatchCoreDetector.from_train_config(config).fit(images)
    b = PatchCoreDetector.from_train_config(config).fit(images)
    n_patches = len(images) * 8 * 8  # stride-8 grid of a 64 px image
    assert len(a.memory_bank_) == round(n_patches * 0.05)
    np.testing.assert_array_equal(a.memory_bank_, b.memory_bank_)
    # A ratio that would keep fewer patches than min_bank_size keeps that many (or all).
    config.params["min_bank_size"] = n_patches // 2
    assert len(PatchCoreDetector.from_train_config(config).fit(images).memory_bank_) == n_patches // 2
    config.params["min_bank_size"] = n_patches + 1
    assert len(PatchCoreDetector.from_train_config(config).fit(images).memory_bank_) == n_patches
    # A training image's patches are in (or near) the bank; a flipped one is farther away.
    maps = a.anomaly_maps(np.concatenate([images[:2], images[:2, ::-1, ::-1]]))
    assert maps.shape == (4, 64, 64) and maps[:2].mean() < maps[2:].mean()


def test_patchcore_reweighting_scales_each_map_by_a_weight_below_one(demo_root):
    from anomaly.config import load_train_config
    from anomaly.data.io import read_images
    from anomaly.detectors.patchcore import PatchCoreDetector

    config = load_train_config({"data_dir": str(demo_root), "architecture": "patchcore", "input_size": 64,
                                "coreset_ratio": 0.1})
    images = read_images(sorted((demo_root / "train" / "good").glob("*.png")), "rgb", (64, 64))
    plain = PatchCoreDetector.from_train_config(config).fit(images[:8])
    test = read_images(sorted((demo_root / "test").rglob("*.png"))[:3], "rgb", (64, 64))
    config.params["reweight"] = True
    reweighted = PatchCoreDetector.from_train_config(config)
    reweighted.memory_bank_, reweighted.grid_ = plain.memory_bank_, plain.grid_
    ratio = reweighted.anomaly_maps(test).max(axis=(1, 2)) / plain.anomaly_maps(test).max(axis=(1, 2))
    assert np.all((ratio > 0) & (ratio < 1))


def test_padim_fits_one_gaussian_per_position(demo_root):
    from anomaly.config import load_train_config
    from anomaly.data.io import read_images
    from anomaly.detectors.padim import REGULARISATION, PaDiMDetector

    config = load_train_config({"data_dir": str(demo_root), "architecture": "padim", "input_size": 64,
                                "padim_dims": 20})
    images = read_images(sorted((demo_root / "train" / "good").glob("*.png")), "rgb", (64, 64))
    a = PaDiMDetector.from_train_config(config).fit(images)
    b = PaDiMDetector.from_train_config(config).fit(images)
    assert a.mean_.shape == (8, 8, 20) and a.precision_.shape == (8, 8, 20, 20)  # stride-8 grid of 64 px
    assert a.summary()["bank_size"] == 64 and a.summary()["bank_mb"] == (64 * 20 + 64 * 400) * 4 / 2 ** 20
    np.testing.assert_array_equal(a.channels_, b.channels_)  # seeded channel subset
    np.testing.assert_array_equal(a.precision_, b.precision_)
    # Each precision is the inverse of that position's covariance (+ the regulariser).
    x = a.run_batched(a._selected, images).astype(np.float64)[:, 3, 5]
    cov = np.cov(x, rowvar=False) + REGULARISATION * np.eye(20)
    np.testing.assert_allclose(a.precision_[3, 5] @ cov, np.eye(20), atol=1e-3)
    flipped = images[:4, ::-1, ::-1]
    assert a.anomaly_maps(flipped).mean() > a.anomaly_maps(images[:4]).mean()


def test_fre_pca_keeps_the_asked_variance_and_reconstructs_training_features(demo_root):
    from anomaly.config import load_train_config
    from anomaly.data.io import read_images
    from anomaly.detectors.fre import FREDetector

    config = load_train_config({"data_dir": str(demo_root), "architecture": "fre", "input_size": 64,
                                "pca_variance": 0.9})
    images = read_images(sorted((demo_root / "train" / "good").glob("*.png")), "rgb", (64, 64))
    det = FREDetector.from_train_config(config).fit(images)
    assert 1 <= len(det.components_) < len(images)
    np.testing.assert_allclose(det.components_ @ det.components_.T, np.eye(len(det.components_)), atol=1e-4)
    noise = np.random.default_rng(0).random(images[:4].shape).astype(np.float32)
    assert det.anomaly_maps(images[:4]).mean() < det.anomaly_maps(noise).mean()


def test_feature_detector_bad_options_exit_2(demo_root, tmp_path, capsys):
    for flags, expected in ((["--backbone", "vgg"], "--backbone"), (["--coreset-ratio", "0"], "--coreset-ratio"),
                            (["--layers", "nope"], "--layers"), (["--weights", str(tmp_path / "w.pth")], "--weights")):
        assert run(train_cli.main, train_args(demo_root, tmp_path / "out", "-a", "patchcore", *flags)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0]
        assert not (tmp_path / "out").exists()  # nothing is written for a bad option


def test_cutpaste_training_is_seeded_and_learns_the_pretext_task(demo_root):
    from anomaly.config import load_train_config
    from anomaly.data.io import read_images
    from anomaly.detectors.cutpaste import CutPasteDetector

    config = load_train_config({"data_dir": str(demo_root), "architecture": "cutpaste", "input_size": 64,
                                "epochs": 4, "batch_size": 8})
    images = read_images(sorted((demo_root / "train" / "good").glob("*.png")), "rgb", (64, 64))
    a = CutPasteDetector.from_train_config(config).fit(images, progress=False)
    b = CutPasteDetector.from_train_config(config).fit(images, progress=False)
    assert a.epochs == (2, 2) and len(a.history_) == 4
    assert [h["loss"] for h in a.history_] == [h["loss"] for h in b.history_]  # same seed, same run
    np.testing.assert_array_equal(a.image_mean_, b.image_mean_)
    scores = a.image_scores(images)
    assert scores.shape == (len(images),) and np.all(scores >= 0)
    for method in ("patch", "dense", "gradcam"):
        maps = a.anomaly_maps(images[:2], method)
        assert maps.shape == (2, 64, 64) and np.isfinite(maps).all() and maps.min() >= 0, method
    # A flipped image is farther from the training images' local features than they are.
    flipped = images[:4, ::-1, ::-1]
    assert a.anomaly_maps(flipped, "dense").mean() > a.anomaly_maps(images[:4], "dense").mean()


def test_kmeans_clusters_a_trained_autoencoders_bottleneck(trained, demo_root, tmp_path, capsys):
    """Seed 001's variant: KMeans on a CAE's flattened code; the model directory keeps its own encoder copy."""
    import shutil

    (cae_file,) = trained.rglob("*.keras")
    cae_copy = tmp_path / "cae.keras"  # deleted below: the kmeans model must not need it
    shutil.copy(cae_file, cae_copy)
    out = tmp_path / "models"
    assert train_cli.main(train_args(demo_root, out, "-a", "kmeans", "--features-from", str(cae_copy),
                                      "-c", "grayscale")) == 0
    (model_file,) = out.rglob("kmeans.npz")
    model_dir = model_file.parent
    assert model_dir.parent.name == "bottleneck" and (model_dir / "encoder.keras").is_file()
    latent = tf.keras.models.load_model(cae_copy, compile=False).get_layer("latent").output.shape
    assert json.loads((model_dir / "detector.json").read_text())["feature_dim"] == np.prod(latent[1:])
    cae_copy.unlink()
    assert finetune_cli.main(["-p", str(model_file), "-q"]) == 0
    assert test_cli.main(["-p", str(model_dir), "-q"]) == 0
    metrics = json.loads((model_dir / "test" / "kmeans_float64" / "metrics.json").read_text())
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and metrics["pixel_auroc"] is None
    capsys.readouterr()
    (model_dir / "encoder.keras").rename(tmp_path / "moved.keras")
    assert run(test_cli.main, ["-p", str(model_dir), "-q"]) == 2
    assert "encoder.keras is missing" in capsys.readouterr().err

    # The grayscale autoencoder cannot read kmeans' default RGB images: a one-line error, nothing written.
    assert run(train_cli.main, train_args(demo_root, tmp_path / "rgb", "-a", "kmeans", "--features-from",
                                          str(cae_file))) == 2
    assert "--features-from" in capsys.readouterr().err and not (tmp_path / "rgb").exists()
    assert run(train_cli.main, train_args(demo_root, tmp_path / "p", "-a", "patchcore", "--features-from",
                                          str(cae_file))) == 2
