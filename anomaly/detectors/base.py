"""The detector interface: every detector turns images into anomaly maps.

Everything after the map (finetuning, classification, segmentation, metrics, pictures) is
shared, so a detector only has to learn from defect-free images and produce maps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np


class Detector(ABC):
    """A trained anomaly detector.

    Attributes:
        input_shape: (H, W, C) of the images it takes, in [0, 1].
    """

    input_shape: tuple[int, int, int]
    # The maps it can make, and the finetune options used when the user names none.
    methods: tuple[str, ...]
    finetune_defaults: dict

    @abstractmethod
    def anomaly_maps(self, images: np.ndarray, method: str, dtype: str) -> np.ndarray:
        """(N, H, W) float32 maps, higher = more anomalous, for (N, H, W, C) images."""

    @classmethod
    @abstractmethod
    def load(cls, model_dir: Path, model_file: Path) -> "Detector":
        """Load a detector saved in a model directory."""
