"""Image-level detectors on globally pooled backbone features: kNN and KMeans.

They score whole images, not positions, so their "map" is the image score painted over every
pixel. Through the shared finetune that means: a region over the threshold is the whole image
or nothing, so min_area has no effect and the threshold is a threshold on the image score;
test reports no pixel metrics for them (`pixel_level = False`).

KMeans can also cluster a trained autoencoder's bottleneck instead of backbone features (seed
001 clustered its UNet's flattened bottleneck): `--features-from MODEL.keras`. The encoder is
copied into the KMeans model directory, so the autoencoder's own directory may move or go.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from anomaly.arrays import load_npz
from anomaly.detectors.base import Detector, register
from anomaly.detectors.features import BackboneDetectorMixin
from anomaly.errors import AnomalyError


def euclidean_distances(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """(N, M) Euclidean distances between the rows of `a` and of `b`, as scikit-learn's
    `pairwise_distances`: |a|^2 - 2 a.b + |b|^2, clipped at 0 against rounding."""
    squared = (tf.reduce_sum(a * a, axis=1)[:, None] - 2.0 * tf.matmul(a, b, transpose_b=True)
               + tf.reduce_sum(b * b, axis=1)[None, :])
    return tf.sqrt(tf.maximum(squared, 0.0))


class _PooledFeatureDetector(BackboneDetectorMixin, Detector):
    """Shared parts: one backbone layer, globally average-pooled to a vector per image."""

    file_suffix = ".npz"
    pixel_level = False
    name = ""

    def __init__(self, input_shape=(256, 256, 3), backbone: str = "efficientnet_lite0", weights: str = "imagenet",
                 layers: tuple[str, ...] = (), seed: int = 0, batch_size: int = 16):
        from anomaly.backbones import backbone_spec

        self.input_shape = tuple(input_shape)
        self.backbone, self.weights = backbone, weights
        self.layers = tuple(layers) or (backbone_spec(backbone).pooled_layer,)
        if len(self.layers) != 1:
            raise AnomalyError(f"--layers: {self.name} reads one layer, got {len(self.layers)}")
        self.seed, self.batch_size = seed, batch_size

    def pooled_features(self, images: np.ndarray) -> np.ndarray:
        """(N, C) globally average-pooled features, float64."""
        return self.run_batched(self._pooled, images).astype(np.float64)

    def _pooled(self, x):
        return tf.reduce_mean(self.extractor(x)[0], axis=(1, 2))

    def score_features(self, features: np.ndarray) -> np.ndarray:
        """(N,) anomaly scores of pooled features, higher = more anomalous."""
        raise NotImplementedError

    def _score_tensor(self, features: tf.Tensor) -> tf.Tensor:
        """`score_features` in TensorFlow (float32), for the exported graph."""
        raise NotImplementedError

    def _maps(self, x):
        """Each image's score painted over its map, in TensorFlow (the exported graph's maps)."""
        scores = self._score_tensor(self._pooled(x))
        return tf.broadcast_to(scores[:, None, None], (tf.shape(x)[0], *self.input_shape[:2]))

    def _anomaly_maps(self, images: np.ndarray, method: str, dtype: str, return_reconstructions: bool = False):
        """(N, H, W) float32 maps holding each image's score everywhere."""
        if dtype != "float64":
            raise AnomalyError(f"dtype: {self.name} maps are float64, got {dtype}")
        scores = self.score_features(self.pooled_features(images)).astype(np.float32)
        maps = np.broadcast_to(scores[:, None, None], (len(scores), *self.input_shape[:2])).copy()
        return (maps, None) if return_reconstructions else maps

    def _load_arrays(self, model_file: Path, names: tuple[str, ...]) -> list[np.ndarray]:
        try:
            with load_npz(model_file) as data:
                return [data[n] for n in names]
        except (OSError, KeyError, ValueError) as exc:
            raise AnomalyError(f"-p {model_file}: cannot load {self.name} features ({exc})") from None


@register
class KNNDetector(_PooledFeatureDetector):
    """Mean distance to the k nearest training images in a high-variance feature subspace.

    As seed 003 (ResNet50 + KNN): of the pooled features, the `n_dims` dimensions with the
    largest standard deviation over the training images are kept; the score is the mean
    Euclidean distance to the `k` nearest training images (fewer when there are fewer).

    Args:
        k: neighbours averaged.
        n_dims: feature dimensions kept.
    """

    methods = ("knn",)
    name = "knn"
    finetune_defaults = {"method": "knn", "smooth": 0.0, "normalize": False, "score_sigma": 0.0}

    checks = {"k": "positive", "n_dims": "positive"}
    aliases = {"knn_k": "k", "knn_dims": "n_dims"}  # the flat config.yaml names before 2026-12

    def __init__(self, input_shape=(256, 256, 3), backbone: str = "efficientnet_lite0", weights: str = "imagenet",
                 layers: tuple[str, ...] = (), k: int = 50, n_dims: int = 500, seed: int = 0, batch_size: int = 16):
        super().__init__(input_shape, backbone, weights, layers, seed, batch_size)
        self.k, self.n_dims = k, n_dims

    def fit(self, train_images: np.ndarray, validation_images: np.ndarray | None = None,
            progress: bool = False) -> KNNDetector:
        """Keep the training features `bank_` (N, n_dims) and the chosen dimensions `dims_`."""
        images = self.prepare(train_images)
        features = self.pooled_features(images)
        # stable sort: ties keep the lower index, so the choice is reproducible
        self.dims_ = np.sort(np.argsort(-features.std(axis=0), kind="stable")[:self.n_dims])
        self.bank_ = features[:, self.dims_]
        return self

    def score_features(self, features: np.ndarray) -> np.ndarray:
        from sklearn.metrics import pairwise_distances

        d = pairwise_distances(features[:, self.dims_], self.bank_)
        k = min(self.k, self.bank_.shape[0])
        return np.sort(d, axis=1)[:, :k].mean(axis=1)

    def _score_tensor(self, features: tf.Tensor) -> tf.Tensor:
        d = euclidean_distances(tf.gather(features, self.dims_, axis=1), tf.constant(self.bank_, tf.float32))
        k = min(self.k, self.bank_.shape[0])
        return tf.reduce_mean(-tf.math.top_k(-d, k).values, axis=1)

    def summary(self) -> dict:
        return {"bank_size": int(len(self.bank_)), "feature_dim": int(self.bank_.shape[1]),
                "bank_mb": self.bank_.nbytes / 2 ** 20, "layers": list(self.layers)}

    def _save_state(self, path: Path) -> None:
        np.savez(path, bank=self.bank_, dims=self.dims_)

    def _load_state(self, path: Path) -> None:
        self.bank_, self.dims_ = self._load_arrays(path, ("bank", "dims"))


class BottleneckExtractor:
    """A trained autoencoder's `"latent"` layer, flattened, in the shape of a 1x1 feature map.

    The 1x1 shape lets the pooled-feature detectors read it like a backbone layer: their global
    average over positions is then the flattened code itself.

    Args:
        encoder: a Keras model from images in [0, 1] to the latent map.
    """

    ENCODER_FILE = "encoder.keras"

    def __init__(self, encoder):
        self.model = encoder

    @classmethod
    def from_autoencoder(cls, model_file: str | Path, input_shape) -> BottleneckExtractor:
        """The encoder half of a saved autoencoder (`anomaly-train -a <CAE>`'s `.keras` file)."""
        import keras

        from anomaly.models import load_saved_model

        model = load_saved_model(model_file, "--features-from")
        try:
            latent = model.get_layer("latent").output
        except (ValueError, AttributeError) as exc:
            raise AnomalyError(f"--features-from {model_file}: expected an autoencoder's .keras model file with a "
                               f"'latent' layer ({type(exc).__name__})") from None
        shape = tuple(model.input_shape[1:])
        if shape != tuple(input_shape):
            raise AnomalyError(f"--features-from {model_file}: the autoencoder reads {shape[0]}x{shape[1]}x{shape[2]} "
                               f"images, the data is read as {input_shape[0]}x{input_shape[1]}x{input_shape[2]}: "
                               f"pass its --input-size and --color")
        return cls(keras.Model(model.input, latent, name="encoder"))

    def __call__(self, images: tf.Tensor) -> list[tf.Tensor]:
        code = self.model(tf.convert_to_tensor(images, tf.float32), training=False)
        return [tf.reshape(code, (-1, 1, 1, int(np.prod(code.shape[1:]))))]


@register
class KMeansDetector(_PooledFeatureDetector):
    """Distance to the nearest KMeans centroid of the training images' features (seed 001).

    Args:
        n_clusters: centroids (2, as seed 001).
        features_from: a trained autoencoder's `.keras` file: cluster its flattened bottleneck
            instead of the backbone's pooled features ("" for the backbone).
    """

    methods = ("kmeans",)
    name = "kmeans"
    finetune_defaults = {"method": "kmeans", "smooth": 0.0, "normalize": False, "score_sigma": 0.0}

    checks = {"n_clusters": "positive"}
    aliases = {"kmeans_clusters": "n_clusters"}  # the flat config.yaml name before 2026-12

    def __init__(self, input_shape=(256, 256, 3), backbone: str = "efficientnet_lite0", weights: str = "imagenet",
                 layers: tuple[str, ...] = (), n_clusters: int = 2, seed: int = 0, batch_size: int = 16,
                 features_from: str = ""):
        super().__init__(input_shape, backbone, weights, layers, seed, batch_size)
        self.n_clusters, self.features_from = n_clusters, features_from
        if features_from:
            self.layers = ("latent",)

    @property
    def extractor(self):
        if self.features_from and self._extractor is None:
            self._extractor = BottleneckExtractor.from_autoencoder(self.features_from, self.input_shape)
        return super().extractor

    def fit(self, train_images: np.ndarray, validation_images: np.ndarray | None = None,
            progress: bool = False) -> KMeansDetector:
        """Learn `centroids_` (n_clusters, C)."""
        from sklearn.cluster import KMeans

        images = self.prepare(train_images)

        features = self.pooled_features(images)
        if len(features) < self.n_clusters:
            raise AnomalyError(f"--kmeans-clusters: {self.n_clusters} clusters need at least as many training "
                               f"images, found {len(features)}")
        self.centroids_ = KMeans(self.n_clusters, n_init=10, random_state=self.seed).fit(features).cluster_centers_
        return self

    def score_features(self, features: np.ndarray) -> np.ndarray:
        from sklearn.metrics import pairwise_distances

        return pairwise_distances(features, self.centroids_).min(axis=1)

    def _score_tensor(self, features: tf.Tensor) -> tf.Tensor:
        return tf.reduce_min(euclidean_distances(features, tf.constant(self.centroids_, tf.float32)), axis=1)

    def summary(self) -> dict:
        return {"bank_size": int(len(self.centroids_)), "feature_dim": int(self.centroids_.shape[1]),
                "bank_mb": self.centroids_.nbytes / 2 ** 20, "layers": list(self.layers)}

    def _save_state(self, path: Path) -> None:
        np.savez(path, centroids=self.centroids_)
        if self.features_from:
            self.extractor.model.save(Path(path).with_name(BottleneckExtractor.ENCODER_FILE))

    def _load_state(self, path: Path) -> None:
        (self.centroids_,) = self._load_arrays(path, ("centroids",))
        if self.features_from:
            # The copy saved beside the centroids, not the autoencoder named at training time.
            encoder = Path(path).with_name(BottleneckExtractor.ENCODER_FILE)
            if not encoder.is_file():
                raise AnomalyError(f"-p {path}: {encoder.name} is missing beside it (kmeans on an "
                                   f"autoencoder's bottleneck keeps its encoder there)")
            self._extractor = BottleneckExtractor.from_autoencoder(encoder, self.input_shape)
