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

from anomaly.data.io import LUMA, conform

# The reductions `component_areas` uses, by what a format runs well: TFLite has unsorted_segment_max/sum
# but neither scatter-max nor bincount; tf2onnx turns unsorted segment operations into a one-hot
# matrix of pixels x pixels (terabytes for a batch of 256 px maps), and scatter-max and bincount
# into ONNX's ScatterND and Unique.
REDUCERS = ("segment", "scatter")


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
    (`conform`): scaled to [0, 1]; alpha dropped (C 2 or 4), grey repeated to RGB or RGB turned grey
    (`LUMA`) for the model's channels; then resized per channel when H, W differ from its size."""
    x = tf.cast(images, tf.float32) / 255.0
    height, width, channels = int(images.shape[1]), int(images.shape[2]), int(images.shape[3])
    if channels in (2, 4):
        x, channels = x[:, :, :, :channels - 1], channels - 1
    if channels == 3 and input_shape[-1] == 1:
        x, channels = tf.reshape(tf.reshape(x, (-1, 3)) @ tf.constant(LUMA[:, None]), (-1, height, width, 1)), 1
    elif channels == 1 and input_shape[-1] == 3:
        x, channels = tf.repeat(x, 3, axis=-1), 3
    if (height, width) == tuple(input_shape[:2]):
        return x
    rows, cols = resize_matrices((height, width), input_shape)
    planes = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), (-1, height, width))      # (N*C, H, W)
    resized = along_axes(planes, rows, cols)
    return tf.transpose(tf.reshape(resized, (-1, channels, *input_shape[:2])), [0, 2, 3, 1])


def component_areas(binary: tf.Tensor, reducer: str = "segment") -> tf.Tensor:
    """The area of the 8-connected region each pixel belongs to (0 where `binary` is False).

    Label equivalence, as connected-component labelling on GPUs does it (Kalentev et al. 2011,
    Komura 2015), with largest instead of smallest labels: every pixel on starts with its own
    label. Each round, a pixel looks at the largest label around it (3x3 max-pooling), and the
    table entry of its own label is raised to it (scatter-max: the two labels are one region);
    the table then follows its own entries twice (a label's entry names a larger label of the
    same region, whose entry names a larger one still), and every pixel takes its label's entry.
    Whole groups of pixels change label at once, so the rounds grow with the log of a region's
    length, not its length (max-pooling alone took 134 rounds on bottle's defects at 256 px).

    Args:
        binary: bool (N, H, W).
        reducer: "segment" or "scatter" (see `REDUCERS`), by the format's operations.

    Returns:
        float32 (N, H, W).
    """
    shape = tf.shape(binary)
    n, h, w = shape[0], shape[1], shape[2]
    pixels, slots = h * w, n * h * w
    on = tf.cast(binary, tf.float32)
    index = tf.range(slots)
    offsets = tf.reshape(tf.repeat(tf.range(n) * pixels, pixels), shape)  # each pixel's image's first index
    # Labels are global pixel indices + 1 (int32: a batch may hold more than float32's 2^24 exact integers);
    # max-pooling, which runs on floats in every runtime, sees them less their image's offset.
    labels = tf.where(binary, tf.reshape(index + 1, shape), 0)
    table = index + 1  # table[label - 1]: the largest label known to be in the same region

    def round_(labels, table, _):
        local = tf.cast(tf.where(binary, labels - offsets, 0), tf.float32)
        around = tf.cast(tf.squeeze(tf.nn.max_pool2d(tf.expand_dims(local, -1), 3, 1, "SAME"), -1), tf.int32)
        slot = tf.reshape(tf.where(binary, labels - 1, tf.reshape(index, shape)), (-1,))
        seen = tf.reshape(tf.where(binary, around + offsets, 0), (-1,))
        if reducer == "scatter":
            table = tf.tensor_scatter_nd_max(table, tf.expand_dims(slot, 1), seen)
        else:
            table = tf.maximum(table, tf.math.unsorted_segment_max(seen, slot, slots))
        for _ in range(2):
            table = tf.gather(table, table - 1)
        relabelled = tf.where(binary, tf.reshape(tf.gather(table, slot), shape), 0)
        return relabelled, table, tf.reduce_any(tf.not_equal(relabelled, labels))

    labels, _, _ = tf.while_loop(lambda labels, table, changed: changed, round_,
                                 (labels, table, tf.constant(True)))
    regions = tf.reshape(labels, (-1,))  # 0: off
    if reducer == "scatter":
        counts = tf.cast(tf.math.bincount(regions, minlength=slots + 1, maxlength=slots + 1), tf.float32)
    else:
        counts = tf.math.unsorted_segment_sum(tf.reshape(on, (-1,)), regions, slots + 1)
    return tf.reshape(tf.gather(counts, regions), shape) * on


def regions_at_least(binary: tf.Tensor, least: tf.Tensor, reducer: str = "segment") -> tf.Tensor:
    """The pixels of `binary` in 8-connected regions of at least `least` pixels: bool (N, H, W).

    Only the images with at least `least` pixels on can hold such a region, so only they are
    labelled (`anomaly.postprocessing.classify` skips the others the same way): on a line where
    most images are good, most of a batch costs a sum.
    """
    on = tf.reduce_sum(tf.cast(binary, tf.float32), axis=[1, 2])
    candidates = tf.reshape(tf.where(on >= least), (-1,))
    areas = component_areas(tf.gather(binary, candidates), reducer)
    areas = tf.scatter_nd(tf.expand_dims(candidates, 1), areas, tf.cast(tf.shape(binary), tf.int64))
    return areas >= least
