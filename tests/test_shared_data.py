"""The real photographed datasets in ../shared/data (skipped when that folder is absent)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomaly.data.dataset import find_dataset
from anomaly.data.io import read_images, read_mask
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent")

DATASETS = {  # folder: (train/good, test good, test defective)
    "mvtec_ad/bottle": (209, 20, 63),
    "kolektorsdd/kolektorsdd": (279, 69, 52),
    "aws_l4v_cookie/cookie": (31, 14, 32),
}


@pytest.mark.parametrize("folder", DATASETS)
def test_real_datasets_are_indexed_with_their_masks(folder):
    ds = find_dataset(SHARED_DATA / folder)
    n_train, n_good, n_bad = DATASETS[folder]
    assert len(ds.train) == n_train
    assert sum(s.label == 0 for s in ds.test) == n_good
    assert sum(s.label == 1 for s in ds.test) == n_bad
    assert ds.has_masks and all(s.mask_path is not None for s in ds.test if s.label == 1)
    defect = next(s for s in ds.test if s.label == 1)
    mask = read_mask(defect.mask_path, defect.path, (128, 128))
    assert mask.dtype == bool and 0 < mask.sum() < mask.size
    rgb = read_images([defect.path], "rgb", (64, 64))
    gray = read_images([defect.path], "grayscale", (64, 64))
    assert rgb.shape == (1, 64, 64, 3) and gray.shape == (1, 64, 64, 1)
    assert 0.0 <= rgb.min() and rgb.max() <= 1.0 and rgb.std() > 0.01


def test_bottle_end_to_end_small(tmp_path):
    """Train briefly on real photographs, finetune, test: the metrics are computed from real masks."""
    from anomaly.cli import finetune, test, train

    assert train.main(["-d", str(SHARED_DATA / "mvtec_ad" / "bottle"), "-o", str(tmp_path), "--input-size", "64",
                       "-e", "1", "--lr", "1e-3", "-q"]) == 0
    (model_file,) = tmp_path.rglob("*.keras")
    assert model_file.parent.relative_to(tmp_path).parts[:4] == ("mvtec_ad", "bottle", "mvtecCAE", "ssim")
    assert finetune.main(["-p", str(model_file), "-q"]) == 0
    assert test.main(["-p", str(model_file), "-q"]) == 0
    # the defaults: synthetic defects, multi-scale SSIM maps smoothed, not z-scored
    metrics = json.loads((model_file.parent / "test" / "mssim_float64" / "metrics.json").read_text())
    assert metrics["mode"] == "synthetic" and metrics["normalize"] is False and metrics["smooth"] == 4.0
    assert metrics["n_images"] + metrics["n_excluded_finetune"] == 83
    for key in ("image_auroc", "pixel_auroc", "aupro_0.3"):
        assert 0.0 <= metrics[key] <= 1.0
    assert np.isfinite(metrics["images_per_second"])


def test_patchcore_finds_and_outlines_bottle_defects(tmp_path, monkeypatch):
    """ImageNet features on real photographs: PatchCore separates bottle defects almost perfectly."""
    from anomaly.cli import finetune, test, train

    monkeypatch.setenv("ANOMALY_CACHE_DIR", str(tmp_path / "cache"))
    assert train.main(["-d", str(SHARED_DATA / "mvtec_ad" / "bottle"), "-o", str(tmp_path), "-a", "patchcore",
                       "--input-size", "128", "-q"]) == 0
    (model_file,) = tmp_path.rglob("patchcore.npz")
    assert model_file.parent.relative_to(tmp_path).parts[:4] == ("mvtec_ad", "bottle", "patchcore",
                                                                 "efficientnet_lite0")
    assert finetune.main(["-p", str(model_file), "-q"]) == 0
    assert test.main(["-p", str(model_file), "-q"]) == 0
    metrics = json.loads((model_file.parent / "test" / "nn_float64" / "metrics.json").read_text())
    assert metrics["image_auroc"] >= 0.97 and metrics["pixel_auroc"] >= 0.95, metrics
    assert metrics["balanced_accuracy"] >= 0.85, metrics  # the default (synthetic) threshold works on real data
