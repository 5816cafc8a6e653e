"""mvtecCAE: the SSIM-autoencoder variant used by the original toolkit.

Adapted from Bergmann et al.'s SSIM-AE (through a third-party notebook) with
the original toolkit's changes: 256 px input, ReLU instead of LeakyReLU, an
8x8x1 convolutional latent and a decoder made of upsampling + strided-conv
pairs. No BatchNorm and no regularisation; every hidden activation is ReLU.

At 256x256 it has 746,210 (grayscale) / 751,332 (RGB) parameters, all
trainable.
"""

import keras
from keras import layers

from anomaly.models._shape import check_input_shape
from anomaly.models.layers import UpsampleConv2D

# Total downsampling factor between the input and the latent map.
_DOWNSAMPLING = 32


def _conv(x, filters, kernel_size, strides, name, activation="relu", dtype=None):
    """Conv2D with `same` padding and Keras default initialisers."""
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        activation=activation,
        dtype=dtype,
        name=name,
    )(x)


def _up_conv(x, size, filters, kernel_size, strides, index, activation="relu", dtype=None, name=None):
    """Nearest-neighbour upsampling by `size`, then a conv, fused into one layer.

    `UpsampleConv2D` has the Conv2D's weights and computes the same function at the lower
    resolution: the Up(2) + 8x8 convs near full resolution, 80 % of the multiply-adds of the
    plain graph, become 2.5x cheaper.
    """
    return UpsampleConv2D(filters, kernel_size, scale=size, strides=strides, activation=activation,
                          dtype=dtype, name=name or f"dec_conv{index}")(x)


def mvtec_cae(input_shape=(256, 256, 1), name="mvtecCAE"):
    """Builds the mvtecCAE convolutional autoencoder.

    Layer stack at 256x256 (spec section 3.1): nine ReLU encoder convs down
    to 8x8x32, a linear Conv(1, 8) latent of 8x8x1, then a decoder of
    Conv / Up(n)+Conv pairs back to 256x256 and a sigmoid Conv(C, 8). Each
    Up(n)+Conv pair is one `UpsampleConv2D` layer: the same weights and
    outputs, computed at the lower resolution.

    Args:
        input_shape: `(height, width, channels)`; channels is 1 or 3, height
            and width are multiples of 32. Defaults to `(256, 256, 1)`.
        name: Name of the model.

    Returns:
        A `keras.Model` mapping images in [0, 1] to reconstructions of the
        same shape (sigmoid, float32). The layer named `"latent"` outputs the
        `(height/32, width/32, 1)` code.

    Raises:
        ValueError: If `input_shape` is not usable by this architecture.
    """
    input_shape = tuple(input_shape)
    check_input_shape(input_shape, name, _DOWNSAMPLING)
    channels = input_shape[-1]

    inputs = keras.Input(shape=input_shape, name="input")

    # Encoder.
    x = _conv(inputs, 32, 4, 2, name="enc_conv1")
    x = _conv(x, 32, 4, 2, name="enc_conv2")
    x = _conv(x, 32, 4, 2, name="enc_conv3")
    x = _conv(x, 32, 3, 1, name="enc_conv4")
    x = _conv(x, 64, 4, 2, name="enc_conv5")
    x = _conv(x, 64, 3, 1, name="enc_conv6")
    x = _conv(x, 128, 4, 2, name="enc_conv7")
    x = _conv(x, 64, 3, 1, name="enc_conv8")
    x = _conv(x, 32, 3, 1, name="enc_conv9")

    # Latent: linear conv with a single filter.
    x = _conv(x, 1, 8, 1, name="latent", activation=None)

    # Decoder.
    x = _conv(x, 32, 3, 1, name="dec_conv1")
    x = _conv(x, 64, 3, 1, name="dec_conv2")
    x = _up_conv(x, 2, 128, 4, 2, index=3)
    x = _up_conv(x, 2, 64, 3, 1, index=4)
    x = _up_conv(x, 2, 64, 4, 2, index=5)
    x = _up_conv(x, 2, 32, 3, 1, index=6)
    x = _up_conv(x, 2, 32, 4, 2, index=7)
    x = _up_conv(x, 4, 32, 4, 2, index=8)
    x = _up_conv(x, 2, 32, 8, 1, index=9)

    # Output.
    outputs = _up_conv(x, 2, channels, 8, 1, index=None, activation="sigmoid", dtype="float32",
                       name="output")

    return keras.Model(inputs, outputs, name=name)
