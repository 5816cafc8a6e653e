"""Tests for the autoencoder architectures (spec section 3)."""

import keras
import numpy as np
import pytest

from anomaly.errors import AnomalyError
from anomaly.models import ARCHITECTURES, build_model, list_architectures

NAMES = ["mvtecCAE", "baselineCAE", "inceptionCAE", "resnetCAE", "skipCAE"]

# Spec section 3, at 256x256: (grayscale total, grayscale non-trainable, RGB total).
SPEC_PARAMS = {
    "mvtecCAE": (746_210, 0, 751_332),
    "baselineCAE": (712_197, 1_794, 713_359),
    "inceptionCAE": (11_521_797, 7_170, 11_526_415),
    "resnetCAE": (15_018_305, 8_320, 15_026_627),
    "skipCAE": (2_967_041, 384, 2_968_195),
}

# Shape of the "latent" layer's output at 256x256 (batch axis left out).
SPEC_LATENT = {
    "mvtecCAE": (8, 8, 1),
    "baselineCAE": (64,),
    "inceptionCAE": (4, 4, 512),
    "resnetCAE": (8, 8, 512),
    "skipCAE": (64,),
}

# The same at 64x64: the convolutional latents shrink, the dense ones stay 64-d.
SMALL_LATENT = {
    "mvtecCAE": (2, 2, 1),
    "baselineCAE": (64,),
    "inceptionCAE": (1, 1, 512),
    "resnetCAE": (2, 2, 512),
    "skipCAE": (64,),
}


@pytest.fixture(autouse=True)
def _clear_session():
    keras.backend.clear_session()
    yield
    keras.backend.clear_session()


def _count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def test_registry_names():
    assert list(ARCHITECTURES) == NAMES
    assert list_architectures() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_grayscale_256_matches_spec(name):
    total, non_trainable, _ = SPEC_PARAMS[name]
    model = build_model(name, (256, 256, 1))
    assert model.name == name
    assert model.count_params() == total
    assert _count(model.non_trainable_weights) == non_trainable
    assert _count(model.trainable_weights) == total - non_trainable
    assert tuple(model.output.shape) == (None, 256, 256, 1)
    assert tuple(model.get_layer("latent").output.shape[1:]) == SPEC_LATENT[name]


@pytest.mark.parametrize("name", NAMES)
def test_rgb_256_matches_spec(name):
    _, _, total = SPEC_PARAMS[name]
    model = build_model(name, (256, 256, 3))
    assert model.count_params() == total
    assert tuple(model.output.shape) == (None, 256, 256, 3)
    assert tuple(model.get_layer("latent").output.shape[1:]) == SPEC_LATENT[name]


@pytest.mark.parametrize("name", NAMES)
def test_small_input_layers_and_latent(name):
    model = build_model(name, (64, 64, 1))
    assert tuple(model.get_layer("latent").output.shape[1:]) == SMALL_LATENT[name]
    layer_names = [layer.name for layer in model.layers]
    assert len(layer_names) == len(set(layer_names))
    assert "latent" in layer_names
    assert model.layers[-1].name == "output"
    assert model.output.dtype == "float32"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("input_shape", [(64, 64, 1), (128, 64, 3)])
def test_small_inputs_run_in_unit_range(name, input_shape):
    model = build_model(name, input_shape)
    images = np.random.default_rng(0).random((2, *input_shape), dtype=np.float32)
    reconstructions = np.asarray(model(images, training=False))
    assert reconstructions.shape == (2, *input_shape)
    assert np.all(np.isfinite(reconstructions))
    assert reconstructions.min() >= 0.0
    assert reconstructions.max() <= 1.0
    latent_model = keras.Model(model.input, model.get_layer("latent").output)
    assert latent_model(images).shape[0] == 2


def test_baseline_small_input_reshape_keeps_64d_latent():
    model = build_model("baselineCAE", (64, 64, 1))
    assert tuple(model.get_layer("reshape").output.shape[1:]) == (1, 1, 64)
    model = build_model("baselineCAE", (256, 256, 1))
    assert tuple(model.get_layer("reshape").output.shape[1:]) == (4, 4, 4)


@pytest.mark.parametrize("name", NAMES)
def test_mixed_bfloat16_output_is_float32(name):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_model(name, (64, 64, 1))
        outputs = model(np.full((1, 64, 64, 1), 0.5, dtype=np.float32))
        assert outputs.dtype == "float32"
        assert model.get_layer("latent").compute_dtype == "bfloat16"
    finally:
        keras.config.set_dtype_policy(previous)


def test_unknown_architecture_raises():
    with pytest.raises(AnomalyError) as info:
        build_model("foo", (256, 256, 1))
    message = str(info.value)
    assert "\n" not in message
    assert "unknown architecture 'foo'" in message
    for name in NAMES:
        assert name in message


@pytest.mark.parametrize(
    "name, input_shape",
    [
        ("mvtecCAE", (100, 100, 1)),
        ("baselineCAE", (96, 96, 1)),
        ("baselineCAE", (1024, 1024, 1)),  # 16x16 map cannot hold 64 values
        ("inceptionCAE", (32, 32, 1)),
        ("resnetCAE", (48, 48, 3)),
        ("skipCAE", (96, 96, 1)),
        ("mvtecCAE", (64, 64, 2)),
        ("skipCAE", (64, 64)),
    ],
)
def test_bad_input_shape(name, input_shape):
    with pytest.raises(ValueError, match=name):
        ARCHITECTURES[name](input_shape=input_shape)
    with pytest.raises(AnomalyError):
        build_model(name, input_shape)
