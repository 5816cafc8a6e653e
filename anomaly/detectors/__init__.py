"""Detectors by name: the five autoencoders and the pixel-gaussian baseline."""

from __future__ import annotations

from pathlib import Path

from anomaly.errors import AnomalyError
from anomaly.models import list_architectures

BASELINES = ("pixel-gaussian",)


def list_detectors() -> list[str]:
    """Every name `-a/--architecture` accepts."""
    return [*list_architectures(), *BASELINES]


def is_autoencoder(name: str) -> bool:
    return name in list_architectures()


def detector_class(name: str):
    """The class implementing a detector name."""
    if is_autoencoder(name):
        from anomaly.detectors.autoencoder import AutoencoderDetector

        return AutoencoderDetector
    if name == "pixel-gaussian":
        from anomaly.detectors.pixel_gaussian import PixelGaussianDetector

        return PixelGaussianDetector
    raise AnomalyError(f"--architecture: unknown architecture '{name}': expected one of {', '.join(list_detectors())}")


def load_detector(config, model_file: Path):
    """Load the detector saved in `model_file` for the configuration it was trained with."""
    return detector_class(config.architecture).load(config, model_file)
