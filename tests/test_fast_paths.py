"""Reformulations for CPUs without TensorFlow's oneDNN kernels (docs/speed.md) compute what they replace."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from anomaly.models.layers import UpsampleConv2D, _block_factor, fused_upsample_conv


def _upsample_then_conv(x, kernel, scale, strides):
    return tf.nn.conv2d(keras.layers.UpSampling2D(scale)(x), kernel, strides, "SAME")


@pytest.mark.parametrize("block", [1, 2, 4])
@pytest.mark.parametrize("scale,kernel,strides", [
    (2, 8, 1),  # mvtecCAE's output layer and dec_conv9
    (2, 3, 1),
    (2, 4, 2),
    (4, 4, 2),
    (4, 8, 2),
    (1, 3, 1),  # a plain 'same' conv
])
def test_blocked_fused_conv_equals_upsampling_then_conv(block, scale, kernel, strides):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((2, 8, 12, 3)), tf.float32)
    k = tf.constant(rng.normal(size=(kernel, kernel, 3, 2)), tf.float32)
    expected = _upsample_then_conv(x, k, scale, strides).numpy()
    got = fused_upsample_conv(x, k, scale, strides, block).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_blocks_only_for_narrow_convs_of_even_inputs():
    assert _block_factor(128, 128, 4) == 2     # mvtecCAE grayscale output: 2 x 2 phases x 1 filter
    assert _block_factor(128, 128, 12) == 1    # RGB output: oneDNN is faster without blocks
    assert _block_factor(64, 64, 128) == 1
    assert _block_factor(7, 8, 4) == 1
    assert _block_factor(None, 8, 4) == 1


def test_one_filter_layer_keeps_the_unblocked_values_and_gradients():
    """The blocked output layer (1 filter) against the formulation it replaced (block 1), with gradients."""
    rng = np.random.default_rng(1)
    layer = UpsampleConv2D(1, 8, scale=2, activation="sigmoid")
    x = tf.constant(rng.random((2, 16, 16, 4)), tf.float32)
    layer.build(x.shape)
    layer.bias.assign([0.3])
    target = tf.constant(rng.random((2, 32, 32, 1)), tf.float32)

    def loss_and_grads(fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_mean(tf.square(fn(x) - target))
        return [loss.numpy()] + [g.numpy() for g in tape.gradient(loss, [x, layer.kernel, layer.bias])]

    def unblocked(t):
        return tf.sigmoid(tf.nn.bias_add(fused_upsample_conv(t, layer.kernel, 2, 1, block=1), layer.bias))

    for new, old in zip(loss_and_grads(layer), loss_and_grads(unblocked)):
        np.testing.assert_allclose(new, old, rtol=1e-5, atol=1e-6)


def test_blocked_layer_saves_and_loads(tmp_path):
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, UpsampleConv2D(1, 8, scale=2, name="out")(inp))
    assert [w.shape for w in model.weights] == [(8, 8, 3, 1), (1,)]  # the Conv2D's weights, unchanged
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    x = np.random.default_rng(2).random((1, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def test_padim_mahalanobis_equals_the_einsum():
    """PaDiM's batched-matmul Mahalanobis map against the three-operand einsum it replaced."""
    from anomaly.detectors.padim import PaDiMDetector

    rng = np.random.default_rng(3)
    n, h, w, d = 3, 4, 5, 6
    det = PaDiMDetector(input_shape=(h, w, 3), map_sigma=0.0)  # no smoothing, map at the grid's size
    a = rng.normal(size=(h, w, d, d))
    det.mean_ = rng.normal(size=(h, w, d)).astype(np.float32)
    det.precision_ = (np.einsum("hwij,hwkj->hwik", a, a) + np.eye(d)).astype(np.float32)
    features = rng.normal(size=(n, h, w, d)).astype(np.float32)
    det._selected = lambda x: x  # the features themselves instead of a backbone's
    centred = features - det.mean_
    expected = np.sqrt(np.einsum("nhwi,hwij,nhwj->nhw", centred, det.precision_.astype(np.float64), centred))
    got = det._maps(tf.constant(features)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def _nearest_in_one_product(queries, bank_aug, k):
    """PatchCore's search as it was: one product with the whole bank."""
    scores = tf.matmul(tf.concat([queries, tf.ones_like(queries[:, :1])], axis=1), bank_aug, transpose_b=True)
    best, idx = tf.math.top_k(scores, k)
    return tf.sqrt(tf.maximum(tf.reduce_sum(queries * queries, axis=1, keepdims=True) - 2.0 * best, 0.0)), idx


@pytest.mark.parametrize("rows", [10, 2048, 2049, 3077])  # one product; chunks, the last of 1 and 5 rows
@pytest.mark.parametrize("k", [1, 9])
def test_chunked_nearest_search_equals_one_product(rows, k):
    from anomaly.detectors.patchcore import augmented_bank, nearest_distances

    rng = np.random.default_rng(rows)
    bank = (rng.standard_normal((rows, 16)) ** 2).astype(np.float32)
    queries = tf.constant(rng.standard_normal((300, 16)) ** 2, tf.float32)
    aug = tf.constant(augmented_bank(bank))
    dist, idx = nearest_distances(queries, aug, k)
    ref_dist, ref_idx = _nearest_in_one_product(queries, aug, k)
    assert dist.shape == (300, k) and idx.dtype == tf.int32
    np.testing.assert_allclose(dist.numpy(), ref_dist.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(idx.numpy(), ref_idx.numpy())
    exact = np.sqrt(((queries.numpy()[:, None].astype(np.float64) - bank[idx.numpy()]) ** 2).sum(-1))
    np.testing.assert_allclose(dist.numpy(), exact, rtol=1e-4, atol=1e-4)


def _full_map_by_convolution(grid, size, sigma):
    """The former to_full_map: bilinear resize, symmetric padding, two 1-channel convolutions."""
    from anomaly.detectors.features import gaussian_kernel

    x = tf.image.resize(grid[..., None], size, method="bilinear")
    if sigma > 0:
        k = tf.constant(gaussian_kernel(sigma))
        r = (k.shape[0] - 1) // 2
        x = tf.pad(x, [[0, 0], [r, r], [r, r], [0, 0]], mode="SYMMETRIC")
        x = tf.nn.conv2d(x, tf.reshape(k, (-1, 1, 1, 1)), 1, "VALID")
        x = tf.nn.conv2d(x, tf.reshape(k, (1, -1, 1, 1)), 1, "VALID")
    return x[..., 0]


@pytest.mark.parametrize("h, w, size, sigma", [(32, 32, (256, 256), 4.0), (16, 8, (640, 128), 4.0),
                                               (32, 32, (256, 256), 0.0), (7, 9, (64, 64), 2.0)])
def test_full_map_as_matrix_products_equals_resize_and_blur(h, w, size, sigma):
    from anomaly.detectors.features import to_full_map

    grid = tf.constant(np.random.default_rng(0).random((3, h, w)).astype(np.float32) * 5)
    np.testing.assert_allclose(to_full_map(grid, size, sigma).numpy(), _full_map_by_convolution(grid, size, sigma),
                               rtol=0, atol=5e-6)
