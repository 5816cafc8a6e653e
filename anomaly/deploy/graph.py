"""The package's preprocessing and post-processing as TensorFlow operations, for exported graphs.

Each function here mirrors a numpy/scipy step of the package and is checked against it by the
tests: `resize_matrices` and `smoothing_matrix` are the package's own resize and Gaussian applied
to identity matrices (both are linear and separable), so the graph multiplies by exactly the
weights the package uses instead of re-deriving them; `component_areas` labels 8-connected
regions as `scipy.ndimage.label` does, with operations every export format runs.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from scipy import ndimage

from anomaly.data.io import conform

# How `component_areas` counts the pixels of each region: TFLite runs unsorted_segment_sum but not
# bincount, tf2onnx turns unsorted_segment_sum into a one-hot matrix of pixels x pixels (terabytes
# for a batch of 256 px maps) and bincount into ONNX's Unique.
COUNTERS = ("segment_sum", "bincount")


def resize_matrices(image_size: tuple[int, int], input_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) matrices R, C with R^T @ image @ C = the package's resize of an (H, W) plane.

    `anomaly.data.io.conform` resizes with scikit-image (Gaussian anti-aliasing, then bilinear),
    separable along each axis; resizing an identity matrix along one axis gives that axis's matrix.
    """
    (height, width), (out_h, out_w) = image_size, input_shape[:2]
    # Resizing the columns of an identity along axis 0 gives A (out, in) with out = A @ plane.
    rows = conform(np.eye(height, dtype=np.float32), (out_h, height, 1))[..., 0]
    cols = conform(np.eye(width, dtype=np.float32), (out_w, width, 1))[..., 0]
    return np.ascontiguousarray(rows.T), np.ascontiguousarray(cols.T)


def smoothing_matrix(size: int, sigma: float) -> np.ndarray:
    """(size, size) M with x @ M = `anomaly.postprocessing.smooth_maps`' Gaussian along one axis."""
    # Row k is the filter's response to a pixel at k: what input k adds to every output.
    return ndimage.gaussian_filter1d(np.eye(size, dtype=np.float32), sigma, axis=1, mode="nearest")


def along_axes(planes: tf.Tensor, rows: np.ndarray, cols: np.ndarray) -> tf.Tensor:
    """rows^T @ plane @ cols for each (H, W) plane of an (N, H, W) stack, as two matrix products."""
    out_h, out_w = rows.shape[1], cols.shape[1]
    height, width = rows.shape[0], cols.shape[0]
    x = tf.matmul(tf.reshape(planes, (-1, width)), tf.constant(cols))                # (N*H, out_w)
    x = tf.transpose(tf.reshape(x, (-1, height, out_w)), [0, 2, 1])                  # (N, out_w, H)
    x = tf.matmul(tf.reshape(x, (-1, height)), tf.constant(rows))                    # (N*out_w, out_h)
    return tf.transpose(tf.reshape(x, (-1, out_w, out_h)), [0, 2, 1])                # (N, out_h, out_w)


def smooth(maps: tf.Tensor, sigma: float) -> tf.Tensor:
    """`anomaly.postprocessing.smooth_maps` of (N, H, W) maps; sigma 0 returns them unchanged."""
    if sigma <= 0:
        return maps
    height, width = int(maps.shape[1]), int(maps.shape[2])
    return along_axes(maps, smoothing_matrix(height, sigma), smoothing_matrix(width, sigma))


def preprocess(images: tf.Tensor, input_shape: tuple[int, int, int]) -> tf.Tensor:
    """uint8 (N, H, W, C) images as the float32 (N, *input_shape) batch the package reads them as
    (`conform`): scaled to [0, 1], then resized per channel when H, W differ from the input size."""
    x = tf.cast(images, tf.float32) / 255.0
    height, width, channels = int(images.shape[1]), int(images.shape[2]), int(images.shape[3])
    if (height, width) == tuple(input_shape[:2]):
        return x
    rows, cols = resize_matrices((height, width), input_shape)
    planes = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), (-1, height, width))      # (N*C, H, W)
    resized = along_axes(planes, rows, cols)
    return tf.transpose(tf.reshape(resized, (-1, channels, *input_shape[:2])), [0, 2, 3, 1])


def component_areas(binary: tf.Tensor, counter: str = "segment_sum") -> tf.Tensor:
    """The area of the 8-connected region each pixel belongs to (0 where `binary` is False).

    Every pixel on starts with its own label (index + 1); labels grow to the largest in their
    region by 3x3 max-pooling restricted to the region, and each pixel also takes the label of
    the pixel its label names (that pixel is in the same region and already holds a label at
    least as large), which cuts the number of rounds from the region's length to about its log.

    Args:
        binary: bool (N, H, W).
        counter: "segment_sum" or "bincount" (see `COUNTERS`), by the format's operations.

    Returns:
        float32 (N, H, W).
    """
    shape = tf.shape(binary)
    n, h, w = shape[0], shape[1], shape[2]
    pixels = h * w
    on = tf.cast(binary, tf.float32)  # float labels: max-pooling runs on floats in every runtime (exact below 2^24)
    labels = tf.cast(tf.reshape(tf.range(1, pixels + 1), (1, h, w)), tf.float32) * on
    offsets = tf.cast(tf.reshape(tf.range(n) * pixels, (n, 1, 1)), tf.float32)

    def grow(labels, _):
        grown = tf.squeeze(tf.nn.max_pool2d(tf.expand_dims(labels, -1), 3, 1, "SAME"), -1) * on
        named = tf.cast(tf.maximum(grown - 1.0, 0.0) + offsets, tf.int32)
        jumped = tf.reshape(tf.gather(tf.reshape(grown, (-1,)), tf.reshape(named, (-1,))), shape) * on
        grown = tf.maximum(grown, jumped)
        return grown, tf.reduce_any(tf.not_equal(grown, labels))

    labels, _ = tf.while_loop(lambda labels, changed: changed, grow, (labels, tf.constant(True)))
    regions = tf.reshape(tf.cast(labels + offsets * on, tf.int32), (-1,))  # 0: off
    if counter == "bincount":
        counts = tf.cast(tf.math.bincount(regions, minlength=n * pixels + 1, maxlength=n * pixels + 1), tf.float32)
    else:
        counts = tf.math.unsorted_segment_sum(tf.reshape(on, (-1,)), regions, n * pixels + 1)
    return tf.reshape(tf.gather(counts, regions), shape) * on
