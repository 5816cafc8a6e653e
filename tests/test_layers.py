"""UpsampleConv2D must compute exactly Conv2D(UpSampling2D(x)) with the same weights."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from anomaly.models.layers import UpsampleConv2D


@pytest.mark.parametrize("scale,kernel,strides,c_in,c_out", [
    (2, 8, 1, 8, 4),   # mvtecCAE dec_conv9 / output
    (2, 3, 1, 4, 3),   # dec_conv4, dec_conv6
    (2, 4, 2, 4, 5),   # dec_conv3, 5, 7
    (4, 4, 2, 3, 2),   # dec_conv8
    (4, 3, 1, 2, 2),
    (4, 8, 2, 2, 3),
])
def test_fused_equals_upsampling_then_conv(scale, kernel, strides, c_in, c_out):
    rng = np.random.default_rng(0)
    x = rng.random((2, 6, 8, c_in)).astype("float32")
    conv = keras.layers.Conv2D(c_out, kernel, strides=strides, padding="same", activation="relu")
    conv(keras.layers.UpSampling2D(scale)(x))
    conv.bias.assign(rng.normal(size=c_out).astype("float32"))
    fused = UpsampleConv2D(c_out, kernel, scale=scale, strides=strides, activation="relu")
    fused.build(x.shape)
    fused.kernel.assign(conv.kernel)
    fused.bias.assign(conv.bias)
    expected = np.asarray(conv(keras.layers.UpSampling2D(scale)(x)))
    got = np.asarray(fused(x))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_same_parameters_as_the_conv_and_saves(tmp_path):
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, UpsampleConv2D(4, 8, scale=2, name="up")(inp))
    assert model.count_params() == 8 * 8 * 3 * 4 + 4
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    x = np.random.default_rng(1).random((1, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def test_scale_must_be_a_multiple_of_strides():
    with pytest.raises(ValueError, match="multiple"):
        UpsampleConv2D(4, 3, scale=2, strides=4)
