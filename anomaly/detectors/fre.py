"""FRE: feature reconstruction error of a linear model of deep features.

Ndiour et al., "FRE: A Fast Method For Anomaly Detection And Segmentation", BMVC 2023. One
backbone layer is average-pooled 2x2 and flattened into one vector per image; a PCA keeping
`pca_variance` of the variance (`fre`) or a tied linear autoencoder trained in Keras (`fre-tae`)
reconstructs it. The map is the squared reconstruction error summed over channels at every
pooled position, upsampled bilinearly to the image; the image score is the map's mean, which
ranks images as the full vector's squared error does.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from anomaly.arrays import load_npz
from anomaly.detectors.base import Detector, register
from anomaly.detectors.features import BackboneDetectorMixin, to_full_map
from anomaly.errors import AnomalyError


@register
class FREDetector(BackboneDetectorMixin, Detector):
    """Feature reconstruction error with a PCA (the `fre` detector).

    Args:
        input_shape: (H, W, C) of the images.
        backbone: a name from `anomaly.backbones.list_backbones()`.
        weights: "imagenet", "random" or a weights file.
        layers: the one layer to read; empty for the backbone's default.
        pca_variance: share of the variance the PCA keeps.
        latent_dim: a fixed number of components instead (0: from pca_variance).
        map_sigma: Gaussian sigma (pixels) smoothing the upsampled map (0, as the paper).
        seed: seeds the PCA solver and, for fre-tae, the training.
        epochs: fre-tae training epochs.
        batch_size: images per forward pass.
    """

    name = "fre"
    methods = ("fre",)
    file_suffix = ".npz"
    checks = {"pca_variance": "fraction", "latent_dim": "non-negative", "map_sigma": "non-negative"}
    finetune_defaults = {"method": "fre", "smooth": 0.0, "normalize": False, "score_sigma": 0.0,
                         "image_score": "mean"}

    def __init__(self, input_shape=(256, 256, 3), backbone: str = "efficientnet_lite0", weights: str = "imagenet",
                 layers: tuple[str, ...] = (), pca_variance: float = 0.97, latent_dim: int = 0,
                 map_sigma: float = 0.0, seed: int = 0, epochs: int = 250, batch_size: int = 16):
        from anomaly.backbones import backbone_spec

        self.input_shape = tuple(input_shape)
        self.backbone, self.weights = backbone, weights
        self.layers = tuple(layers) or (backbone_spec(backbone).fre_layer,)
        if len(self.layers) != 1:
            raise AnomalyError(f"--layers: fre reads one layer, got {len(self.layers)}")
        self.pca_variance, self.latent_dim, self.map_sigma = pca_variance, latent_dim, map_sigma
        self.seed, self.epochs, self.batch_size = seed, epochs, batch_size

    def _pooled(self, x):
        return tf.nn.avg_pool2d(self.extractor(x)[0], 2, 2, "VALID")

    def pooled_features(self, images: np.ndarray) -> np.ndarray:
        """(N, h, w, c) features after the 2x2 average pooling."""
        return self.run_batched(self._pooled, images)

    def fit(self, train_images: np.ndarray, validation_images: np.ndarray | None = None,
            progress: bool = False) -> FREDetector:
        """Learn the linear model: `mean_` (D,), `components_` (k, D) with orthonormal rows."""
        images = self.prepare(train_images)
        self._fit_pca(self._feature_vectors(images))
        self.forget_traces()
        return self

    def _feature_vectors(self, images: np.ndarray) -> np.ndarray:
        """(N, D) flattened pooled features; sets `grid_`, their (h, w, c) shape."""
        features = self.pooled_features(images)
        self.grid_ = features.shape[1:]
        return features.reshape(len(features), -1)

    def _fit_pca(self, x: np.ndarray) -> None:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=self.latent_dim or self.pca_variance, svd_solver="full", random_state=self.seed)
        pca.fit(x.astype(np.float64))
        self.mean_ = pca.mean_.astype(np.float32)
        self.components_ = pca.components_.astype(np.float32)

    def summary(self) -> dict:
        return {"components": int(len(self.components_)), "feature_dim": int(self.components_.shape[1]),
                "layers": list(self.layers)}

    def _reconstruct(self, x):
        """Tied linear autoencoder: x_hat = W^T W (x - mean) + mean."""
        w = tf.constant(self.components_)
        mean = tf.constant(self.mean_)
        return tf.matmul(tf.matmul(x - mean, w, transpose_b=True), w) + mean

    def _maps(self, x):
        f = self._pooled(x)
        flat = tf.reshape(f, (tf.shape(f)[0], -1))
        err = tf.reshape(tf.square(flat - self._reconstruct(flat)), tf.shape(f))
        return to_full_map(tf.reduce_sum(err, axis=-1), self.input_shape[:2], self.map_sigma)

    def _save_state(self, path: Path) -> None:
        np.savez(path, mean=self.mean_, components=self.components_, grid=np.array(self.grid_))

    def _load_state(self, path: Path) -> None:
        try:
            with load_npz(path) as data:
                self.mean_, self.components_, self.grid_ = data["mean"], data["components"], tuple(data["grid"])
        except (OSError, KeyError, ValueError) as exc:
            raise AnomalyError(f"-p {path}: cannot load {self.name} weights ({exc})") from None


@register
class TiedAutoencoderFRE(FREDetector):
    """FRE with a tied linear autoencoder trained in Keras (the `fre-tae` detector).

    The encoder W (k x D, Glorot-uniform) and its transpose as decoder, biases zero at the
    start, trained with Adam (lr 1e-3, batch 64) on the mean squared error. k is the PCA's
    component count at `pca_variance` unless `latent_dim` is set.
    """

    name = "fre-tae"

    trains_epochs = True

    def fit(self, train_images: np.ndarray, validation_images: np.ndarray | None = None,
            progress: bool = False) -> TiedAutoencoderFRE:
        """Learn the tied autoencoder's `components_` and biases from defect-free images."""
        from anomaly.detectors.autoencoder import set_seed

        x = self._feature_vectors(self.prepare(train_images))
        self._fit_pca(x)  # the PCA sets k
        k = len(self.components_)
        set_seed(self.seed)
        layer = TiedLinear(k, name="tied")
        inputs = keras.Input((x.shape[1],))
        model = keras.Model(inputs, layer(inputs))
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        model.fit(x, x, batch_size=64, epochs=self.epochs, shuffle=True, verbose=0)
        w, b_enc, b_dec = (v.numpy() for v in (layer.kernel, layer.encoder_bias, layer.decoder_bias))
        self.components_ = w.astype(np.float32)
        self.encoder_bias_, self.decoder_bias_ = b_enc.astype(np.float32), b_dec.astype(np.float32)
        self.forget_traces()
        return self

    def _reconstruct(self, x):
        w = tf.constant(self.components_)
        code = tf.matmul(x, w, transpose_b=True) + tf.constant(self.encoder_bias_)
        return tf.matmul(code, w) + tf.constant(self.decoder_bias_)

    def _save_state(self, path: Path) -> None:
        np.savez(path, components=self.components_, encoder_bias=self.encoder_bias_,
                 decoder_bias=self.decoder_bias_, grid=np.array(self.grid_))

    def _load_state(self, path: Path) -> None:
        try:
            with load_npz(path) as data:
                self.components_, self.grid_ = data["components"], tuple(data["grid"])
                self.encoder_bias_, self.decoder_bias_ = data["encoder_bias"], data["decoder_bias"]
        except (OSError, KeyError, ValueError) as exc:
            raise AnomalyError(f"-p {path}: cannot load fre-tae weights ({exc})") from None


class TiedLinear(keras.layers.Layer):
    """x -> W^T (W x + b_enc) + b_dec: a linear autoencoder whose decoder is the encoder's transpose."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        dim = input_shape[-1]
        self.kernel = self.add_weight(shape=(self.units, dim), initializer="glorot_uniform", name="kernel")
        self.encoder_bias = self.add_weight(shape=(self.units,), initializer="zeros", name="encoder_bias")
        self.decoder_bias = self.add_weight(shape=(dim,), initializer="zeros", name="decoder_bias")

    def call(self, x):
        code = keras.ops.matmul(x, keras.ops.transpose(self.kernel)) + self.encoder_bias
        return keras.ops.matmul(code, self.kernel) + self.decoder_bias
