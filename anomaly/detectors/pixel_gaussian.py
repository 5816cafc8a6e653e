"""pixel-gaussian: the baseline every learned detector must beat.

Per-pixel mean and standard deviation of the (preprocessed) training images; the map is the
absolute z-score |x - mean| / std, averaged over channels. It works only where products are
aligned, which is exactly what makes it an honest yardstick for the autoencoders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anomaly.arrays import load_npz
from anomaly.detectors.base import Detector, register
from anomaly.errors import AnomalyError


@register
class PixelGaussianDetector(Detector):
    """Per-pixel Gaussian model of defect-free images.

    Args:
        input_shape: (H, W, C) of the images.
        std_floor: lower bound on the standard deviation, so pixels that never vary in
            training (a flat background) do not turn sensor noise into huge scores.
    """

    name = "pixel-gaussian"
    family = "baseline"
    methods = ("zscore",)
    file_suffix = ".npz"
    finetune_defaults = {"method": "zscore", "smooth": 0.0, "normalize": False}

    def __init__(self, input_shape=(256, 256, 1), std_floor: float = 0.01):
        self.input_shape = tuple(input_shape)
        self.std_floor = std_floor

    def fit(self, train_images: np.ndarray, validation_images: np.ndarray | None = None,
            progress: bool = False) -> PixelGaussianDetector:
        """Learn `mean_` and `std_` (H, W, C) from defect-free images in [0, 1]."""
        from anomaly.data.io import batches

        # Streamed in batches, merged by Chan et al.'s pairwise update of the mean and squared deviations.
        count, mean, squares = 0, 0.0, 0.0
        for batch in batches(self.prepare(train_images), 64):
            x = self.prepare(batch).astype(np.float64)
            n, m = len(x), x.mean(axis=0)
            total = count + n
            squares = squares + ((x - m) ** 2).sum(axis=0) + (m - mean) ** 2 * (count * n / total)
            mean = mean + (m - mean) * (n / total)
            count = total
        self.mean_ = np.asarray(mean).astype(np.float32)
        self.std_ = np.maximum(np.sqrt(squares / count), self.std_floor).astype(np.float32)
        return self

    def _anomaly_maps(self, images: np.ndarray, method: str, dtype: str, return_reconstructions: bool = False):
        """(N, H, W) absolute z-scores; the "reconstruction" is the mean image."""
        if dtype != "float64":
            raise AnomalyError(f"dtype: pixel-gaussian maps are float64, got {dtype}")
        maps = (np.abs(images - self.mean_) / self.std_).mean(axis=-1)
        if return_reconstructions:
            return maps, np.broadcast_to(self.mean_, np.shape(images)).copy()
        return maps

    def map_function(self, method: str, dtype: str):
        """`_anomaly_maps` in TensorFlow (see `Detector.map_function`)."""
        import tensorflow as tf

        if dtype != "float64":
            raise AnomalyError(f"dtype: pixel-gaussian maps are float64, got {dtype}")

        def maps(x):  # constants made when traced: a graph holds them, never captures them
            return tf.reduce_mean(tf.abs(x - tf.constant(self.mean_)) / tf.constant(self.std_), axis=-1)

        return maps

    def _save_state(self, path: Path) -> None:
        np.savez(path, mean=self.mean_, std=self.std_, std_floor=self.std_floor)

    def _load_state(self, path: Path) -> None:
        try:
            with load_npz(path) as data:
                self.mean_, self.std_ = data["mean"], data["std"]
        except (OSError, KeyError, ValueError) as exc:
            raise AnomalyError(f"-p {path}: cannot load pixel-gaussian statistics ({exc})") from None
        if self.mean_.shape != tuple(self.input_shape):
            raise AnomalyError(f"-p {path}: statistics {self.mean_.shape} do not match its configuration "
                               f"{self.input_shape}")
