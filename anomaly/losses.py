"""Reconstruction losses and metrics: SSIM, MS-SSIM and L2 for images in [0, 1].

SSIM constants are TensorFlow's (11x11 Gaussian window, sigma 1.5, k1 0.01, k2 0.03) with the
dynamic range 1.0 of [0, 1] images. MS-SSIM uses TensorFlow's five scales and power factors but
not `tf.image.ssim_multiscale`: that clips each scale's term with a ReLU and raises it to a
fractional power, so one negative term (anti-correlated structure, common in a freshly initialised
model's output) gives an infinite power gradient times the ReLU's zero, NaN, and the first step
turns every weight into NaN (baselineCAE and inceptionCAE on bottle did). Here the terms are
clipped to a small positive floor instead, where the gradient is zero.

Both use the residual maps' separable Gaussian filter (`anomaly.resmaps.ssim_terms`) instead of
`tf.image.ssim`'s 11x11 depthwise convolution, which without TensorFlow's oneDNN kernels made the
SSIM loss take 70% of a training step. The values are TensorFlow's up to float32 rounding: within
1e-7 on textured images; on smooth ones the local variances cancel digits, and both differ from the
exact (float64) value, TensorFlow by up to 5e-5, this implementation by up to 3e-6.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from anomaly.errors import AnomalyError
from anomaly.resmaps import ssim_terms, to_planes

DYNAMIC_RANGE = 1.0


def _f32(y_true, y_pred):
    return tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32)


def _planes(y_true, y_pred):
    """Both (N, H, W, C) batches as float32 (N * C, H, W) planes, and C; their shapes must match."""
    y_true, y_pred = _f32(y_true, y_pred)
    shape = y_true.shape.merge_with(y_pred.shape)  # static sizes from either (Keras knows y_pred's)
    return to_planes(tf.ensure_shape(y_true, shape)), to_planes(tf.ensure_shape(y_pred, shape)), shape[-1]


def _per_image(per_plane, channels):
    """Average (N * C,) per-plane values over each image's channels: (N,)."""
    return tf.reduce_mean(tf.reshape(per_plane, [-1, channels]), axis=-1)


def ssim_per_image(y_true, y_pred, max_val: float = DYNAMIC_RANGE):
    """SSIM per image, as `tf.image.ssim` (VALID 11x11 window, averaged over positions and channels).

    Args:
        y_true: images, shape (batch, height, width, channels), height and width >= 11.
        y_pred: images of the same shape.
        max_val: the dynamic range of the images.

    Returns:
        A (batch,) float32 tensor.
    """
    x, y, channels = _planes(y_true, y_pred)
    luminance, cs = ssim_terms(x, y, max_val)
    return _per_image(tf.reduce_mean(luminance * cs, axis=[1, 2]), channels)


@keras.saving.register_keras_serializable(package="anomaly")
def ssim_loss(y_true, y_pred):
    """1 - SSIM per image; Keras averages it over the batch."""
    return 1.0 - ssim_per_image(y_true, y_pred)


# MS-SSIM uses five scales of an 11-px window, halving the image four times.
MSSIM_MIN_SIZE = 11 * 2 ** 4
MSSIM_POWER_FACTORS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# Below it a term counts as no similarity; above 0 so that its power has a finite gradient.
_MSSIM_FLOOR = 1e-6


def ms_ssim(y_true, y_pred, max_val: float = DYNAMIC_RANGE):
    """Multi-scale SSIM per image, as `tf.image.ssim_multiscale` but NaN-free (see the module note).

    Args:
        y_true: images, shape (batch, height, width, channels), height and width >= 176.
        y_pred: images of the same shape.
        max_val: the dynamic range of the images.

    Returns:
        A (batch,) tensor; equal to TensorFlow's value wherever no term is negative.
    """

    def half(x):
        # Odd sizes are padded by reflection before 2x2 average pooling, as TensorFlow does.
        pad = [[0, 0], [0, x.shape[1] % 2], [0, x.shape[2] % 2]]
        return tf.nn.avg_pool2d(tf.pad(x, pad, mode="SYMMETRIC")[..., None], 2, 2, "VALID")[..., 0]

    terms = []
    x, y, channels = _planes(y_true, y_pred)
    for scale in range(len(MSSIM_POWER_FACTORS)):
        if scale:
            x, y = half(x), half(y)
        luminance, cs = ssim_terms(x, y, max_val)
        # Per plane, averaged over positions: the contrast-structure term, and SSIM at the last scale.
        term = luminance * cs if scale == len(MSSIM_POWER_FACTORS) - 1 else cs
        terms.append(tf.reduce_mean(term, axis=[1, 2]))
    stacked = tf.maximum(tf.stack(terms, axis=-1), _MSSIM_FLOOR)
    return _per_image(tf.reduce_prod(stacked ** tf.constant(MSSIM_POWER_FACTORS), axis=-1), channels)


@keras.saving.register_keras_serializable(package="anomaly")
def mssim_loss(y_true, y_pred):
    """1 - MS-SSIM per image (five scales; images need at least 176 px)."""
    return 1.0 - ms_ssim(y_true, y_pred)


@keras.saving.register_keras_serializable(package="anomaly")
def l2_loss(y_true, y_pred):
    """Mean squared error per image.

    The original summed squared errors over the whole batch tensor, so the loss (and the
    learning rate the finder picks) scaled with batch size and image size; a mean does not.
    """
    y_true, y_pred = _f32(y_true, y_pred)
    return tf.reduce_mean(tf.square(y_true - y_pred), axis=[1, 2, 3])


@keras.saving.register_keras_serializable(package="anomaly")
def ssim(y_true, y_pred):
    """Batch-mean SSIM, the monitoring metric for grayscale models."""
    return tf.reduce_mean(ssim_per_image(y_true, y_pred))


@keras.saving.register_keras_serializable(package="anomaly")
def mssim(y_true, y_pred):
    """Batch-mean MS-SSIM, the monitoring metric for RGB models."""
    return tf.reduce_mean(ms_ssim(y_true, y_pred))


LOSSES = {"ssim": ssim_loss, "mssim": mssim_loss, "l2": l2_loss}


def get_loss(name: str):
    """The loss function registered under `name`."""
    if name not in LOSSES:
        raise AnomalyError(f"unknown loss '{name}': expected one of {', '.join(LOSSES)}")
    return LOSSES[name]


def get_metric(color_mode: str, input_size: int):
    """The monitoring metric: SSIM for grayscale, MS-SSIM for RGB when the image is big enough."""
    return mssim if color_mode == "rgb" and input_size >= MSSIM_MIN_SIZE else ssim
