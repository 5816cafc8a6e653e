"""Reconstruction losses: MS-SSIM matches TensorFlow's where TensorFlow is defined, and trains where it is not."""

import numpy as np
import pytest
import tensorflow as tf

from anomaly.losses import get_loss, ms_ssim, mssim_loss


def _image_pair(seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:192, 0:200] / 32.0
    base = 0.5 + 0.25 * np.sin(xx)[..., None] * np.cos(yy)[..., None] * np.array([1.0, 0.7, 0.4])
    a = np.stack([base, base[::-1]]).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1).astype(np.float32)
    return a, b


def test_ms_ssim_equals_tensorflow_on_similar_images():
    a, b = _image_pair()  # 192 x 200: odd sizes appear at the coarser scales
    ours = ms_ssim(a, b).numpy()
    theirs = tf.image.ssim_multiscale(a, b, max_val=1.0).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert ms_ssim(a, a).numpy() == pytest.approx([1.0, 1.0], abs=1e-5)


def test_mssim_loss_has_finite_gradient_on_inverted_images():
    """An inverted reconstruction has negative contrast-structure terms: TensorFlow's gradient is NaN there."""
    a, _ = _image_pair()
    prediction = tf.Variable(1.0 - a)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(mssim_loss(a, prediction))
    gradient = tape.gradient(loss, prediction).numpy()
    assert loss.numpy() > 0.99
    assert np.isfinite(gradient).all()


def test_unknown_loss_names_the_choices():
    with pytest.raises(Exception, match="ssim, mssim, l2"):
        get_loss("huber")
