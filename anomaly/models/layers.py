"""Custom layers shared by the architectures."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers, regularizers


def _phase_matrix(scale: int, kernel_size: int, strides: int, block: int = 1) -> tuple[np.ndarray, int]:
    """M[a, J, c, t] = 1 when tap t of output phase a reads input pixel block*J + c of the padded input (one axis).

    With r = scale / strides output pixels per input pixel, the input is read in blocks of `block`
    pixels, each giving r * block output pixels (phases). Output pixel r*block*I + a of a 'same'
    conv with this stride reads upsampled pixel strides*(r*block*I + a) + t - p, which is input
    pixel block*I + floor((a*strides + t - p) / scale); p is TensorFlow's 'same' padding before.
    Returns M, shape (r*block, taps, block, kernel_size), and the input's padding before.
    """
    p = max(kernel_size - strides, 0) // 2
    phases = scale // strides * block
    offsets = [(a * strides + t - p) // scale for a in range(phases) for t in range(kernel_size)]
    dmin, dmax = min(offsets), max(offsets)
    taps = -(-(dmax - dmin + 1) // block)
    m = np.zeros((phases, taps, block, kernel_size), dtype=np.float32)
    for a in range(phases):
        for t in range(kernel_size):
            o = (a * strides + t - p) // scale - dmin
            m[a, o // block, o % block, t] = 1.0
    return m, -dmin


# A fused conv with fewer output channels (phases x filters) than this runs on blocks of input
# pixels: a conv with 4 output channels (mvtecCAE's grayscale output: 2 x 2 phases, 1 filter)
# is far from any fast kernel; without oneDNN its forward and backward passes reach 10-15 GFLOP/s
# on an AMD EPYC, against ~200 for a matrix product. In 2 x 2 blocks it has 16 (and 4x the input
# channels): 1.7x faster without oneDNN, 1.4-1.6x with it, despite 1.4x the multiply-adds. The RGB
# output's 12 channels stay unblocked: blocks made it faster without oneDNN but slower with it.
_MIN_CONV_CHANNELS = 8


def _block_factor(height, width, conv_channels: int) -> int:
    """Pixels per side of the input blocks `fused_upsample_conv` reads at once (1: no blocks)."""
    if conv_channels >= _MIN_CONV_CHANNELS or not height or not width or height % 2 or width % 2:
        return 1
    return 2


def fused_upsample_conv(x, kernel, scale: int, strides: int, block: int = 1):
    """`Conv2D(UpSampling2D(x, scale), kernel, strides, 'same')` without the bias, computed at x's resolution.

    Each of the (r*block)**2 output phases of a block of block x block input pixels (r = scale /
    strides) is a conv of the input with taps of the kernel summed together; `space_to_depth`
    gathers the blocks (block > 1) and `depth_to_space` interleaves the phases.

    Args:
        x: (N, H, W, C_in); H and W multiples of `block`.
        kernel: (k, k, C_in, filters), the Conv2D's kernel.
        scale, strides: the upsampling factor and the conv's stride (`scale` a multiple of it).
        block: input pixels per block side.
    """
    k, c_in, filters = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    m, before = _phase_matrix(scale, k, strides, block)
    phases, taps = m.shape[0], m.shape[1]
    m = tf.constant(m, kernel.dtype)
    poly = tf.einsum("aJct,bKdu,tuio->JKcdiabo", m, m, kernel)
    poly = tf.reshape(poly, (taps, taps, block * block * c_in, phases * phases * filters))
    # Padded to `block` * (blocks + taps - 1) pixels: a VALID conv over blocks then gives H / block.
    extra = block * (taps - 1)
    pads = [[0, 0], [before, max(extra - before, 0)], [before, max(extra - before, 0)], [0, 0]]
    shape = tf.shape(x)
    x = tf.pad(x, pads)
    if extra < before:  # trailing pixels no tap reads
        x = x[:, :shape[1] + extra, :shape[2] + extra]
    if block > 1:
        x = tf.nn.space_to_depth(x, block)
    x = tf.nn.conv2d(x, poly, strides=1, padding="VALID")
    return tf.nn.depth_to_space(x, phases) if phases > 1 else x


@keras.saving.register_keras_serializable(package="anomaly")
class UpsampleConv2D(keras.layers.Layer):
    """Nearest-neighbour upsampling by `scale` followed by a 'same' Conv2D, fused.

    The weights are exactly those of the Conv2D (kernel (k, k, C_in, filters) and bias), and the
    output equals `Conv2D(UpSampling2D(x))`, but the conv runs at the input's resolution: each
    of the (scale/strides)**2 output phases is a small conv of the input with taps of the
    kernel summed together, and `depth_to_space` interleaves the phases. For mvtecCAE's
    Up(2) + 8x8 conv this does 2.5x fewer multiply-adds, for Up(4) + 4x4/2 conv 4x fewer.
    When that conv would have fewer than 8 output channels (a 1-filter output layer), it runs
    on 2 x 2 blocks of input pixels instead (`fused_upsample_conv`), which is faster.

    Args:
        filters: output channels.
        kernel_size: side of the square kernel of the equivalent Conv2D.
        scale: the upsampling factor.
        strides: the conv's stride; `scale` must be a multiple of it.
        activation: activation applied to the output.
    """

    def __init__(self, filters: int, kernel_size: int, scale: int = 2, strides: int = 1, activation=None,
                 **kwargs):
        super().__init__(**kwargs)
        if scale % strides:
            raise ValueError(f"UpsampleConv2D: scale {scale} is not a multiple of strides {strides}")
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.scale = int(scale)
        self.strides = int(strides)
        self.phases = self.scale // self.strides
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", initializer="glorot_uniform",
                                      shape=(self.kernel_size, self.kernel_size, input_shape[-1], self.filters))
        self.bias = self.add_weight(name="bias", initializer="zeros", shape=(self.filters,))

    def call(self, inputs):
        block = _block_factor(inputs.shape[1], inputs.shape[2], self.phases ** 2 * self.filters)
        x = fused_upsample_conv(inputs, tf.cast(self.kernel, self.compute_dtype), self.scale, self.strides, block)
        x = tf.nn.bias_add(x, tf.cast(self.bias, self.compute_dtype))
        return self.activation(x) if self.activation is not None else x

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        r = self.phases
        return (n, None if h is None else h * r, None if w is None else w * r, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "kernel_size": self.kernel_size, "scale": self.scale,
                       "strides": self.strides, "activation": keras.activations.serialize(self.activation)})
        return config


def conv_bn_sigmoid_output(x, channels: int, l2: float):
    """The output head of baselineCAE and inceptionCAE: Conv(C, 3) with L2, BatchNorm, sigmoid.

    The sigmoid computes in float32 so the models also work under a mixed_bfloat16 policy.
    """
    x = layers.Conv2D(channels, 3, padding="same", kernel_regularizer=regularizers.L2(l2),
                      name="output_conv")(x)
    x = layers.BatchNormalization(name="output_bn")(x)
    return layers.Activation("sigmoid", dtype="float32", name="output")(x)
