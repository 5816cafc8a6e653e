"""inceptionCAE: an autoencoder built from naive Inception modules.

Inspired by natasasdj/anomalyDetection. Each Inception module with `f`
filters runs four parallel branches (1x1 conv, 3x3 conv, 5x5 conv, and
3x3 max-pool followed by a 1x1 conv), each ending in BatchNorm and
LeakyReLU(0.1), and concatenates them into `4f` channels. Every conv has an
L2(1e-6) kernel regulariser. There is no Dense layer: the latent is the
4x4x512 map after the sixth pooling (at 256x256).

At 256x256 it has 11,521,797 parameters for grayscale (7,170 of them
non-trainable BatchNorm statistics) and 11,526,415 for RGB.
"""

import keras
from keras import layers, regularizers

from anomaly.models._shape import check_input_shape
from anomaly.models.layers import conv_bn_sigmoid_output

_L2 = 1e-6
_NEGATIVE_SLOPE = 0.1
_ENCODER_FILTERS = (32, 32, 64, 64, 128, 128)
_DECODER_FILTERS = (128, 128, 64, 64, 32, 32)
# Six 2x poolings / upsamplings.
_DOWNSAMPLING = 2 ** len(_ENCODER_FILTERS)


def _conv_bn_lrelu(x, filters, kernel_size, name):
    """Conv(L2) -> BatchNorm -> LeakyReLU(0.1)."""
    x = layers.Conv2D(
        filters,
        kernel_size,
        padding="same",
        kernel_regularizer=regularizers.L2(_L2),
        name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.LeakyReLU(negative_slope=_NEGATIVE_SLOPE, name=f"{name}_lrelu")(x)


def _inception_module(x, filters, name):
    """Naive Inception module: four branches concatenated into 4*filters channels."""
    branch_1x1 = _conv_bn_lrelu(x, filters, 1, name=f"{name}_1x1")
    branch_3x3 = _conv_bn_lrelu(x, filters, 3, name=f"{name}_3x3")
    branch_5x5 = _conv_bn_lrelu(x, filters, 5, name=f"{name}_5x5")
    branch_pool = layers.MaxPooling2D(
        3, strides=1, padding="same", name=f"{name}_pool"
    )(x)
    branch_pool = _conv_bn_lrelu(branch_pool, filters, 1, name=f"{name}_poolproj")
    return layers.Concatenate(axis=-1, name=f"{name}_concat")(
        [branch_1x1, branch_3x3, branch_5x5, branch_pool]
    )


def inception_cae(input_shape=(256, 256, 1), name="inceptionCAE"):
    """Builds the inceptionCAE convolutional autoencoder.

    Layer stack (spec section 3.3): six [Inception(f), MaxPool 2x2 stride 2]
    blocks with f = 32, 32, 64, 64, 128, 128 down to the 4x4x512 latent,
    six [Inception(f), Up(2)] blocks with f = 128, 128, 64, 64, 32, 32 back to
    256x256x128, and a Conv(C, 3) + BN + sigmoid output.

    Args:
        input_shape: `(height, width, channels)`; channels is 1 or 3, height
            and width are multiples of 64. Defaults to `(256, 256, 1)`.
        name: Name of the model.

    Returns:
        A `keras.Model` mapping images in [0, 1] to reconstructions of the
        same shape (sigmoid, float32). The layer named `"latent"` (the sixth
        encoder max-pool) outputs the `(height/64, width/64, 512)` code.

    Raises:
        ValueError: If `input_shape` is not usable by this architecture.
    """
    input_shape = tuple(input_shape)
    check_input_shape(input_shape, name, _DOWNSAMPLING)
    channels = input_shape[-1]

    inputs = keras.Input(shape=input_shape, name="input")

    # Encoder; the last pooling is the latent.
    x = inputs
    n_blocks = len(_ENCODER_FILTERS)
    for index, filters in enumerate(_ENCODER_FILTERS, start=1):
        x = _inception_module(x, filters, name=f"enc_inc{index}")
        pool_name = "latent" if index == n_blocks else f"enc_pool{index}"
        x = layers.MaxPooling2D(2, strides=2, name=pool_name)(x)

    # Decoder.
    for index, filters in enumerate(_DECODER_FILTERS, start=1):
        x = _inception_module(x, filters, name=f"dec_inc{index}")
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"dec_up{index}")(x)

    # Output.
    outputs = conv_bn_sigmoid_output(x, channels, _L2)

    return keras.Model(inputs, outputs, name=name)
