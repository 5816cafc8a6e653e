"""Reconstruction losses: SSIM and MS-SSIM are TensorFlow's values, faster, and train where TensorFlow's do not.

Agreement with `tf.image.ssim` is to float32 rounding. On textured images that is 1e-7; on smooth
images the local variances cancel digits and `tf.image.ssim` itself is off the exact (float64)
value by up to 4e-6 (5e-5 on inverted images), so there the reference is a float64 computation.
"""

import os
import platform
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.ndimage import correlate1d

from anomaly.losses import get_loss, ms_ssim, mssim, mssim_loss, ssim, ssim_loss, ssim_per_image

_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_TAPS = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
_TAPS /= _TAPS.sum()


def _image_pair(seed=0, channels=3):
    """Smooth structure with noise: 2 images of 192 x 200 (odd sizes at the coarser scales)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:192, 0:200] / 32.0
    base = 0.5 + 0.25 * np.sin(xx)[..., None] * np.cos(yy)[..., None] * np.array([1.0, 0.7, 0.4])[:channels]
    a = np.stack([base, base[::-1]]).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1).astype(np.float32)
    return a, b


def _random_pair(shape, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.random(shape, dtype=np.float32)
    return a, np.clip(a + rng.normal(0, 0.2, shape), 0, 1).astype(np.float32)


def _terms64(x, y):
    """Mean luminance x contrast-structure (SSIM) and contrast-structure of (B, H, W) float64 planes."""
    def blur(p):  # the VALID 11 x 11 window of tf.image.ssim, as two 1-D passes
        return correlate1d(correlate1d(p, _TAPS, axis=1)[:, 5:-5], _TAPS, axis=2)[:, :, 5:-5]

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = blur(x), blur(y)
    luminance = (2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1)
    cs = (2 * (blur(x * y) - mx * my) + c2) / (blur(x * x + y * y) - mx ** 2 - my ** 2 + c2)
    return (luminance * cs).mean(axis=(1, 2)), cs.mean(axis=(1, 2))


def _planes64(a):
    n, h, w, c = a.shape
    return a.astype(np.float64).transpose(0, 3, 1, 2).reshape(n * c, h, w)


def ssim64(a, b):
    """tf.image.ssim in float64."""
    return _terms64(_planes64(a), _planes64(b))[0].reshape(len(a), -1).mean(-1)


def ms_ssim64(a, b):
    """tf.image.ssim_multiscale in float64 (where no term is negative)."""
    x, y = _planes64(a), _planes64(b)
    terms = []
    for scale in range(len(_WEIGHTS)):
        if scale:  # reflect-pad odd sizes, then 2 x 2 means, as TensorFlow does
            x, y = (np.pad(p, [(0, 0), (0, p.shape[1] % 2), (0, p.shape[2] % 2)], mode="symmetric") for p in (x, y))
            x, y = (p.reshape(len(p), p.shape[1] // 2, 2, p.shape[2] // 2, 2).mean(axis=(2, 4)) for p in (x, y))
        s, cs = _terms64(x, y)
        terms.append(s if scale == len(_WEIGHTS) - 1 else cs)
    return np.prod(np.stack(terms, -1) ** np.array(_WEIGHTS), -1).reshape(len(a), -1).mean(-1)


@pytest.mark.parametrize("shape", [(3, 48, 64, 1), (2, 40, 57, 3), (2, 181, 177, 1)])
def test_ssim_loss_equals_tensorflow_on_random_images(shape):
    a, b = _random_pair(shape)
    np.testing.assert_allclose(ssim_loss(a, b).numpy(), 1.0 - tf.image.ssim(a, b, max_val=1.0).numpy(), atol=1e-6)
    np.testing.assert_allclose(ssim_loss(a, a).numpy(), 0.0, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_equals_tensorflow_on_structured_images(channels):
    a, b = _image_pair(channels=channels)
    ours = ssim_per_image(a, b).numpy()
    np.testing.assert_allclose(ours, ssim64(a, b), atol=1e-6)
    np.testing.assert_allclose(ours, tf.image.ssim(a, b, max_val=1.0).numpy(), atol=1e-5)  # TensorFlow's rounding
    inverted = ssim_per_image(a, 1.0 - a).numpy()  # negative SSIM, smooth: the hardest to round
    np.testing.assert_allclose(inverted, ssim64(a, 1.0 - a), atol=5e-6)
    assert ssim(a, b).numpy() == pytest.approx(ours.mean(), abs=1e-7)


@pytest.mark.parametrize("channels", [1, 3])
def test_ms_ssim_equals_tensorflow_where_no_term_is_negative(channels):
    a, b = _image_pair(channels=channels)
    ours = ms_ssim(a, b).numpy()
    np.testing.assert_allclose(ours, ms_ssim64(a, b), atol=1e-6)
    np.testing.assert_allclose(ours, tf.image.ssim_multiscale(a, b, max_val=1.0).numpy(), atol=1e-5)
    assert mssim(a, b).numpy() == pytest.approx(ours.mean(), abs=1e-7)
    assert ms_ssim(a, a).numpy() == pytest.approx([1.0, 1.0], abs=1e-6)


def test_ms_ssim_equals_tensorflow_on_random_images():
    a, b = _random_pair((2, 181, 190, 3), seed=1)
    theirs = tf.image.ssim_multiscale(a, b, max_val=1.0).numpy()
    assert theirs.min() > 0.1  # no negative term
    ours = ms_ssim(a, b).numpy()
    # The coarse scales of noise are smooth: TensorFlow rounds to 3e-6 of the exact value there, this to 2e-6.
    np.testing.assert_allclose(ours, ms_ssim64(a, b), atol=4e-6)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_ssim_loss_gradient_is_tensorflows():
    a, b = _random_pair((2, 64, 48, 3), seed=2)
    gradients = []
    for loss in (ssim_loss, lambda x, y: 1.0 - tf.image.ssim(x, y, max_val=1.0)):
        prediction = tf.Variable(b)
        with tf.GradientTape() as tape:
            value = tf.reduce_mean(loss(a, prediction))
        gradients.append(tape.gradient(value, prediction).numpy())
    assert np.isfinite(gradients[0]).all()
    np.testing.assert_allclose(gradients[0], gradients[1], atol=1e-4 * np.abs(gradients[1]).max())


@pytest.mark.parametrize("loss", [ssim_loss, mssim_loss])
def test_losses_have_finite_gradients_on_random_and_identical_images(loss):
    a, b = _random_pair((2, 176, 180, 1), seed=3)
    for target in (b, a):
        prediction = tf.Variable(target)
        with tf.GradientTape() as tape:
            value = tf.reduce_mean(loss(a, prediction))
        assert np.isfinite(tape.gradient(value, prediction).numpy()).all()


def test_mssim_loss_has_finite_gradient_on_inverted_images():
    """An inverted reconstruction has negative contrast-structure terms: TensorFlow's gradient is NaN there."""
    a, _ = _image_pair()
    prediction = tf.Variable(1.0 - a)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(mssim_loss(a, prediction))
    gradient = tape.gradient(loss, prediction).numpy()
    assert loss.numpy() > 0.99
    assert np.isfinite(gradient).all()


def test_losses_train_in_a_keras_graph_and_survive_saving(tmp_path):
    inputs = keras.Input((32, 40, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs))
    model.compile(optimizer="adam", loss=ssim_loss, metrics=[ssim])
    x = np.random.default_rng(4).random((4, 32, 40, 1), dtype=np.float32)
    model.fit(x, x, batch_size=3, epochs=1, verbose=0)  # a partial last batch too
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert restored.loss is ssim_loss
    for function in (ssim_loss, mssim_loss, ssim, mssim):
        config = keras.saving.serialize_keras_object(function)
        assert keras.saving.deserialize_keras_object(config) is function


def test_unknown_loss_names_the_choices():
    with pytest.raises(Exception, match="ssim, mssim, l2"):
        get_loss("huber")


@pytest.mark.skipif(platform.machine().lower() not in {"x86_64", "amd64"}, reason="oneDNN default is for x86")
def test_importing_anomaly_turns_onednn_on_unless_the_user_chose():
    code = "import anomaly, os; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    for chosen, expected in ((None, "1"), ("0", "0")):
        run_env = env if chosen is None else {**env, "TF_ENABLE_ONEDNN_OPTS": chosen}
        out = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected


def test_cpu_facts_name_the_vector_extensions_and_onednn():
    from anomaly.machine import cpu_facts

    facts = cpu_facts()
    assert facts["cpu"] and facts["onednn"] in (True, False, None)
    assert facts["onednn_opts"] == os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    if os.path.exists("/proc/cpuinfo") and platform.machine().lower() in {"x86_64", "amd64"}:
        assert isinstance(facts["avx512"], bool) and isinstance(facts["avx2"], bool)
