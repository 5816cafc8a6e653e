"""Detectors by name: the five autoencoders, the pixel-gaussian baseline and the feature detectors."""

from __future__ import annotations

import importlib
from pathlib import Path

from anomaly.errors import AnomalyError
from anomaly.models import list_architectures

BASELINES = ("pixel-gaussian",)
# name -> (module, class) of the detectors that read a pretrained backbone.
FEATURE_DETECTORS = {
    "patchcore": ("anomaly.detectors.patchcore", "PatchCoreDetector"),
    "padim": ("anomaly.detectors.padim", "PaDiMDetector"),
    "fre": ("anomaly.detectors.fre", "FREDetector"),
    "fre-tae": ("anomaly.detectors.fre", "TiedAutoencoderFRE"),
    "knn": ("anomaly.detectors.image_level", "KNNDetector"),
    "kmeans": ("anomaly.detectors.image_level", "KMeansDetector"),
    "feature-ae": ("anomaly.detectors.feature_ae", "FeatureAEDetector"),
    "cutpaste": ("anomaly.detectors.cutpaste", "CutPasteDetector"),
}
_OTHERS = {"pixel-gaussian": ("anomaly.detectors.pixel_gaussian", "PixelGaussianDetector"), **FEATURE_DETECTORS}


def list_detectors() -> list[str]:
    """Every name `-a/--architecture` accepts."""
    return [*list_architectures(), *BASELINES, *FEATURE_DETECTORS]


def is_autoencoder(name: str) -> bool:
    return name in list_architectures()


def uses_backbone(name: str) -> bool:
    """Whether a detector reads a pretrained backbone (`--backbone`)."""
    return name in FEATURE_DETECTORS


def detector_class(name: str):
    """The class implementing a detector name."""
    if is_autoencoder(name):
        from anomaly.detectors.autoencoder import AutoencoderDetector

        return AutoencoderDetector
    if name in _OTHERS:
        module, cls = _OTHERS[name]
        return getattr(importlib.import_module(module), cls)
    raise AnomalyError(f"--architecture: unknown architecture '{name}': expected one of {', '.join(list_detectors())}")


def load_detector(config, model_file: Path):
    """Load the detector saved in `model_file` for the configuration it was trained with."""
    return detector_class(config.architecture).load(config, model_file)
