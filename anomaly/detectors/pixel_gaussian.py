"""pixel-gaussian: the baseline every learned detector must beat.

Per-pixel mean and standard deviation of the (preprocessed) training images; the map is the
absolute z-score |x - mean| / std, averaged over channels. It works only where products are
aligned, which is exactly what makes it an honest yardstick for the autoencoders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anomaly.arrays import load_npz
from anomaly.detectors.base import Detector
from anomaly.errors import AnomalyError


class PixelGaussianDetector(Detector):
    """Per-pixel Gaussian model of defect-free images.

    Args:
        input_shape: (H, W, C) of the images.
        std_floor: lower bound on the standard deviation, so pixels that never vary in
            training (a flat background) do not turn sensor noise into huge scores.
    """

    methods = ("zscore",)
    file_suffix = ".npz"
    finetune_defaults = {"method": "zscore", "smooth": 0.0, "normalize": False}

    def __init__(self, input_shape: tuple[int, int, int], std_floor: float = 0.01):
        self.input_shape = tuple(input_shape)
        self.std_floor = std_floor

    @classmethod
    def from_config(cls, config) -> "PixelGaussianDetector":
        return cls(config.input_shape)

    def fit(self, images: np.ndarray, validation: np.ndarray | None = None) -> "PixelGaussianDetector":
        """Learn `mean_` and `std_` (H, W, C) from defect-free images in [0, 1]."""
        images = np.asarray(images, dtype=np.float64)
        self.mean_ = images.mean(axis=0).astype(np.float32)
        self.std_ = np.maximum(images.std(axis=0), self.std_floor).astype(np.float32)
        return self

    def anomaly_maps(self, images: np.ndarray, method: str = "zscore", dtype: str = "float64",
                     batch_size: int = 64, return_reconstructions: bool = False):
        """(N, H, W) absolute z-scores; the "reconstruction" is the mean image."""
        if method not in self.methods or dtype != "float64":
            raise AnomalyError(f"--method/--dtype: pixel-gaussian maps are zscore/float64, got {method}/{dtype}")
        maps = (np.abs(np.asarray(images, np.float32) - self.mean_) / self.std_).mean(axis=-1)
        if return_reconstructions:
            return maps, np.broadcast_to(self.mean_, np.shape(images)).copy()
        return maps

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean_, std=self.std_, std_floor=self.std_floor)

    @classmethod
    def load(cls, config, model_file: Path) -> "PixelGaussianDetector":
        try:
            with load_npz(model_file) as data:
                det = cls(tuple(data["mean"].shape), float(data["std_floor"]))
                det.mean_, det.std_ = data["mean"], data["std"]
        except (OSError, KeyError, ValueError) as exc:
            raise AnomalyError(f"-p {model_file}: cannot load pixel-gaussian statistics ({exc})") from None
        if det.input_shape != tuple(config.input_shape):
            raise AnomalyError(f"-p {model_file}: statistics {det.input_shape} do not match config.yaml {config.input_shape}")
        return det
