"""Residual maps between inputs and reconstructions, computed in batches with TensorFlow.

`ssim`: 1 - the local SSIM map (Gaussian 11x11 window, sigma 1.5, reflect padding, sample
covariance as scikit-image's `structural_similarity`), with data range 1.0 for [0, 1] images.
The original called scikit-image without `data_range`, which then used 2.0 for floats and made
the stabilising constants four times too large; 1.0 is the correct range for [0, 1] pixels.
Values are clipped to [0, 1]: SSIM below 0 already means "nothing in common".

`mssim`: multi-scale SSIM residual: (1 - SSIM) / 2 on the pair downsampled (box mean) by 2, 4
and 8, upsampled bilinearly to full size and averaged; in [0, 1]. Unlike `ssim` it is not
clipped: at coarse scales a negative SSIM (inverted structure, e.g. a dark spot where the model
puts a bright one) is a strong signal, and clipping it lowered cookie's image AUROC from 0.97 to
0.88. The full-resolution scale
is left out on purpose: an autoencoder's blur of fine texture and specular edges is there on
every image and drowns the defects (measured on bottle, cookie and KolektorSDD in
docs/results.md); at coarser scales a defect is a change of structure the model cannot
reproduce. Scales that would leave the image smaller than the 11-pixel window are skipped.

`l2`: squared difference per pixel.

Colour images get the per-channel map averaged over channels (the original converted RGB to
grey first and lost colour-only defects). The `uint8` dtype quantises maps to 0..255 as the
original's `img_as_ubyte` did.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from anomaly.errors import AnomalyError

METHODS = ("ssim", "mssim", "l2")
MSSIM_SCALES = (2, 4, 8)
DTYPES = ("float64", "uint8")

# (start, step) of the threshold grid searched by finetuning, per dtype and method.
THRESHOLD_GRID = {
    ("float64", "ssim"): (0.10, 0.002),
    ("float64", "l2"): (0.005, 0.0005),
    ("uint8", "ssim"): (20.0, 1.0),
    ("uint8", "l2"): (5.0, 1.0),
}

_WIN, _SIGMA, _K1, _K2, _RANGE = 11, 1.5, 0.01, 0.03, 1.0


def check_method(method: str, dtype: str, methods: tuple[str, ...] = METHODS) -> None:
    """Raise a one-line error for an unknown residual-map method or dtype."""
    if method not in methods:
        raise AnomalyError(f"--method: unknown map '{method}': expected one of {', '.join(methods)}")
    if dtype not in DTYPES:
        raise AnomalyError(f"--dtype: unknown dtype '{dtype}': expected one of {', '.join(DTYPES)}")


def gaussian_taps() -> np.ndarray:
    """The 11 taps (sigma 1.5, summing to 1) of the separable SSIM window."""
    x = np.arange(_WIN, dtype=np.float64) - (_WIN - 1) / 2
    g = np.exp(-(x ** 2) / (2 * _SIGMA ** 2))
    return (g / g.sum()).astype(np.float32)


def _filter(x: tf.Tensor) -> tf.Tensor:
    """Gaussian window mean of every channel, with scikit-image's reflect padding.

    The 2-D Gaussian is separable: two 11-tap passes instead of one 121-tap pass.
    """
    pad = _WIN // 2
    channels = x.shape[-1]
    g = tf.constant(gaussian_taps())
    rows = tf.tile(tf.reshape(g, (_WIN, 1, 1, 1)), (1, 1, channels, 1))
    cols = tf.tile(tf.reshape(g, (1, _WIN, 1, 1)), (1, 1, channels, 1))
    x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="SYMMETRIC")
    x = tf.nn.depthwise_conv2d(x, rows, strides=[1, 1, 1, 1], padding="VALID")
    return tf.nn.depthwise_conv2d(x, cols, strides=[1, 1, 1, 1], padding="VALID")


# The element-wise parts are compiled with XLA, which fuses them into a few loops (2x faster
# on CPU); the filtering stays with TensorFlow's kernels, which XLA does not beat on CPU.
@tf.function(jit_compile=True)
def _moments_input(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    return tf.concat([x, y, x * x, y * y, x * y], axis=-1)


@tf.function(jit_compile=True)
def _ssim_from_moments(moments: tf.Tensor) -> tf.Tensor:
    mu_x, mu_y, xx, yy, xy = tf.split(moments, 5, axis=-1)
    cov_norm = _WIN ** 2 / (_WIN ** 2 - 1)
    vx = cov_norm * (xx - mu_x * mu_x)
    vy = cov_norm * (yy - mu_y * mu_y)
    vxy = cov_norm * (xy - mu_x * mu_y)
    c1, c2 = (_K1 * _RANGE) ** 2, (_K2 * _RANGE) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * vxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (vx + vy + c2))
    return tf.reduce_mean(s, axis=-1)


@tf.function  # one trace per input shape: the kernels are built for the static channel count
def ssim_map(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Local SSIM of two (N, H, W, C) batches in [0, 1], averaged over channels: (N, H, W)."""
    # All five local moments in one filtering pass.
    moments = _filter(_moments_input(tf.cast(x, tf.float32), tf.cast(y, tf.float32)))
    return _ssim_from_moments(moments)


def mssim_scales(size: int) -> tuple[int, ...]:
    """The `mssim` downsampling factors used for square images of `size` pixels."""
    return tuple(f for f in MSSIM_SCALES if size // f >= _WIN) or (1,)


@tf.function  # one trace per input shape
def ms_ssim_residual(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Multi-scale SSIM residual (`mssim`) of two (N, H, W, C) batches in [0, 1]: (N, H, W)."""
    x, y = tf.cast(x, tf.float32), tf.cast(y, tf.float32)
    size = x.shape[1:3]
    total = 0.0
    scales = mssim_scales(min(size))
    for factor in scales:
        xs = tf.nn.avg_pool2d(x, factor, factor, "VALID")
        ys = tf.nn.avg_pool2d(y, factor, factor, "VALID")
        residual = (1.0 - ssim_map(xs, ys)) / 2.0
        total += tf.image.resize(residual[..., None], size, "bilinear")[..., 0]
    return total / len(scales)


@tf.function
def _l2_map(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    d = tf.cast(x, tf.float32) - tf.cast(y, tf.float32)
    return tf.reduce_mean(d * d, axis=-1)


def residual_maps(inputs, reconstructions, method: str = "ssim", dtype: str = "float64") -> np.ndarray:
    """Residual maps of a batch.

    Args:
        inputs: (N, H, W, C) images in [0, 1].
        reconstructions: (N, H, W, C) model outputs in [0, 1].
        method: "ssim", "mssim" or "l2".
        dtype: "float64" (maps in [0, 1]) or "uint8" (maps quantised to 0..255).

    Returns:
        float32 array (N, H, W); higher means more anomalous.
    """
    check_method(method, dtype)
    return finish_map(RESIDUALS[method](inputs, reconstructions), method, dtype)


def _ssim_residual(x, y):
    return 1.0 - ssim_map(x, y)


# Raw (unclipped) residual of each method, as TensorFlow functions of (inputs, reconstructions).
RESIDUALS = {"ssim": _ssim_residual, "mssim": ms_ssim_residual, "l2": _l2_map}


def finish_map(raw: tf.Tensor, method: str, dtype: str) -> np.ndarray:
    """Clip (ssim) and quantise (uint8) a raw residual map; float32 numpy (N, H, W)."""
    maps = raw.numpy().astype(np.float32, copy=False)
    if method == "ssim":
        maps = np.clip(maps, 0.0, 1.0)
    if dtype == "uint8":
        maps = np.round(np.clip(maps, 0.0, 1.0) * 255.0)
    return maps
