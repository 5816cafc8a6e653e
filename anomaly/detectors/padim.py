"""PaDiM: a Gaussian of deep features at every position of the image.

Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and
Localization", ICPR 2021. Two backbone layers are 3x3 averaged, upsampled to the finer grid
and concatenated (as PatchCore's patches); a seeded random subset of `padim_dims` channels is
kept; every grid position gets its own mean and covariance (+ 0.01 I, as the paper) over the
training images. The map is the Mahalanobis distance at each position, upsampled and smoothed;
the image score is its maximum.

Unlike PatchCore and FRE it is position-aware: a feature that is normal at the rim but not in
the middle of a part scores high there. That suits aligned parts (KolektorSDD's commutators,
MVTec objects) and needs images of the same framing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from anomaly.arrays import load_npz
from anomaly.detectors.base import Detector, register
from anomaly.detectors.features import BackboneDetectorMixin, local_patches, to_full_map
from anomaly.errors import AnomalyError

REGULARISATION = 0.01  # added to every covariance's diagonal, as the paper


class RunningMoments:
    """Mean and covariance at every grid position, merged batch by batch in float64.

    Each batch's centred moments are combined with the running ones by Chan et al.'s pairwise
    update, which is as accurate as centring all samples at once (Welford's method, batched).
    """

    def __init__(self):
        self.count, self.mean, self.scatter = 0, None, None

    def add(self, x: np.ndarray) -> None:
        """Take in a batch (n, h, w, d)."""
        x = np.asarray(x, np.float64)
        n, (_, h, w, d) = len(x), x.shape
        mean = x.mean(axis=0)
        v = np.transpose(x - mean, (1, 2, 0, 3)).reshape(h * w, n, d)
        scatter = np.matmul(np.transpose(v, (0, 2, 1)), v).reshape(h, w, d, d)
        if self.count == 0:
            self.count, self.mean, self.scatter = n, mean, scatter
            return
        total = self.count + n
        delta = mean - self.mean
        self.scatter += scatter + np.einsum("hwi,hwj->hwij", delta, delta) * (self.count * n / total)
        self.mean += delta * (n / total)
        self.count = total

    def covariance(self) -> np.ndarray:
        """(h, w, d, d) unbiased sample covariance."""
        return self.scatter / max(self.count - 1, 1)


@register
class PaDiMDetector(BackboneDetectorMixin, Detector):
    """Per-position Gaussians of local deep features (the `padim` detector).

    Args:
        input_shape: (H, W, C) of the images.
        backbone: a name from `anomaly.backbones.list_backbones()`.
        weights: "imagenet", "random" or a weights file.
        layers: the backbone layers read (finest first); empty for the backbone's PaDiM layers.
        dims: channels kept (a seeded random subset of the concatenated features).
        map_sigma: Gaussian sigma (pixels) smoothing the upsampled map.
        seed: seeds the channel subset.
        batch_size: images per forward pass.
    """

    name = "padim"
    methods = ("padim",)
    file_suffix = ".npz"
    finetune_defaults = {"method": "padim", "smooth": 0.0, "normalize": False, "score_sigma": 0.0}
    checks = {"dims": "positive", "map_sigma": "non-negative"}
    aliases = {"padim_dims": "dims"}  # the flat config.yaml name before 2026-12

    def __init__(self, input_shape=(256, 256, 3), backbone: str = "efficientnet_lite0", weights: str = "imagenet",
                 layers: tuple[str, ...] = (), dims: int = 100, map_sigma: float = 4.0, seed: int = 0,
                 batch_size: int = 16):
        from anomaly.backbones import backbone_spec

        self.input_shape = tuple(input_shape)
        self.backbone, self.weights = backbone, weights
        self.layers = tuple(layers) or backbone_spec(backbone).padim_layers
        self.dims, self.map_sigma, self.seed, self.batch_size = dims, map_sigma, seed, batch_size

    def _selected(self, x):
        return tf.gather(local_patches(self.extractor(x)), self.channels_, axis=-1)

    def fit(self, train_images: np.ndarray, validation_images: np.ndarray | None = None,
            progress: bool = False) -> PaDiMDetector:
        """Learn `mean_` (h, w, d) and `precision_` (h, w, d, d) from defect-free images."""
        images = self.prepare(train_images)
        width = self.output_shape(self._local_patches)[-1]
        self.channels_ = np.sort(np.random.default_rng(self.seed).choice(width, min(self.dims, width),
                                                                         replace=False)).astype(np.int32)
        self.forget_traces()
        # Streamed: one batch of features at a time, merged into running per-position moments.
        moments = RunningMoments()
        for x in self.stream(self._selected, images):  # (n, h, w, d): the subset only
            moments.add(x)
        cov = moments.covariance() + REGULARISATION * np.eye(moments.mean.shape[-1])
        self.precision_ = np.linalg.inv(cov).astype(np.float32)
        self.mean_ = moments.mean.astype(np.float32)
        self.forget_traces()
        return self

    def fit_plan(self, n_images: int) -> str:
        h, w, width = self.output_shape(self._local_patches)
        d = min(self.dims, width)
        return (f"per-position Gaussians: {h}x{w} positions x {d} dims "
                f"({h * w * (d + d * d) * 8 / 2 ** 20:,.0f} MiB in float64), merged batch by batch")

    def summary(self) -> dict:
        h, w, d = self.mean_.shape
        # Its "bank" is one Gaussian per grid position, reported like the memory banks of the others.
        return {"grid": [h, w], "feature_dim": d, "layers": list(self.layers), "bank_size": h * w,
                "bank_mb": (self.mean_.nbytes + self.precision_.nbytes) / 2 ** 20}

    def _maps(self, x):
        d = self._selected(x) - tf.constant(self.mean_)
        # d.P.d at every position, as one batched matrix product over the h*w positions: the
        # three-operand einsum ("nhwi,hwij,nhwj->nhw") was 3x slower, oneDNN on or off (docs/speed.md).
        h, w, dims = self.mean_.shape
        v = tf.reshape(tf.transpose(d, [1, 2, 0, 3]), (h * w, -1, dims))  # (h*w, n, d)
        precision = tf.constant(np.reshape(self.precision_, (h * w, dims, dims)))
        squared = tf.reshape(tf.transpose(tf.reduce_sum(tf.matmul(v, precision) * v, axis=-1)), (-1, h, w))
        return to_full_map(tf.sqrt(tf.maximum(squared, 0.0)), self.input_shape[:2], self.map_sigma)

    def _save_state(self, path: Path) -> None:
        np.savez(path, mean=self.mean_, precision=self.precision_, channels=self.channels_)

    def _load_state(self, path: Path) -> None:
        try:
            with load_npz(path) as data:
                self.mean_, self.precision_, self.channels_ = data["mean"], data["precision"], data["channels"]
        except (OSError, KeyError, ValueError) as exc:
            raise AnomalyError(f"-p {path}: cannot load padim weights ({exc})") from None
