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


def _band(size, reflect: bool) -> tf.Tensor:
    """One 1-D Gaussian pass over an axis of `size` pixels as a (size, outputs) matrix.

    VALID (as `tf.image.ssim`): `size - 10` outputs, output j = sum_k taps[k] * x[j + k].
    reflect (as scikit-image): `size` outputs, the symmetric padding folded into the matrix.
    """
    size = tf.convert_to_tensor(size, tf.int32)
    padded = size + (_WIN - 1) if reflect else size
    k = tf.range(padded)[:, None] - tf.range(padded - (_WIN - 1))[None, :]
    taps = tf.gather(tf.constant(gaussian_taps()), tf.clip_by_value(k, 0, _WIN - 1))
    band = tf.where((k >= 0) & (k < _WIN), taps, 0.0)
    if reflect:  # padded row i reads pixel source[i] (mode "symmetric": ..., 1, 0 | 0, 1, ...)
        pad = _WIN // 2
        ramp = tf.range(size)
        source = tf.concat([tf.reverse(ramp[:pad], [0]), ramp, tf.reverse(ramp[size - pad:], [0])], 0)
        band = tf.matmul(tf.one_hot(source, size), band, transpose_a=True)
    return band


def _filter(planes: tf.Tensor, reflect: bool = False) -> tf.Tensor:
    """Gaussian window mean (11 taps, sigma 1.5) of a (B, H, W) stack of single-channel planes.

    The 2-D Gaussian is separable: one 11-tap pass down the columns, one along the rows, each a
    product with a banded matrix. Planes on the batch axis make these large matrix products,
    which every CPU runs fast; depthwise convolutions are slow without TensorFlow's oneDNN
    kernels, and slower still on many 1-channel planes. For 32 planes of 256 x 256, forward and
    backward on 2 cores of an AMD EPYC: 30 ms, against 440 ms for two 1-D depthwise passes
    without oneDNN (12 ms against 29 ms, and 57 ms for one 11 x 11 pass, with oneDNN). The cost
    per pixel grows with H + W rather than 22 taps, yet stays ahead up to 1024 x 1024 at least.

    Args:
        planes: float32 (B, H, W), H and W >= 11.
        reflect: pad by reflection (scikit-image, output (B, H, W)) instead of VALID, which keeps
            only the positions where the window fits (`tf.image.ssim`, output (B, H-10, W-10)).
    """
    height, width = planes.shape[1], planes.shape[2]
    smallest = _WIN // 2 if reflect else _WIN  # reflection needs 5 pixels, a VALID window 11
    if any(side is not None and side < smallest for side in (height, width)):
        raise ValueError(f"SSIM needs images of at least {smallest} x {smallest} pixels, got {height} x {width}")
    shape = tf.shape(planes)
    height = height if height is not None else shape[1]
    width = width if width is not None else shape[2]
    cols = _band(width, reflect)
    x = tf.matmul(_band(height, reflect), planes, transpose_a=True)  # (B, H', W)
    x = tf.matmul(tf.reshape(x, [-1, width]), cols)  # one GEMM over all rows: (B * H', W')
    return tf.reshape(x, [shape[0], -1, tf.shape(cols)[1]])


def to_planes(x: tf.Tensor) -> tf.Tensor:
    """(N, H, W, C) images as float32 (N * C, H, W) single-channel planes, image-major."""
    x = tf.cast(x, tf.float32)
    if x.shape[-1] == 1:
        return x[..., 0]
    shape = tf.shape(x)
    return tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [-1, shape[1], shape[2]])


def ssim_terms(x: tf.Tensor, y: tf.Tensor, max_val: float = _RANGE, reflect: bool = False,
               cov_norm: float = 1.0) -> tuple[tf.Tensor, tf.Tensor]:
    """Local luminance and contrast-structure maps of two (B, H, W) plane stacks; SSIM is their product.

    With the defaults this is `tf.image.ssim`'s computation (VALID window, biased covariance,
    the same four local means and the same formula), so the mean of the product over a plane
    equals its value. `reflect=True, cov_norm=121/120` is scikit-image's reflect-padded map with
    sample covariance. The loss, the metrics and the residual maps all use this one function.
    """
    moments = _filter(_moments_input(x, y), reflect)
    return _terms_from_moments(moments, (_K1 * max_val) ** 2, (_K2 * max_val) ** 2, cov_norm)


def _moments_input(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    # The four planes whose local means SSIM needs, stacked on the batch axis: one filtering pass.
    return tf.concat([x, y, x * y, x * x + y * y], axis=0)


def _terms_from_moments(moments: tf.Tensor, c1, c2, cov_norm) -> tuple[tf.Tensor, tf.Tensor]:
    mu_x, mu_y, xy, sq = tf.split(moments, 4, axis=0)
    num0 = mu_x * mu_y * 2.0
    den0 = tf.square(mu_x) + tf.square(mu_y)
    luminance = (num0 + c1) / (den0 + c1)
    cs = (cov_norm * (xy * 2.0 - num0) + c2) / (cov_norm * (sq - den0) + c2)
    return luminance, cs


@tf.function  # one trace per input shape
def ssim_map(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Local SSIM of two (N, H, W, C) batches in [0, 1], averaged over channels: (N, H, W)."""
    channels, shape = x.shape[-1], tf.shape(x)
    luminance, cs = ssim_terms(to_planes(x), to_planes(y), reflect=True, cov_norm=_WIN ** 2 / (_WIN ** 2 - 1))
    return tf.reduce_mean(tf.reshape(luminance * cs, [-1, channels, shape[1], shape[2]]), axis=1)


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
    return finish_tensor(raw, method, dtype).numpy()


def finish_tensor(raw: tf.Tensor, method: str, dtype: str) -> tf.Tensor:
    """`finish_map` as TensorFlow operations (for traced and exported graphs)."""
    maps = tf.cast(raw, tf.float32)
    if method == "ssim":
        maps = tf.clip_by_value(maps, 0.0, 1.0)
    if dtype == "uint8":
        maps = tf.round(tf.clip_by_value(maps, 0.0, 1.0) * 255.0)  # half to even, as numpy's round
    return maps
