"""`tf.data` pipelines over images held in memory, with seeded, stateless augmentation.

Images are decoded once and kept as one tensor, so epochs never touch the disk, unless they are
an `ImageFiles` set too large for memory: then each batch is read from its files. Shuffling and
augmentation draw from stateless random ops keyed by (seed, epoch, batch), so a run is
repeatable and a resumed run sees exactly the batches it would have seen without interruption.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from anomaly.data.io import ImageFiles


@dataclass(frozen=True)
class Augmentation:
    """The original toolkit's augmentation.

    Attributes:
        rotation: degrees, uniform in [-rotation, rotation].
        shift: fraction of width and height, uniform in [-shift, shift] on each axis.
        brightness: factor uniform in [1 - brightness, 1 + brightness], then clipped to [0, 1].
    """

    rotation: float = 5.0
    shift: float = 0.05
    brightness: float = 0.05


def _affine_transforms(seed: tf.Tensor, n: tf.Tensor, height: int, width: int,
                       aug: Augmentation) -> tf.Tensor:
    """(n, 8) projective transforms mapping output pixels to input pixels."""
    angle = tf.random.stateless_uniform([n], seed, -1.0, 1.0) * (aug.rotation * math.pi / 180.0)
    shifts = tf.random.stateless_uniform([n, 2], seed + 1, -1.0, 1.0) * aug.shift
    dx, dy = shifts[:, 0] * width, shifts[:, 1] * height
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    # x_in = cos*(x-cx) - sin*(y-cy) + cx - dx ; y_in = sin*(x-cx) + cos*(y-cy) + cy - dy
    a2 = cx - cos * cx + sin * cy - dx
    b2 = cy - sin * cx - cos * cy - dy
    zeros = tf.zeros_like(angle)
    return tf.stack([cos, -sin, a2, sin, cos, b2, zeros, zeros], axis=1)


def augment(images: tf.Tensor, seed: tf.Tensor, aug: Augmentation) -> tf.Tensor:
    """Randomly rotate, shift and brighten a batch (N, H, W, C) in [0, 1].

    Args:
        images: the batch.
        seed: int64 tensor of shape (2,), the stateless random seed for this batch.
        aug: the augmentation ranges.

    Returns:
        The augmented batch; borders are filled with the nearest pixel as in the original.
    """
    n = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    transforms = _affine_transforms(seed, n, height, width, aug)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=[height, width],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")
    factor = tf.random.stateless_uniform([n, 1, 1, 1], seed + 2,
                                         1.0 - aug.brightness, 1.0 + aug.brightness)
    return tf.clip_by_value(out * factor, 0.0, 1.0)


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Batches in one pass over the training images (the last one may be smaller)."""
    return math.ceil(n_images / batch_size)


def training_dataset(images: np.ndarray, batch_size: int, seed: int, aug: Augmentation | None,
                     first_epoch: int = 0, epochs: int = 1024) -> tf.data.Dataset:
    """Autoencoder training batches (x, x) for epochs first_epoch .. epochs-1, one after another.

    Each epoch is a seeded permutation of all images cut into `steps_per_epoch` batches.
    """
    gather = _gatherer(images)
    n = len(images)
    steps = steps_per_epoch(n, batch_size)

    def epoch_batches(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
        return batches.enumerate().map(lambda step, idx: (epoch * steps + step, idx))

    def load(step, idx):
        x = gather(idx)
        if aug is not None:
            x = augment(x, tf.stack([tf.constant(seed, tf.int64) + 7919, step]), aug)
        return x, x

    ds = tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch_batches)
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def evaluation_dataset(images, batch_size: int) -> tf.data.Dataset:
    """Batches (x, x) in order, without augmentation, for validation and prediction."""
    if isinstance(images, ImageFiles):
        gather = _gatherer(images)
        ds = tf.data.Dataset.range(len(images)).batch(batch_size).map(gather)
    else:
        ds = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    return ds.map(lambda x: (x, x)).prefetch(tf.data.AUTOTUNE)


def _gatherer(images):
    """A function from an int64 index vector to the (n, H, W, C) float32 images it names.

    Images in memory become one constant tensor; an `ImageFiles` set is read from its files per
    batch (the same pixels, so the same training), keeping memory flat for any number of images.
    """
    if not isinstance(images, ImageFiles):
        data = tf.constant(images)
        return lambda idx: tf.gather(data, idx)
    shape = images.shape[1:]

    def gather(idx):
        x = tf.numpy_function(lambda i: images[i], [idx], tf.float32, stateful=False)
        x.set_shape((None, *shape))
        return x

    return gather
