"""Deep features of a pretrained backbone, shared by the feature detectors.

Post-processing that several detectors share lives here too: PatchCore's local patch
aggregation, and turning a coarse score grid into a full-resolution, Gaussian-smoothed map.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from anomaly.backbones import build_backbone
from anomaly.data.io import batches
from anomaly.progress import advance as advance_progress


class FeatureExtractor:
    """The outputs of named backbone layers for images in [0, 1].

    Args:
        backbone: a name from `anomaly.backbones.list_backbones()`.
        weights: "imagenet", "random" or a weights file.
        layers: the layer names whose outputs are returned, in order.
        input_shape: (H, W, C) of the images; C = 1 is repeated to RGB.
        seed: seeds "random" weights (the same seed rebuilds the same network).
    """

    def __init__(self, backbone: str, weights: str, layers: tuple[str, ...], input_shape: tuple[int, int, int],
                 seed: int = 0):
        import keras

        from anomaly.errors import AnomalyError

        self.input_shape = tuple(input_shape)
        model, self._preprocess = build_backbone(backbone, weights, (*self.input_shape[:2], 3), seed)
        names = {layer.name for layer in model.layers}
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise AnomalyError(f"--layers: {backbone} has no layer '{unknown[0]}'")
        self.model = keras.Model(model.input, [model.get_layer(n).output for n in layers])
        self.model.trainable = False

    def __call__(self, images: tf.Tensor) -> list[tf.Tensor]:
        """Feature maps (N, h, w, c) for a batch of (N, H, W, C) images, inference mode."""
        images = tf.convert_to_tensor(images, tf.float32)
        if images.shape[-1] == 1:
            images = tf.repeat(images, 3, axis=-1)
        out = self.model(self._preprocess(images), training=False)
        return list(out) if isinstance(out, (list, tuple)) else [out]


def local_patches(feature_maps: list[tf.Tensor], neighbourhood: int = 3) -> tf.Tensor:
    """PatchCore's locally aware patch features (N, h, w, sum c).

    Each map is averaged over a `neighbourhood` x `neighbourhood` window (the paper's patch size
    p, 3; stride 1; at the border the average is over the pixels inside the map rather than
    counting zero padding), resized bilinearly to the first (finest) map's grid and concatenated
    along channels.
    """
    size = tf.shape(feature_maps[0])[1:3]
    out = []
    for f in feature_maps:
        if neighbourhood > 1:
            f = tf.nn.avg_pool2d(f, neighbourhood, 1, "SAME")  # TF's SAME average pooling excludes padding
        if f.shape[1] != feature_maps[0].shape[1]:
            f = tf.image.resize(f, size, method="bilinear")
        out.append(f)
    return tf.concat(out, axis=-1)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """A normalised 1-D Gaussian truncated at 4 sigma (as scipy's gaussian_filter)."""
    radius = int(4 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).astype(np.float32)


def _axis_matrix(n: int, size: int, sigma: float) -> np.ndarray:
    """(n, size) M with x @ M = bilinear resizing (tf.image.resize, half-pixel centres) of a length-n
    axis to `size`, then the Gaussian of `sigma` with symmetric padding (scipy's "reflect")."""
    with tf.init_scope():  # eager even while a tf.function is being traced: the matrix is a constant
        resize = tf.image.resize(tf.reshape(tf.eye(n), (n, n, 1, 1)), (size, 1), "bilinear")[:, :, 0, 0].numpy()
    if sigma <= 0:
        return resize.astype(np.float32)
    k = gaussian_kernel(sigma).astype(np.float64)
    r = (len(k) - 1) // 2
    if r > size:
        raise ValueError(f"a Gaussian of sigma {sigma} needs maps of at least {r} pixels, got {size}")
    source = np.concatenate([np.arange(r)[::-1], np.arange(size), np.arange(size - r, size)[::-1]])
    blur = np.zeros((size, size))
    for t, weight in enumerate(k):  # output pixel j reads padded pixel j + t
        np.add.at(blur, (source[np.arange(size) + t], np.arange(size)), weight)
    return (resize.astype(np.float64) @ blur).astype(np.float32)


@functools.lru_cache(maxsize=32)
def _full_map_matrices(h: int, w: int, height: int, width: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    return _axis_matrix(h, height, sigma), _axis_matrix(w, width, sigma)


def to_full_map(grid: tf.Tensor, size: tuple[int, int], sigma: float) -> tf.Tensor:
    """(N, h, w) scores -> (N, H, W) map: bilinear upsampling, then a Gaussian of `sigma` px.

    The Gaussian pads by reflection (scipy's default mode) so borders are not darkened. Both
    steps are linear and separable, so they run as one matrix product per axis: as fast as a
    matmul on every CPU, where two 1-channel convolutions ran at ~1 GFLOP/s without oneDNN.
    """
    grid = tf.convert_to_tensor(grid, tf.float32)
    h, w = int(grid.shape[1]), int(grid.shape[2])
    height, width = int(size[0]), int(size[1])
    along_h, along_w = (tf.constant(m) for m in _full_map_matrices(h, w, height, width, float(sigma)))
    x = tf.matmul(tf.reshape(grid, (-1, w)), along_w)                      # (N*h, W)
    x = tf.transpose(tf.reshape(x, (-1, h, width)), [0, 2, 1])             # (N, W, h)
    x = tf.matmul(tf.reshape(x, (-1, h)), along_h)                         # (N*W, H)
    return tf.transpose(tf.reshape(x, (-1, width, height)), [0, 2, 1])     # (N, H, W)


def batch_outputs(fn: Callable, images, batch_size: int):
    """Yield `fn` (images -> tensor or tuple of tensors) of consecutive batches, as numpy tuples.

    `images` is an array or an `anomaly.data.io.ImageFiles`, read batch by batch: a detector that
    consumes the outputs as they come holds one batch of features at a time.
    """
    for batch in batches(images, batch_size):
        out = fn(tf.constant(np.asarray(batch, np.float32)))
        out = out if isinstance(out, (list, tuple)) else (out,)
        advance_progress(len(batch))
        yield tuple(o.numpy() for o in out)


def in_batches(fn: Callable, images, batch_size: int) -> list[np.ndarray]:
    """Apply `fn` (images -> tensor or tuple of tensors) batch by batch; concatenated numpy outputs."""
    parts = list(batch_outputs(fn, images, batch_size))
    return [np.concatenate(p) for p in zip(*parts)]


def row_offsets(batches):
    """(first row, rows) for each (n, ..., D) feature batch, flattened to (rows, D)."""
    start = 0
    for batch in batches:
        rows = batch.reshape(-1, batch.shape[-1])
        yield start, rows
        start += len(rows)


def sample_rows(batches, total: int, n: int, seed: int) -> np.ndarray:
    """A seeded random sample of `n` of the `total` rows of streamed feature batches.

    The rows are those `rng.choice(total, n, replace=False)` names, in that order, so the result
    equals sampling the concatenated rows; only the sample is held. All rows when `total <= n`.
    """
    if total <= n:
        return np.concatenate([rows for _, rows in row_offsets(batches)])
    idx = np.random.default_rng(seed).choice(total, n, replace=False)
    out = None
    for start, rows in row_offsets(batches):
        if out is None:
            out = np.empty((n, rows.shape[1]), rows.dtype)
        hit = (idx >= start) & (idx < start + len(rows))
        out[hit] = rows[idx[hit] - start]
    return out


class BackboneDetectorMixin:
    """The backbone plumbing every feature detector shares.

    Expects `input_shape`, `backbone`, `weights`, `layers`, `seed` and `batch_size` attributes. The
    extractor is built on first use (loading a detector does not load a backbone until maps
    are asked for), and each traced function is kept so repeated calls do not retrace.
    """

    _extractor: FeatureExtractor | None = None

    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            self._extractor = FeatureExtractor(self.backbone, self.weights, self.layers, self.input_shape,
                                               self.seed)
        return self._extractor

    def traced(self, fn: Callable) -> Callable:
        """`fn` (a method: image batch -> tensor) as a tf.function, traced once per method."""
        self.extractor  # noqa: B018 - build (and load weights) eagerly, never inside a trace
        traced = self.__dict__.setdefault("_traced", {})
        if fn.__name__ not in traced:
            # A batch dimension of None: one trace serves every batch size, the last partial batch too.
            spec = tf.TensorSpec((None, *self.input_shape), tf.float32)
            traced[fn.__name__] = tf.function(fn, input_signature=[spec])
        return traced[fn.__name__]

    def run_batched(self, fn: Callable, images, batch_size: int | None = None) -> np.ndarray:
        """`fn` (a method: image batch -> tensor) over images in batches, concatenated."""
        return in_batches(self.traced(fn), images, batch_size or self.batch_size)[0]

    def output_shape(self, fn: Callable) -> tuple[int, ...]:
        """The shape of `fn`'s output for one image, less the batch (one blank image, not counted as
        progress; kept, as it depends only on the input shape and the layers)."""
        shapes = self.__dict__.setdefault("_shapes", {})
        if fn.__name__ not in shapes:
            blank = tf.zeros((1, *self.input_shape), tf.float32)
            shapes[fn.__name__] = tuple(int(d) for d in self.traced(fn)(blank).shape[1:])
        return shapes[fn.__name__]

    def stream(self, fn: Callable, images, batch_size: int | None = None):
        """Yield `fn` (a method: image batch -> tensor) of consecutive batches as numpy arrays."""
        for (out,) in batch_outputs(self.traced(fn), images, batch_size or self.batch_size):
            yield out

    uses_backbone = True

    def check(self) -> None:
        """Build the backbone now: a bad backbone, weights file or layer fails before any work."""
        self.extractor  # noqa: B018

    def _anomaly_maps(self, images: np.ndarray, method: str, dtype: str, return_reconstructions: bool = False):
        """(N, H, W) float32 maps from the detector's `_maps` (its one map kind, float64 only)."""
        from anomaly.errors import AnomalyError

        if dtype != "float64":
            raise AnomalyError(f"dtype: {self.name} maps are float64, got {dtype}")
        maps = self.run_batched(self._maps, images)
        return (maps, None) if return_reconstructions else maps

    def map_function(self, method: str, dtype: str) -> Callable:
        """`_maps`, the function `anomaly_maps` runs batch by batch (see `Detector.map_function`)."""
        from anomaly.errors import AnomalyError

        if dtype != "float64":
            raise AnomalyError(f"dtype: {self.name} maps are float64, got {dtype}")
        self.extractor  # noqa: B018 - weights are loaded eagerly, never inside a trace
        return self._maps

    def patch_features(self, images: np.ndarray) -> np.ndarray:
        """(N, h, w, D) locally aware patch features (`local_patches`) of the detector's layers."""
        return self.run_batched(self._local_patches, images)

    def _local_patches(self, x):
        return local_patches(self.extractor(x))

    def forget_traces(self) -> None:
        """Drop traced functions (after fitting changes what they close over)."""
        self.__dict__.pop("_traced", None)
