"""baselineCAE: a plain conv / BatchNorm / LeakyReLU autoencoder with a dense latent.

Inspired by natasasdj/anomalyDetection. Every conv is 3x3, `same`, with an
L2(1e-6) kernel regulariser, followed by BatchNorm and LeakyReLU(0.1). The
encoder halves the map six times with max-pooling, a Dense layer gives a
64-d latent, and the decoder grows the map back with six Up(2) blocks.

At 256x256 it has 712,197 parameters for grayscale (710,403 trainable and
1,794 BatchNorm statistics) and 713,359 for RGB.
"""

import keras
from keras import layers, regularizers

from anomaly.models._shape import check_input_shape
from anomaly.models.layers import conv_bn_sigmoid_output

_L2 = 1e-6
_NEGATIVE_SLOPE = 0.1
_LATENT_DIM = 64
_ENCODER_FILTERS = (32, 32, 64, 64, 128, 128)
_DECODER_FILTERS = (128, 128, 64, 64, 32, 32)
# Six 2x poolings / upsamplings.
_DOWNSAMPLING = 2 ** len(_ENCODER_FILTERS)


def _check_input_shape(input_shape, name):
    """Validates `input_shape`; returns the decoder's starting map shape."""
    height, width, _ = check_input_shape(input_shape, name, _DOWNSAMPLING)
    # The 64-d latent is reshaped to (height/64, width/64, depth) so that six
    # Up(2) blocks restore the input size; at 256x256 that is 4x4x4.
    seed_h, seed_w = height // _DOWNSAMPLING, width // _DOWNSAMPLING
    if _LATENT_DIM % (seed_h * seed_w):
        raise ValueError(
            f"{name}: the {_LATENT_DIM}-d latent cannot be reshaped to a "
            f"{seed_h}x{seed_w} map (height/{_DOWNSAMPLING} * width/{_DOWNSAMPLING} "
            f"must divide {_LATENT_DIM}), got {height}x{width}"
        )
    return seed_h, seed_w, _LATENT_DIM // (seed_h * seed_w)


def _conv_bn_lrelu(x, filters, prefix, index):
    """Conv(3x3, L2) -> BatchNorm -> LeakyReLU(0.1)."""
    x = layers.Conv2D(
        filters,
        3,
        padding="same",
        kernel_regularizer=regularizers.L2(_L2),
        name=f"{prefix}_conv{index}",
    )(x)
    x = layers.BatchNormalization(name=f"{prefix}_bn{index}")(x)
    return layers.LeakyReLU(
        negative_slope=_NEGATIVE_SLOPE, name=f"{prefix}_lrelu{index}"
    )(x)


def _encoder_block(x, filters, index):
    x = _conv_bn_lrelu(x, filters, "enc", index)
    return layers.MaxPooling2D(2, padding="same", name=f"enc_pool{index}")(x)


def _decoder_block(x, filters, index):
    x = _conv_bn_lrelu(x, filters, "dec", index)
    return layers.UpSampling2D(2, interpolation="nearest", name=f"dec_up{index}")(x)


def baseline_cae(input_shape=(256, 256, 1), name="baselineCAE"):
    """Builds the baselineCAE convolutional autoencoder.

    Layer stack (spec section 3.2): six [Conv, BN, LeakyReLU, MaxPool] blocks
    (32, 32, 64, 64, 128, 128 filters), Flatten, Dense(64) + LeakyReLU as the
    latent, a reshape to `(height/64, width/64, 64 / (height/64 * width/64))`
    (4x4x4 at 256x256), six [Conv, BN, LeakyReLU, Up(2)] blocks (128, 128,
    64, 64, 32, 32 filters) and a Conv(C, 3) + BN + sigmoid output.

    Args:
        input_shape: `(height, width, channels)`; channels is 1 or 3, height
            and width are multiples of 64 and `(height/64) * (width/64)`
            divides 64 (e.g. 64, 128, 256 or 512 px squares).
            Defaults to `(256, 256, 1)`.
        name: Name of the model.

    Returns:
        A `keras.Model` mapping images in [0, 1] to reconstructions of the
        same shape (sigmoid, float32). The layer named `"latent"` outputs the
        64-d code (after its LeakyReLU).

    Raises:
        ValueError: If `input_shape` is not usable by this architecture.
    """
    input_shape = tuple(input_shape)
    seed_shape = _check_input_shape(input_shape, name)
    channels = input_shape[-1]

    inputs = keras.Input(shape=input_shape, name="input")

    # Encoder.
    x = inputs
    for index, filters in enumerate(_ENCODER_FILTERS, start=1):
        x = _encoder_block(x, filters, index)

    # Latent.
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(
        _LATENT_DIM, kernel_regularizer=regularizers.L2(_L2), name="latent_dense"
    )(x)
    x = layers.LeakyReLU(negative_slope=_NEGATIVE_SLOPE, name="latent")(x)
    x = layers.Reshape(seed_shape, name="reshape")(x)

    # Decoder.
    for index, filters in enumerate(_DECODER_FILTERS, start=1):
        x = _decoder_block(x, filters, index)

    # Output.
    outputs = conv_bn_sigmoid_output(x, channels, _L2)

    return keras.Model(inputs, outputs, name=name)
