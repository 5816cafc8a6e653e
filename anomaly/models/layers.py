"""Custom layers shared by the architectures."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers, regularizers


def _phase_matrix(scale: int, kernel_size: int, strides: int) -> tuple[np.ndarray, int, int]:
    """M[a, j, t] = 1 when tap t of output phase a reads input offset j + dmin (one axis).

    With r = scale / strides output pixels per input pixel, output pixel r*i + a of a 'same'
    conv with this stride reads upsampled pixel strides*(r*i + a) + t - p, which is input
    pixel i + floor((a*strides + t - p) / scale); p is TensorFlow's 'same' padding before.
    """
    p = max(kernel_size - strides, 0) // 2
    phases = scale // strides
    offsets = [(a * strides + t - p) // scale for a in range(phases) for t in range(kernel_size)]
    dmin, dmax = min(offsets), max(offsets)
    m = np.zeros((phases, dmax - dmin + 1, kernel_size), dtype=np.float32)
    for a in range(phases):
        for t in range(kernel_size):
            m[a, (a * strides + t - p) // scale - dmin, t] = 1.0
    return m, dmin, dmax


@keras.saving.register_keras_serializable(package="anomaly")
class UpsampleConv2D(keras.layers.Layer):
    """Nearest-neighbour upsampling by `scale` followed by a 'same' Conv2D, fused.

    The weights are exactly those of the Conv2D (kernel (k, k, C_in, filters) and bias), and the
    output equals `Conv2D(UpSampling2D(x))`, but the conv runs at the input's resolution: each
    of the (scale/strides)**2 output phases is a small conv of the input with taps of the
    kernel summed together, and `depth_to_space` interleaves the phases. For mvtecCAE's
    Up(2) + 8x8 conv this does 2.5x fewer multiply-adds, for Up(4) + 4x4/2 conv 4x fewer.

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
        m, self._dmin, self._dmax = _phase_matrix(self.scale, self.kernel_size, self.strides)
        self._phases = tf.constant(m)

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", initializer="glorot_uniform",
                                      shape=(self.kernel_size, self.kernel_size, input_shape[-1], self.filters))
        self.bias = self.add_weight(name="bias", initializer="zeros", shape=(self.filters,))

    def call(self, inputs):
        s, k = self.phases, tf.cast(self.kernel, self.compute_dtype)
        phases = tf.cast(self._phases, self.compute_dtype)
        poly = tf.einsum("ayt,bxu,tuio->yxiabo", phases, phases, k)
        taps, c_in = poly.shape[0], poly.shape[2]
        poly = tf.reshape(poly, (taps, taps, c_in, s * s * self.filters))
        pad = [[0, 0], [-self._dmin, self._dmax], [-self._dmin, self._dmax], [0, 0]]
        x = tf.nn.conv2d(tf.pad(inputs, pad), poly, strides=1, padding="VALID")
        if s > 1:
            x = tf.nn.depth_to_space(x, s)
        x = tf.nn.bias_add(x, tf.cast(self.bias, self.compute_dtype))
        return self.activation(x) if self.activation is not None else x

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        r = self.phases
        return (n, None if h is None else h * r, None if w is None else w * r, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "kernel_size": self.kernel_size, "scale": self.scale, "strides": self.strides,
                       "activation": keras.activations.serialize(self.activation)})
        return config


def conv_bn_sigmoid_output(x, channels: int, l2: float):
    """The output head of baselineCAE and inceptionCAE: Conv(C, 3) with L2, BatchNorm, sigmoid.

    The sigmoid computes in float32 so the models also work under a mixed_bfloat16 policy.
    """
    x = layers.Conv2D(channels, 3, padding="same", kernel_regularizer=regularizers.L2(l2),
                      name="output_conv")(x)
    x = layers.BatchNormalization(name="output_bn")(x)
    return layers.Activation("sigmoid", dtype="float32", name="output")(x)
