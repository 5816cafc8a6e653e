"""The detector contract, checked for every registered detector (like scikit-learn's check_estimator)."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly.detectors import Detector, detector_class, list_detectors

# Small, fast settings per detector; random backbone weights keep the tests offline and quick.
_FAST_AE = {"epochs": 1, "lr": 1e-3, "batch_size": 8}
_FEATURES = {"input_shape": (64, 64, 3), "weights": "random"}
SETTINGS = {
    "pixel-gaussian": {"input_shape": (64, 64, 1)},
    "patchcore": {**_FEATURES, "coreset_ratio": 0.1},
    "padim": {**_FEATURES, "dims": 16},
    "fre": _FEATURES,
    "fre-tae": {**_FEATURES, "epochs": 2},
    "knn": {**_FEATURES, "k": 3},
    "kmeans": _FEATURES,
    "feature-ae": {**_FEATURES, "epochs": 1, "latent_dim": 8},
    "cutpaste": {**_FEATURES, "epochs": (1, 1), "batch_size": 8},
}


def settings(name: str) -> dict:
    if detector_class(name).family == "autoencoder":
        return {"input_shape": (64, 64, 1), **_FAST_AE}
    return SETTINGS[name]


@pytest.fixture(scope="module")
def images(demo_root):
    from anomaly.data.io import read_images

    paths = sorted((demo_root / "train" / "good").glob("*.png"))[:10]
    return read_images(paths, "rgb", (64, 64))


def test_every_detector_is_registered_with_its_class_attributes():
    names = list_detectors()
    assert names[:5] == ["mvtecCAE", "baselineCAE", "inceptionCAE", "resnetCAE", "skipCAE"]
    assert {"pixel-gaussian", "patchcore", "padim", "fre", "fre-tae", "knn", "kmeans", "feature-ae",
            "cutpaste"} <= set(names)
    for name in names:
        cls = detector_class(name)
        assert cls.name == name and issubclass(cls, Detector) and cls.methods
        assert cls.family in ("autoencoder", "baseline", "features")
        assert isinstance(cls.pixel_level, bool) and isinstance(cls.trains_epochs, bool)
        assert cls.finetune_defaults["method"] in cls.methods
    assert detector_class("cutpaste").trains_epochs and not detector_class("patchcore").trains_epochs
    assert not detector_class("knn").pixel_level


@pytest.mark.parametrize("name", list_detectors())
def test_config_round_trip(name):
    cls = detector_class(name)
    detector = cls(**settings(name))
    config = detector.get_config()
    assert cls.from_config(config).get_config() == config
    with pytest.raises(Exception, match="not a hyper-parameter"):
        cls.from_config({**config, "no_such_option": 1})


@pytest.mark.parametrize("name", list_detectors())
def test_fit_save_load_gives_identical_maps_and_scores(name, images, tmp_path):
    cls = detector_class(name)
    gray = cls(**settings(name)).input_shape[-1] == 1
    train = images.mean(axis=-1, keepdims=True) if gray else images
    detector = cls(**settings(name))
    assert detector.fit(train[:8], train[8:]) is detector
    test = train[:3]
    maps, scores = detector.anomaly_maps(test), detector.image_scores(test)
    assert maps.shape == (3, 64, 64) and maps.dtype == np.float32 and scores.shape == (3,)

    detector.save(tmp_path)
    loaded = Detector.load(tmp_path)
    assert type(loaded) is cls and loaded.get_config() == detector.get_config()
    np.testing.assert_array_equal(loaded.anomaly_maps(test), maps)
    np.testing.assert_array_equal(loaded.image_scores(test), scores)

    # Any size and colour: uint8 RGB images of another shape are converted and resized.
    other = (np.random.default_rng(0).random((2, 80, 96, 3)) * 255).astype(np.uint8)
    assert loaded.anomaly_maps(other).shape == (2, 64, 64)
