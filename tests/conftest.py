"""Shared fixtures: a tiny demo dataset and a model trained on it once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A 64 px brick dataset: 16 train, 4 good + 3x2 defective test images with masks."""
    from anomaly.data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("data"), texture="brick", n_train=16,
                             n_test_good=4, n_test_defect=2, size=64, seed=1)


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    """anomaly-train flags for a fast run on 64 px images (a fixed learning rate for an
    autoencoder: the others have no such option)."""
    from anomaly.detectors import is_autoencoder

    architecture = extra[extra.index("-a") + 1] if "-a" in extra else "mvtecCAE"
    lr = ["--lr", "1e-3"] if is_autoencoder(architecture) else []
    return ["-d", str(data), "-o", str(out), "--input-size", "64", "-e", "2", *lr, "-b", "8", "-q", *extra]


@pytest.fixture(scope="session")
def trained(demo_root, tmp_path_factory) -> Path:
    """Directory of a mvtecCAE trained for 2 epochs on the demo data (shared, do not modify)."""
    from anomaly.cli import train

    out = tmp_path_factory.mktemp("models")
    assert train.main(train_args(demo_root, out)) == 0
    (model_dir,) = [p.parent for p in out.rglob("*.keras")]
    return model_dir


@pytest.fixture(scope="session")
def patchcore_dir(demo_root, tmp_path_factory) -> Path:
    """A finetuned patchcore (random backbone weights: fast and offline) on the demo data, made once
    per session (copy it to change it; `anomaly-test` results may be written into it)."""
    from anomaly.cli import finetune, train

    out = tmp_path_factory.mktemp("patchcore-models")
    assert train.main(train_args(demo_root, out, "-a", "patchcore", "--weights", "random")) == 0
    (model_dir,) = [p.parent for p in out.rglob("config.yaml")]
    assert finetune.main(["-p", str(model_dir), "-q"]) == 0
    return model_dir
