"""skipCAE: a strided-conv autoencoder with two additive skip connections.

Inspired by the "skip connections to enhance denoising autoencoders" blog
post. Eight Conv(3x3, stride 2) + LeakyReLU layers shrink the image to
1x1x256 (at 256x256), a Dense(64, ReLU) layer is the latent, and nine 3x3
transposed convs grow it back. The pre-activation outputs of encoder convs
3 and 5 are added to the decoder maps of the same size, each sum followed by
LeakyReLU then BatchNorm. LeakyReLU keeps the Keras default slope, 0.3.
There is no regularisation.

At 256x256 it has 2,967,041 parameters for grayscale (384 of them
non-trainable BatchNorm statistics) and 2,968,195 for RGB.
"""

import math

import keras
from keras import layers

from anomaly.models._shape import check_input_shape

_NEGATIVE_SLOPE = 0.3
_ENCODER_FILTERS = (32, 32, 64, 64, 128, 128, 256, 256)
_LATENT_DIM = 64
# Encoder convs (1-based) whose pre-activation outputs feed the skips.
_SKIP1_CONV = 3
_SKIP2_CONV = 5
# Decoder transposed convs after the stride-1 one: (filters, encoder level
# whose size they restore). Level k is the output of encoder conv k, level 0
# the input. None stands for the image channel count.
_DECODER_STEPS = (
    (256, 7),
    (128, 6),
    (128, 5),  # + skip 2
    (64, 4),
    (64, 3),  # + skip 1
    (32, 2),
    (32, 1),
    (None, 0),  # output
)


def _side_sizes(side):
    """Sizes of one spatial side after each `same`-padded stride-2 conv."""
    sizes = [side]
    for _ in _ENCODER_FILTERS:
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


def _check_input_shape(input_shape, name):
    """Validates `input_shape`; returns the per-level (height, width) sizes."""
    height, width, _ = check_input_shape(input_shape, name)
    for side in (height, width):
        # The decoder undoes each encoder stride exactly, so every halving
        # must be exact (or a 1-pixel side staying 1): each side must be a
        # multiple of 256, or a power of two below it (e.g. 64 or 128).
        valid = side is not None and side > 0
        if valid:
            valid = all(n % 2 == 0 or n == 1 for n in _side_sizes(side)[:-1])
        if not valid:
            raise ValueError(
                f"{name}: height and width must each be a multiple of "
                f"{2 ** len(_ENCODER_FILTERS)} or a power of two, "
                f"got {height}x{width}"
            )
    return list(zip(_side_sizes(height), _side_sizes(width)))


def _lrelu(x, name):
    return layers.LeakyReLU(negative_slope=_NEGATIVE_SLOPE, name=name)(x)


def _skip_merge(x, skip, name):
    """Adds an encoder skip, then LeakyReLU, then BatchNorm."""
    x = layers.Add(name=f"{name}_add")([skip, x])
    x = _lrelu(x, name=f"{name}_lrelu")
    return layers.BatchNormalization(name=f"{name}_bn")(x)


def skip_cae(input_shape=(256, 256, 1), name="skipCAE"):
    """Builds the skipCAE convolutional autoencoder.

    Layer stack (spec section 3.5): eight Conv(f, 3, 2) + LeakyReLU layers
    (f = 32, 32, 64, 64, 128, 128, 256, 256), Flatten, Dense(64, ReLU) as the
    latent, Dense(ReLU) back to the flattened size and a reshape, then a
    stride-1 ConvT(256) and eight strided 3x3 ConvTs (256, 128, 128, 64, 64,
    32, 32, C), with the skips from encoder convs 5 and 3 added after the
    third and fifth strided ones, and a sigmoid output.

    Each decoder stride undoes the matching encoder stride, so below 256 px,
    where the encoder's last convs work on a 1x1 map, the corresponding
    decoder convs use stride 1 instead of 2; at 256x256 every stride is 2,
    as in the spec.

    Args:
        input_shape: `(height, width, channels)`; channels is 1 or 3, height
            and width are multiples of 256 or powers of two (e.g. 64, 128).
            Defaults to `(256, 256, 1)`.
        name: Name of the model.

    Returns:
        A `keras.Model` mapping images in [0, 1] to reconstructions of the
        same shape (sigmoid, float32). The layer named `"latent"` outputs the
        64-d code.

    Raises:
        ValueError: If `input_shape` is not usable by this architecture.
    """
    input_shape = tuple(input_shape)
    sizes = _check_input_shape(input_shape, name)
    channels = input_shape[-1]

    inputs = keras.Input(shape=input_shape, name="input")

    # Encoder.
    x = inputs
    skips = {}
    for index, filters in enumerate(_ENCODER_FILTERS, start=1):
        x = layers.Conv2D(
            filters, 3, strides=2, padding="same", name=f"enc_conv{index}"
        )(x)
        skips[index] = x  # pre-activation output
        x = _lrelu(x, name=f"enc_lrelu{index}")

    # Bottleneck.
    bottom_shape = tuple(x.shape[1:])
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(_LATENT_DIM, activation="relu", name="latent")(x)
    x = layers.Dense(math.prod(bottom_shape), activation="relu", name="dec_dense")(x)
    x = layers.Reshape(bottom_shape, name="reshape")(x)

    # Decoder.
    x = layers.Conv2DTranspose(256, 3, padding="same", name="dec_tconv1")(x)
    x = _lrelu(x, name="dec_lrelu1")
    for index, (filters, level) in enumerate(_DECODER_STEPS, start=2):
        (in_h, in_w), (out_h, out_w) = sizes[level + 1], sizes[level]
        strides = (out_h // in_h, out_w // in_w)
        if level == 0:
            x = layers.Conv2DTranspose(
                channels,
                3,
                strides=strides,
                padding="same",
                activation="sigmoid",
                dtype="float32",
                name="output",
            )(x)
            continue
        x = layers.Conv2DTranspose(
            filters, 3, strides=strides, padding="same", name=f"dec_tconv{index}"
        )(x)
        if level == _SKIP2_CONV:
            x = _skip_merge(x, skips[_SKIP2_CONV], name="dec_skip2")
        elif level == _SKIP1_CONV:
            x = _skip_merge(x, skips[_SKIP1_CONV], name="dec_skip1")
        else:
            x = _lrelu(x, name=f"dec_lrelu{index}")

    return keras.Model(inputs, x, name=name)
