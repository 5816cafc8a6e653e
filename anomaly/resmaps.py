"""Residual maps between inputs and reconstructions, computed in batches with TensorFlow.

`ssim`: 1 - the local SSIM map (Gaussian 11x11 window, sigma 1.5, reflect padding, sample
covariance as scikit-image's `structural_similarity`), with data range 1.0 for [0, 1] images.
The original called scikit-image without `data_range`, which then used 2.0 for floats and made
the stabilising constants four times too large; 1.0 is the correct range for [0, 1] pixels.
Values are clipped to [0, 1]: SSIM below 0 already means "nothing in common".

`l2`: squared difference per pixel.

Colour images get the per-channel map averaged over channels (the original converted RGB to
grey first and lost colour-only defects). The `uint8` dtype quantises maps to 0..255 as the
original's `img_as_ubyte` did.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from anomaly.errors import AnomalyError

METHODS = ("ssim", "l2")
DTYPES = ("float64", "uint8")

# (start, step) of the threshold grid searched by finetuning, per dtype and method.
THRESHOLD_GRID = {
    ("float64", "ssim"): (0.10, 0.002),
    ("float64", "l2"): (0.005, 0.0005),
    ("uint8", "ssim"): (20.0, 1.0),
    ("uint8", "l2"): (5.0, 1.0),
}

_WIN, _SIGMA, _K1, _K2, _RANGE = 11, 1.5, 0.01, 0.03, 1.0


def check_method(method: str, dtype: str) -> None:
    """Raise a one-line error for an unknown residual-map method or dtype."""
    if method not in METHODS:
        raise AnomalyError(f"--method: unknown residual map '{method}': expected one of {', '.join(METHODS)}")
    if dtype not in DTYPES:
        raise AnomalyError(f"--dtype: unknown dtype '{dtype}': expected one of {', '.join(DTYPES)}")


def _gaussian_kernel(channels: int) -> tf.Tensor:
    x = np.arange(_WIN, dtype=np.float64) - (_WIN - 1) / 2
    g = np.exp(-(x ** 2) / (2 * _SIGMA ** 2))
    g /= g.sum()
    k = np.outer(g, g)[:, :, None, None]
    return tf.constant(np.tile(k, (1, 1, channels, 1)), dtype=tf.float32)


def _filter(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    pad = _WIN // 2
    x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="SYMMETRIC")
    return tf.nn.depthwise_conv2d(x, kernel, strides=[1, 1, 1, 1], padding="VALID")


@tf.function  # one trace per input shape: the kernel is built for the static channel count
def ssim_map(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Local SSIM of two (N, H, W, C) batches in [0, 1], averaged over channels: (N, H, W)."""
    x = tf.cast(x, tf.float32)
    y = tf.cast(y, tf.float32)
    kernel = _gaussian_kernel(x.shape[-1])
    mu_x, mu_y = _filter(x, kernel), _filter(y, kernel)
    cov_norm = _WIN ** 2 / (_WIN ** 2 - 1)
    vx = cov_norm * (_filter(x * x, kernel) - mu_x * mu_x)
    vy = cov_norm * (_filter(y * y, kernel) - mu_y * mu_y)
    vxy = cov_norm * (_filter(x * y, kernel) - mu_x * mu_y)
    c1, c2 = (_K1 * _RANGE) ** 2, (_K2 * _RANGE) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * vxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (vx + vy + c2))
    return tf.reduce_mean(s, axis=-1)


@tf.function
def _l2_map(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    d = tf.cast(x, tf.float32) - tf.cast(y, tf.float32)
    return tf.reduce_mean(d * d, axis=-1)


def residual_maps(inputs, reconstructions, method: str = "ssim", dtype: str = "float64") -> np.ndarray:
    """Residual maps of a batch.

    Args:
        inputs: (N, H, W, C) images in [0, 1].
        reconstructions: (N, H, W, C) model outputs in [0, 1].
        method: "ssim" or "l2".
        dtype: "float64" (maps in [0, 1]) or "uint8" (maps quantised to 0..255).

    Returns:
        float32 array (N, H, W); higher means more anomalous.
    """
    check_method(method, dtype)
    if method == "ssim":
        maps = tf.clip_by_value(1.0 - ssim_map(inputs, reconstructions), 0.0, 1.0)
    else:
        maps = _l2_map(inputs, reconstructions)
    maps = maps.numpy().astype(np.float32)
    if dtype == "uint8":
        maps = np.round(np.clip(maps, 0.0, 1.0) * 255.0)
    return maps
