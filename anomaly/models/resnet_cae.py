"""resnetCAE: a custom "ResNet-18" encoder with a transposed-conv decoder.

The encoder is adapted from raghakot/keras-resnet as the original toolkit
modified it, and it deliberately keeps that toolkit's behaviour (spec
section 3.4 and quirk 17), which differs from a standard ResNet-18:

- blocks merge the shortcut and the residual by **concatenation**, so every
  block outputs twice its filter count;
- the last stage returns only its shortcut path: block 1 is a single
  1x1 stride-2 conv and block 2 is the identity, so that stage's 3x3 convs
  are not part of the model;
- there is no final BN-ReLU.

Encoder convs use he_normal init and L2(1e-4). A two-layer 1x1 ReLU
bottleneck gives the 8x8x512 latent (at 256x256). The decoder has four
up-blocks `a + b` with `a = ConvT(f, 4, 2)` and
`b = BN-ReLU-ConvT(f, 3, 1)-BN-ReLU (a)`, and a sigmoid ConvT(C, 4, 2) output;
decoder layers have no regulariser.

At 256x256 it has 15,018,305 parameters for grayscale (8,320 of them
non-trainable BatchNorm statistics) and 15,026,627 for RGB.
"""

import keras
from keras import layers, regularizers

from anomaly.models._shape import check_input_shape

_L2 = 1e-4
_STAGE_FILTERS = (64, 128, 256, 512)
_BLOCKS_PER_STAGE = 2
_DECODER_FILTERS = (512, 256, 128, 64)
# Stem (conv stride 2 + max-pool stride 2) and three strided stages.
_DOWNSAMPLING = 32


def _encoder_conv(x, filters, kernel_size, strides, name, padding="same"):
    """Encoder conv: he_normal init and L2(1e-4) on the kernel."""
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        kernel_initializer="he_normal",
        kernel_regularizer=regularizers.L2(_L2),
        name=name,
    )(x)


def _bn_relu(x, name):
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _shortcut(x, filters, strides, name):
    """Identity when the shapes already match, else a 1x1 `valid` projection."""
    if strides == 1 and x.shape[-1] == filters:
        return x
    return _encoder_conv(x, filters, 1, strides, name=f"{name}_shortcut", padding="valid")


def _basic_block(x, filters, strides, name, first_block_of_network=False):
    """Pre-activation basic block that concatenates shortcut and residual."""
    if first_block_of_network:
        residual = _encoder_conv(x, filters, 3, strides, name=f"{name}_conv1")
    else:
        residual = _bn_relu(x, name=f"{name}_1")
        residual = _encoder_conv(residual, filters, 3, strides, name=f"{name}_conv1")
    residual = _bn_relu(residual, name=f"{name}_2")
    residual = _encoder_conv(residual, filters, 3, 1, name=f"{name}_conv2")
    shortcut = _shortcut(x, filters, strides, name)
    return layers.Concatenate(axis=-1, name=f"{name}_concat")([shortcut, residual])


def _last_stage_block(x, filters, strides, name):
    """Block of the stage flagged "last": only the shortcut path is kept.

    The residual branch of the original (BN-ReLU-Conv3x3 twice) is computed
    but never connected to the output, so it is left out here; the result is
    the same graph and the same parameter count.
    """
    return _shortcut(x, filters, strides, name)


def _encoder(x):
    # Stem: 256 -> 128 -> 64 (at 256x256).
    x = _encoder_conv(x, 64, 7, 2, name="enc_stem_conv")
    x = _bn_relu(x, name="enc_stem")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="enc_stem_pool")(x)

    last_stage = len(_STAGE_FILTERS)
    for stage, filters in enumerate(_STAGE_FILTERS, start=1):
        for block in range(1, _BLOCKS_PER_STAGE + 1):
            strides = 2 if (block == 1 and stage > 1) else 1
            block_name = f"enc_stage{stage}_block{block}"
            if stage == last_stage:
                x = _last_stage_block(x, filters, strides, block_name)
            else:
                x = _basic_block(
                    x,
                    filters,
                    strides,
                    block_name,
                    first_block_of_network=(stage == 1 and block == 1),
                )
    return x


def _decoder_block(x, filters, index):
    """a = ConvT(f, 4, 2); b = BN-ReLU-ConvT(f, 3, 1)-BN-ReLU(a); returns a + b."""
    a = layers.Conv2DTranspose(
        filters, 4, strides=2, padding="same", name=f"dec{index}_tconv1"
    )(x)
    b = layers.BatchNormalization(name=f"dec{index}_bn1")(a)
    b = layers.ReLU(name=f"dec{index}_relu1")(b)
    b = layers.Conv2DTranspose(
        filters, 3, strides=1, padding="same", name=f"dec{index}_tconv2"
    )(b)
    b = layers.BatchNormalization(name=f"dec{index}_bn2")(b)
    b = layers.ReLU(name=f"dec{index}_relu2")(b)
    return layers.Add(name=f"dec{index}_add")([a, b])


def resnet_cae(input_shape=(256, 256, 1), name="resnetCAE"):
    """Builds the resnetCAE convolutional autoencoder.

    Layer stack (spec section 3.4): the concatenating ResNet-18-style encoder
    down to 8x8x512, two Conv(512, 1) ReLU layers (the second is the latent),
    four transposed-conv up-blocks (512, 256, 128, 64 filters) up to 128x128
    and a sigmoid ConvT(C, 4, 2) output.

    Args:
        input_shape: `(height, width, channels)`; channels is 1 or 3, height
            and width are multiples of 32. Defaults to `(256, 256, 1)`.
        name: Name of the model.

    Returns:
        A `keras.Model` mapping images in [0, 1] to reconstructions of the
        same shape (sigmoid, float32). The layer named `"latent"` outputs the
        `(height/32, width/32, 512)` code.

    Raises:
        ValueError: If `input_shape` is not usable by this architecture.
    """
    input_shape = tuple(input_shape)
    check_input_shape(input_shape, name, _DOWNSAMPLING)
    channels = input_shape[-1]

    inputs = keras.Input(shape=input_shape, name="input")

    x = _encoder(inputs)

    # Bottleneck (Keras default init, no regulariser).
    x = layers.Conv2D(512, 1, activation="relu", name="bottleneck_conv")(x)
    x = layers.Conv2D(512, 1, activation="relu", name="latent")(x)

    # Decoder.
    for index, filters in enumerate(_DECODER_FILTERS, start=1):
        x = _decoder_block(x, filters, index)

    # Output.
    outputs = layers.Conv2DTranspose(
        channels,
        4,
        strides=2,
        padding="same",
        activation="sigmoid",
        dtype="float32",
        name="output",
    )(x)

    return keras.Model(inputs, outputs, name=name)
