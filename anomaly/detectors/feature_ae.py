"""feature-ae: an autoencoder on backbone feature maps; the map is the feature reconstruction error.

As the deep-feature-reconstruction notebooks (DFR, Shi et al. 2021): locally aggregated
patch features (the same as PatchCore's) are reconstructed by a 1x1-convolution autoencoder
D -> D/2 -> 2L -> L -> 2L -> D/2 -> D (batch norm and ReLU between, linear output), trained
with the mean squared error. The map is the per-position mean squared error over channels,
upsampled bilinearly and smoothed with a Gaussian.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from anomaly.arrays import load_npz
from anomaly.detectors.base import Detector, register
from anomaly.detectors.features import BackboneDetectorMixin, local_patches, to_full_map
from anomaly.errors import AnomalyError


def feature_autoencoder(channels: int, latent_dim: int = 100) -> keras.Model:
    """The 1x1-convolution autoencoder of feature maps.

    Args:
        channels: D, the feature channels.
        latent_dim: L, the code size per position.

    Returns:
        A `keras.Model` from (h, w, D) to (h, w, D).
    """
    inputs = keras.Input((None, None, channels), name="features")
    x = inputs
    widths = [channels // 2, 2 * latent_dim, latent_dim, 2 * latent_dim, channels // 2]
    for i, width in enumerate(widths):
        x = layers.Conv2D(width, 1, name=f"conv{i}")(x)
        if i != 2:  # the code stays linear
            x = layers.BatchNormalization(name=f"bn{i}")(x)
            x = layers.ReLU(name=f"relu{i}")(x)
    outputs = layers.Conv2D(channels, 1, name="reconstruction")(x)
    return keras.Model(inputs, outputs, name="feature_ae")


# Most bytes of training features held at once: bottle's 209 images at 256 px (1.3 GB) all fit.
FEATURE_BYTES = 3 << 29


@register
class FeatureAEDetector(BackboneDetectorMixin, Detector):
    """Feature autoencoder detector.

    Args:
        input_shape: (H, W, C) of the images.
        backbone, weights, layers: as PatchCore's (the layers default to the backbone's patch layers).
        latent_dim: code size per position (0: 100).
        epochs: most training epochs; training stops early when the validation loss stalls.
        map_sigma: Gaussian sigma (pixels) smoothing the upsampled map.
        seed: seeds the weights and the shuffling.
        batch_size: images per forward pass and per training step.
    """

    name = "feature-ae"
    trains_epochs = True
    methods = ("fae",)
    file_suffix = ".npz"
    finetune_defaults = {"method": "fae", "smooth": 0.0, "normalize": False, "score_sigma": 0.0}
    checks = {"latent_dim": "non-negative", "map_sigma": "non-negative"}
    aliases = {"patience": "early_stopping"}  # its name in detector.yaml before 2026-12

    def __init__(self, input_shape=(256, 256, 3), backbone: str = "efficientnet_lite0", weights: str = "imagenet",
                 layers: tuple[str, ...] = (), latent_dim: int = 0, epochs: int = 50, map_sigma: float = 4.0,
                 seed: int = 0, batch_size: int = 8, early_stopping: int = 5):
        from anomaly.backbones import backbone_spec

        self.input_shape = tuple(input_shape)
        self.backbone, self.weights = backbone, weights
        self.layers = tuple(layers) or backbone_spec(backbone).patch_layers
        self.latent_dim, self.epochs, self.map_sigma = latent_dim or 100, epochs, map_sigma
        self.seed, self.batch_size, self.early_stopping = seed, batch_size, early_stopping

    def fit(self, train_images: np.ndarray, validation_images: np.ndarray | None = None,
            progress: bool = False) -> FeatureAEDetector:
        """Train the autoencoder `model_` on the features of defect-free images."""
        from anomaly.detectors.autoencoder import set_seed

        images = self.prepare(train_images)
        validation = None if validation_images is None else self.prepare(validation_images)

        keep = self._positions_kept(len(images))
        x = self._position_sample(images, keep, self.seed)
        # Standardise channels so every layer's features weigh alike in the loss.
        self.mean_ = x.mean(axis=(0, 1, 2)).astype(np.float32)
        self.std_ = (x.std(axis=(0, 1, 2)) + 1e-6).astype(np.float32)
        x -= self.mean_  # in place: the features are the largest array a fit holds
        x /= self.std_
        val = None
        if validation is not None and len(validation):
            v = self._position_sample(validation, keep, self.seed + 1)
            v -= self.mean_
            v /= self.std_
            val = (v, v)
        set_seed(self.seed)
        self.model_ = feature_autoencoder(x.shape[-1], self.latent_dim)
        self.model_.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        stop = keras.callbacks.EarlyStopping(patience=self.early_stopping, restore_best_weights=True)
        callbacks = [stop] if val else []
        self.model_.fit(x, x, batch_size=self.batch_size, epochs=self.epochs, validation_data=val,
                        callbacks=callbacks, shuffle=True, verbose=0)
        self.forget_traces()
        return self

    def _position_sample(self, images, keep: int, seed: int) -> np.ndarray:
        """(N, h, w, D) patch features, or (N, keep, 1, D): `keep` seeded random positions of each image."""
        h, w, channels = self.output_shape(self._local_patches)
        if keep >= h * w:
            return self.patch_features(images)
        rng = np.random.default_rng(seed)
        out = np.empty((len(images), keep, 1, channels), np.float32)
        start = 0
        for batch in self.stream(self._local_patches, images):
            for f in batch.reshape(len(batch), h * w, channels):
                out[start, :, 0] = f[np.sort(rng.choice(h * w, keep, replace=False))]
                start += 1
        return out

    def _positions_kept(self, n_images: int) -> int:
        """Positions per image trained on: all while the features of all fit in FEATURE_BYTES.

        Beyond, a seeded random subset of each image's positions: the 1x1 convolutions see
        positions independently, so a (keep, 1) strip trains them as a whole map does.
        """
        h, w, channels = self.output_shape(self._local_patches)
        return min(h * w, max(1, FEATURE_BYTES // (4 * channels * max(n_images, 1))))

    def fit_plan(self, n_images: int) -> str:
        h, w, channels = self.output_shape(self._local_patches)
        keep = self._positions_kept(n_images)
        share = "every position" if keep >= h * w else f"{keep} random positions of {h * w}"
        return (f"training features: {share} of each image x {channels} channels "
                f"({n_images * keep * channels * 4 / 2 ** 20:,.0f} MiB)")

    def summary(self) -> dict:
        return {"parameters": int(self.model_.count_params()), "feature_dim": int(len(self.mean_)),
                "layers": list(self.layers)}

    def _maps(self, x):
        f = (local_patches(self.extractor(x)) - tf.constant(self.mean_)) / tf.constant(self.std_)
        err = tf.reduce_mean(tf.square(f - self.model_(f, training=False)), axis=-1)
        return to_full_map(err, self.input_shape[:2], self.map_sigma)

    def _save_state(self, path: Path) -> None:
        weights = {f"w{i}": w for i, w in enumerate(self.model_.get_weights())}
        np.savez(path, mean=self.mean_, std=self.std_, **weights)

    def _load_state(self, path: Path) -> None:
        try:
            with load_npz(path) as data:
                self.mean_, self.std_ = data["mean"], data["std"]
                weights = [data[f"w{i}"] for i in range(sum(k.startswith("w") for k in data.files))]
            self.model_ = feature_autoencoder(len(self.mean_), self.latent_dim)
            self.model_.set_weights(weights)
        except (OSError, KeyError, ValueError) as exc:
            raise AnomalyError(f"-p {path}: cannot load feature-ae weights ({exc})") from None
