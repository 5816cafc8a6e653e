"""Reconstruction losses and metrics: SSIM, MS-SSIM and L2 for images in [0, 1].

SSIM constants are TensorFlow's (11x11 Gaussian window, sigma 1.5, k1 0.01, k2 0.03) with the
dynamic range 1.0 of [0, 1] images. MS-SSIM uses TensorFlow's five scales and power factors.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from anomaly.errors import AnomalyError

DYNAMIC_RANGE = 1.0


def _f32(y_true, y_pred):
    return tf.cast(y_true, tf.float32), tf.cast(y_pred, tf.float32)


@keras.saving.register_keras_serializable(package="anomaly")
def ssim_loss(y_true, y_pred):
    """1 - SSIM per image; Keras averages it over the batch."""
    y_true, y_pred = _f32(y_true, y_pred)
    return 1.0 - tf.image.ssim(y_true, y_pred, max_val=DYNAMIC_RANGE)


@keras.saving.register_keras_serializable(package="anomaly")
def mssim_loss(y_true, y_pred):
    """1 - MS-SSIM per image (five scales; images need at least 176 px)."""
    y_true, y_pred = _f32(y_true, y_pred)
    return 1.0 - tf.image.ssim_multiscale(y_true, y_pred, max_val=DYNAMIC_RANGE)


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
    y_true, y_pred = _f32(y_true, y_pred)
    return tf.reduce_mean(tf.image.ssim(y_true, y_pred, max_val=DYNAMIC_RANGE))


@keras.saving.register_keras_serializable(package="anomaly")
def mssim(y_true, y_pred):
    """Batch-mean MS-SSIM, the monitoring metric for RGB models."""
    y_true, y_pred = _f32(y_true, y_pred)
    return tf.reduce_mean(tf.image.ssim_multiscale(y_true, y_pred, max_val=DYNAMIC_RANGE))


LOSSES = {"ssim": ssim_loss, "mssim": mssim_loss, "l2": l2_loss}


def get_loss(name: str):
    """The loss function registered under `name`."""
    if name not in LOSSES:
        raise AnomalyError(f"unknown loss '{name}': expected one of {', '.join(LOSSES)}")
    return LOSSES[name]


def get_metric(color_mode: str, input_size: int):
    """The monitoring metric: SSIM for grayscale, MS-SSIM for RGB when the image is big enough."""
    from anomaly.config import MSSIM_MIN_SIZE

    return mssim if color_mode == "rgb" and input_size >= MSSIM_MIN_SIZE else ssim
