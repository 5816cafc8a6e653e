"""CutPaste: a classifier of synthetic anomalies whose embeddings model normality.

Li et al., "CutPaste: Self-Supervised Learning for Anomaly Detection and Localization", CVPR
2021, with the polygon and scar patches of the seed project. An ImageNet backbone with real
batch-norm statistics (EfficientNet-Lite0) and a projection MLP learn a 3-class pretext task:
normal, CutPaste patch (rectangle or polygon), scar. Training has two phases: the head alone
(backbone frozen), then every layer except the batch-norm statistics.

Scoring, as the paper: a Gaussian density (mean and Ledoit-Wolf shrinkage covariance) of the
training images' embeddings; the image score is the Mahalanobis distance (or, with
`density: kde`, the negative log density of a Gaussian kernel density estimate). Three maps
(`anomaly-finetune -m`):

- `dense` (default): the fine-tuned backbone's own local features (its PatchCore layers, 3x3
  averaged, stride 4) scored against one Gaussian of every training position; one forward
  pass per image instead of one per 32 px patch. On bottle it localised better than `patch`
  (pixel AUROC 0.964 against 0.909, docs/results.md).
- `patch`, as the paper: 32 px patches of the 256 px image (the patch size scales with the
  input size) at a stride of 8 px are embedded and scored against a Gaussian of the training
  images' patch embeddings, then upsampled and smoothed.
- `gradcam`: Grad-CAM of the image score (the Mahalanobis distance) on the backbone's last
  feature map: each channel weighted by its mean gradient, summed, rectified, upsampled.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from anomaly.arrays import load_npz
from anomaly.data.synthetic import CUTPASTE, NORMAL, SCAR, pretext_sample
from anomaly.detectors.base import Detector, register
from anomaly.detectors.features import batch_outputs, in_batches, local_patches, sample_rows, to_full_map
from anomaly.distribute import (
    STRATEGIES,
    check_batch_size,
    distribute,
    get_strategy,
    global_mean_loss,
    scope,
    synchronize_batch_norm,
    unmirrored,
)
from anomaly.errors import AnomalyError

N_CLASSES = 3
CLASS_NAMES = {NORMAL: "normal", CUTPASTE: "cutpaste", SCAR: "scar"}
DENSITY_SAMPLE = 50_000  # patch or dense features the Gaussians of the maps are fitted on, at most


def cutpaste_network(backbone: keras.Model, preprocess, input_shape, hidden=(512, 512), embedding_dim: int = 128):
    """Backbone -> global average pooling -> MLP -> embedding -> 3 logits.

    Args:
        backbone: the feature network (its last layer is pooled).
        preprocess: maps RGB in [0, 1] to the backbone's input.
        input_shape: (H, W, C) of the images in [0, 1]; C = 1 is repeated to RGB.
        hidden: widths of the Dense (no bias) + BatchNorm + ReLU blocks.
        embedding_dim: size of the embedding.

    Returns:
        A `keras.Model` with outputs [embedding, logits].
    """
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    if input_shape[-1] == 1:
        x = layers.Concatenate(name="to_rgb")([x, x, x])
    x = layers.Lambda(preprocess, name="preprocess")(x)
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    for i, width in enumerate(hidden):
        x = layers.Dense(width, use_bias=False, name=f"head{i}_dense")(x)
        x = layers.BatchNormalization(name=f"head{i}_bn")(x)
        x = layers.ReLU(name=f"head{i}_relu")(x)
    embedding = layers.Dense(embedding_dim, name="embedding")(x)
    logits = layers.Dense(N_CLASSES, name="logits")(embedding)
    return keras.Model(inputs, [embedding, logits], name="cutpaste")


def fit_gaussian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and Ledoit-Wolf shrinkage precision (inverse covariance) of (N, D) samples, float32."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(x, np.float64)
    return x.mean(axis=0).astype(np.float32), LedoitWolf().fit(x).precision_.astype(np.float32)


def mahalanobis_tensor(x: tf.Tensor, mean, precision) -> tf.Tensor:
    """`mahalanobis` in TensorFlow, float32 (for traced and exported graphs)."""
    d = x - tf.constant(mean, tf.float32)
    squared = tf.reduce_sum(tf.linalg.matmul(d, tf.constant(precision, tf.float32)) * d, axis=-1)
    return tf.sqrt(tf.maximum(squared, 0.0))


def mahalanobis(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Mahalanobis distances of (..., D) samples: shape (...)."""
    d = np.asarray(x, np.float64) - mean
    # A matrix product, then a row-wise dot: BLAS, where a three-operand einsum loops in Python's
    # C fallback (40x slower for the dense maps' 4096 x 384 features per image).
    return np.sqrt(np.maximum(((d @ np.asarray(precision, np.float64)) * d).sum(axis=-1), 0.0))


@register
class CutPasteDetector(Detector):
    """CutPaste with polygon and scar patches.

    Args:
        input_shape: (H, W, C) of the images.
        backbone, weights: the pretrained network (`anomaly.backbones`).
        epochs: (head-only, all-layer) epochs; config `epochs` is their sum, split 3:2.
        batch_size: training batch size.
        density: "gde" (Gaussian, Mahalanobis) or "kde" (Gaussian kernel density).
        patch_stride: stride of the patch-level map at 256 px (scaled with the input size).
        map_sigma: Gaussian sigma (pixels) smoothing the upsampled map.
        seed: seeds the weights, the synthetic anomalies and the shuffling.
        strategy: "none" (one device), "mirrored" or "multi-worker", as the autoencoders'
            (`anomaly.distribute`): `batch_size` is the global batch, split between the
            replicas, and the loss is averaged over it, so the SGD rates stay those of one device.
            (CutPaste has no `precision` or `jit_compile`: it trains in float32, without XLA.)
    """

    name = "cutpaste"
    trains_epochs = True
    uses_backbone = True
    own_image_score = True
    methods = ("dense", "patch", "gradcam")
    file_suffix = ".npz"
    finetune_defaults = {"method": "dense", "smooth": 0.0, "normalize": False, "score_sigma": 0.0,
                         "image_score": "detector"}
    lr = (0.003, 0.001)  # the spec's SGD rates of the two phases
    choices = {"density": ("gde", "kde"), "strategy": STRATEGIES}
    checks = {"patch_stride": "positive", "map_sigma": "non-negative"}

    def __init__(self, input_shape=(256, 256, 3), backbone: str = "efficientnet_lite0", weights: str = "imagenet",
                 epochs: tuple[int, int] = (30, 20), batch_size: int = 32, density: str = "gde",
                 patch_stride: int = 8, map_sigma: float = 4.0, seed: int = 0, strategy: str = "none"):
        if density not in ("gde", "kde"):
            raise AnomalyError(f"--density: unknown density '{density}': expected gde or kde")
        self.input_shape = tuple(input_shape)
        self.backbone, self.weights = backbone, weights
        self.epochs, self.batch_size, self.density = tuple(epochs), batch_size, density
        scale = self.input_shape[0] / 256
        self.patch_size = max(8, int(round(32 * scale)))
        # Patches are embedded at twice their size (64 px for 32 px patches, as the seed project).
        self.patch_input = min(64, 2 * self.patch_size)
        self.patch_stride = patch_stride
        self.stride = max(1, int(round(patch_stride * scale)))  # at this input size
        self.map_sigma, self.seed, self.strategy = map_sigma, seed, strategy
        self.history_: list[dict] = []

    @classmethod
    def from_train_config(cls, config) -> CutPasteDetector:
        # `epochs` is split 3:2 between the head-only and the all-layer phase.
        head = max(1, round(config.epochs * 0.6))
        return cls(config.input_shape, epochs=(head, max(config.epochs - head, 0)), batch_size=config.batch_size,
                   seed=config.seed, **config.params)

    @classmethod
    def check_hyper_parameters(cls, params, run) -> None:
        super().check_hyper_parameters(params, run)
        if run.image_size[0] != run.image_size[1]:
            raise AnomalyError("cutpaste turns images by 90 degrees and needs square ones", "input_width")

    def build(self) -> keras.Model:
        from anomaly.backbones import build_backbone

        backbone, preprocess = build_backbone(self.backbone, self.weights, (*self.input_shape[:2], 3))
        self.network_ = cutpaste_network(backbone, preprocess, self.input_shape)
        self._backbone_model = backbone
        return self.network_

    # ------------------------------------------------------------------ training

    def _pretext_batches(self, images: np.ndarray, epoch: int):
        """One epoch of (samples, labels), seeded by (seed, epoch): labels uniform over 3 classes."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(images))
        labels = rng.integers(0, N_CLASSES, len(images))
        for start in range(0, len(images), self.batch_size):
            idx = order[start:start + self.batch_size]
            x = np.stack([pretext_sample(images[i], labels[j], rng) for j, i in enumerate(idx, start)])
            yield x.astype(np.float32), labels[start:start + len(idx)]

    def fit(self, train_images: np.ndarray, validation_images: np.ndarray | None = None,
            progress: bool = False):
        """Train on the pretext task, then fit the densities of image and patch embeddings."""
        from anomaly.detectors.autoencoder import set_seed

        images = self.prepare(train_images)
        strategy = get_strategy(self.strategy)
        check_batch_size(strategy, self.batch_size, training=len(images))

        set_seed(self.seed)
        # Without a strategy no scope at all: the one-device path is exactly what it was.
        with scope(strategy):
            self._train(images, strategy, progress)
        if strategy is not None:
            unmirrored(self.build, self.network_)  # `build` makes the new network `network_`
        self._fit_densities(images)
        return self

    def _train(self, images: np.ndarray, strategy, progress: bool) -> None:
        net = self.build()
        if strategy is not None:
            synchronize_batch_norm(net)  # the head's statistics over the global batch, as one device
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        epoch = 0
        for phase, (n_epochs, lr) in enumerate(zip(self.epochs, self.lr)):
            self._backbone_model.trainable = phase == 1
            if phase == 1:
                # Fine-tune the weights but keep the ImageNet batch-norm statistics: small
                # batches of near-identical product images would overwrite them.
                for layer in self._backbone_model.layers:
                    if isinstance(layer, layers.BatchNormalization):
                        layer.trainable = False
            optimizer = keras.optimizers.SGD(lr, momentum=0.9, weight_decay=3e-5)
            if strategy is None:
                step = self._train_step(net, optimizer, loss_fn)
            else:
                optimizer.build(net.trainable_variables)  # mirrored, in the scope (not in a replica)
                step = None
            for _ in range(n_epochs):
                start = time.perf_counter()
                losses, correct, seen = [], 0, 0
                if strategy is None:
                    for x, y in self._pretext_batches(images, epoch):
                        loss, logits = step(tf.constant(x), tf.constant(y))
                        losses.append(float(loss))
                        correct += int(np.sum(np.argmax(logits.numpy(), axis=1) == y))
                        seen += len(y)
                else:
                    batches = distribute(strategy, self._pretext_dataset(images, epoch))
                    # Traced once a phase, for every split of a batch (the last one is smaller).
                    step = step or self._distributed_step(net, optimizer, strategy, batches.element_spec)
                    for x, y in batches:
                        loss, right, count = step(x, y)
                        losses.append(float(loss))
                        correct += int(right)
                        seen += int(count)
                epoch += 1
                self.history_.append({"epoch": epoch, "phase": phase + 1, "loss": float(np.mean(losses)),
                                      "accuracy": correct / seen, "lr": lr,
                                      "seconds": time.perf_counter() - start})
                if progress:
                    h = self.history_[-1]
                    print(f"epoch {epoch} (phase {phase + 1}): loss {h['loss']:.4f}, pretext accuracy "
                          f"{h['accuracy']:.3f}, {h['seconds']:.1f} s")

    def _pretext_dataset(self, images: np.ndarray, epoch: int) -> tf.data.Dataset:
        """`_pretext_batches` as a dataset of global batches (for a strategy to split)."""
        signature = (tf.TensorSpec((None, *self.input_shape), tf.float32), tf.TensorSpec((None,), tf.int64))
        return tf.data.Dataset.from_generator(lambda: self._pretext_batches(images, epoch),
                                              output_signature=signature)

    @staticmethod
    def _train_step(net, optimizer, loss_fn):
        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                _, logits = net(x, training=True)
                loss = loss_fn(y, logits)
            grads = tape.gradient(loss, net.trainable_variables)
            optimizer.apply_gradients(zip(grads, net.trainable_variables))
            return loss, logits

        return step

    @staticmethod
    def _distributed_step(net, optimizer, strategy, spec):
        """`_train_step` on each replica's part of a global batch: each replica's loss is its share
        of the global batch's mean, the optimizer sums the gradients; returns the global batch's mean
        loss, its correctly classified samples and its size."""
        per_example = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

        def replica_step(x, y):
            with tf.GradientTape() as tape:
                _, logits = net(x, training=True)
                loss = global_mean_loss(per_example(y, logits))
            grads = tape.gradient(loss, net.trainable_variables)
            optimizer.apply_gradients(zip(grads, net.trainable_variables))
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=1), y), tf.int32))
            return loss, correct, tf.shape(y)[0]

        @tf.function(input_signature=list(spec))
        def step(x, y):
            total = tf.distribute.ReduceOp.SUM
            return tuple(strategy.reduce(total, v, axis=None) for v in strategy.run(replica_step, args=(x, y)))

        return step

    def _fit_densities(self, images: np.ndarray) -> None:
        emb = self.embed(images)
        self.image_mean_, self.image_precision_ = fit_gaussian(emb)
        self.train_embeddings_ = emb.astype(np.float32)
        # The covariance of 128 (or D) dims needs far fewer than all patches: a seeded sample of
        # DENSITY_SAMPLE, drawn as the features stream past, keeps memory bounded.
        for prefix, (fn, batch_size) in {"patch": self._patch_run(), "dense": self._dense_run()}.items():
            grid = self._traced(prefix, fn)(tf.zeros((1, *self.input_shape), tf.float32)).shape[1:3]
            total = len(images) * int(grid[0]) * int(grid[1])
            batches = (out for (out,) in batch_outputs(self._traced(prefix, fn), images, batch_size))
            mean, precision = fit_gaussian(sample_rows(batches, total, DENSITY_SAMPLE, self.seed))
            setattr(self, f"{prefix}_mean_", mean)
            setattr(self, f"{prefix}_precision_", precision)

    # ------------------------------------------------------------------ inference

    def embed(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N, 128) embeddings of whole images."""
        return in_batches(self._traced("embed", self._embed_batch), images, batch_size)[0]

    def _traced(self, name: str, fn):
        """`fn` (image batch -> tensor) traced once, for every batch size."""
        traced = self.__dict__.setdefault("_traced_fns", {})
        if name not in traced:
            traced[name] = tf.function(fn, input_signature=[tf.TensorSpec((None, *self.input_shape), tf.float32)])
        return traced[name]

    def _embed_batch(self, x):
        return self.network_(x, training=False)[0]

    def _patches(self, x):
        """(N * gh * gw, P, P, C) patches of a batch, and the grid (gh, gw)."""
        p, s = self.patch_size, self.stride
        c = self.input_shape[-1]
        patches = tf.image.extract_patches(x, [1, p, p, 1], [1, s, s, 1], [1, 1, 1, 1], "VALID")
        gh, gw = patches.shape[1], patches.shape[2]
        return tf.reshape(patches, (-1, p, p, c)), (gh, gw)

    def patch_embeddings(self, images: np.ndarray, batch_size: int = 4) -> np.ndarray:
        """(N, gh, gw, 128) embeddings of the patches (upsampled to `patch_input` px)."""
        fn, _ = self._patch_run()
        return in_batches(self._traced("patch", fn), images, batch_size)[0]

    def _patch_run(self):
        """The batch function of `patch_embeddings` and its batch size."""
        def run(x):
            patches, grid = self._patches(x)
            patches = tf.image.resize(patches, (self.patch_input,) * 2, method="nearest")
            emb = self.patch_network_(patches, training=False)
            return tf.reshape(emb, (tf.shape(x)[0], grid[0], grid[1], -1))

        self.patch_network_  # noqa: B018 - built eagerly: its weights are copied, which a trace cannot do
        return run, 4

    @property
    def patch_network_(self) -> keras.Model:
        """The same weights on patch-sized inputs (the network is convolutional up to the pooling)."""
        if "_patch_net" not in self.__dict__:
            from anomaly.backbones import build_backbone

            size = (self.patch_input, self.patch_input)
            backbone, preprocess = build_backbone(self.backbone, "random", (*size, 3))
            net = cutpaste_network(backbone, preprocess, (*size, self.input_shape[-1]))
            net.set_weights(self.network_.get_weights())
            self.__dict__["_patch_net"] = keras.Model(net.input, net.outputs[0])
        return self.__dict__["_patch_net"]

    def _to_rgb_input(self, x):
        x = tf.repeat(x, 3, axis=-1) if self.input_shape[-1] == 1 else x
        return self.network_.get_layer("preprocess")(x)

    def _dense_features(self, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """(N, h, w, D) local features of the fine-tuned backbone at its PatchCore layers."""
        fn, _ = self._dense_run()
        return in_batches(self._traced("dense", fn), images, batch_size)[0]

    def _dense_run(self):
        """The batch function of `_dense_features` and its batch size."""
        from anomaly.backbones import backbone_spec

        if "_dense_net" not in self.__dict__:
            names = backbone_spec(self.backbone).patch_layers
            self.__dict__["_dense_net"] = keras.Model(
                self._backbone_model.input, [self._backbone_model.get_layer(n).output for n in names])
        return self._dense_batch, 8

    def _dense_batch(self, x):
        out = self.__dict__["_dense_net"](self._to_rgb_input(x), training=False)
        return local_patches(list(out) if isinstance(out, (list, tuple)) else [out])

    def _dense_scores(self, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """(N, h, w) Mahalanobis distances of the dense features, computed in TensorFlow (float32)."""
        return in_batches(self._traced("dense_scores", self._dense_score_run()), images, batch_size)[0]

    def _dense_score_run(self):
        """The batch function of `_dense_scores` (the feature network is built here, outside any trace)."""
        self._dense_run()
        return lambda x: mahalanobis_tensor(self._dense_batch(x), self.dense_mean_, self.dense_precision_)

    def _gradcam(self, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """(N, h, w) Grad-CAM of the image Mahalanobis distance on the backbone's last feature map."""
        net = self.network_
        head = [net.get_layer("pool")] + [net.get_layer(f"head{i}_{k}") for i in range(2)
                                           for k in ("dense", "bn", "relu")] + [net.get_layer("embedding")]
        mean = tf.constant(self.image_mean_, tf.float32)
        precision = tf.constant(self.image_precision_, tf.float32)

        def run(x):
            features = self._backbone_model(self._to_rgb_input(x), training=False)
            with tf.GradientTape() as tape:
                tape.watch(features)
                h = features
                for layer in head:
                    h = layer(h, training=False)
                d = h - mean
                score = tf.reduce_sum(tf.matmul(d, precision) * d, axis=-1)  # squared distance
            grads = tape.gradient(score, features)
            weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
            return tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))

        return in_batches(self._traced("gradcam", run), images, batch_size)[0]

    def image_scores(self, images: np.ndarray) -> np.ndarray:
        """(N,) anomaly scores of whole images: Mahalanobis distance (gde) or -log density (kde)."""
        emb = self.embed(self.prepare(images)).astype(np.float64)
        if self.density == "kde":
            from sklearn.neighbors import KernelDensity

            def unit(v):
                return v / np.linalg.norm(v, axis=1, keepdims=True)

            kde = KernelDensity(kernel="gaussian", bandwidth=1.0).fit(unit(self.train_embeddings_.astype(np.float64)))
            return -kde.score_samples(unit(emb))
        return mahalanobis(emb, self.image_mean_, self.image_precision_)

    def map_function(self, method: str, dtype: str):
        """The `dense` or `patch` maps in TensorFlow (see `Detector.map_function`); `gradcam` needs gradients,
        which an exported graph does not carry."""
        if dtype != "float64":
            raise AnomalyError(f"dtype: cutpaste maps are float64, got {dtype}")
        size = self.input_shape[:2]
        if method == "dense":
            if getattr(self, "dense_mean_", None) is None:
                raise AnomalyError("this cutpaste model was trained before dense maps existed; retrain it", "method")
            scores = self._dense_score_run()
            return lambda x: to_full_map(scores(x), size, self.map_sigma)
        if method != "patch":
            raise AnomalyError(f"cutpaste's {method} maps cannot be exported (they need gradients at run time); "
                               "finetune its dense or patch maps", "method")
        embed, _ = self._patch_run()
        h, w = size
        inner = (h - self.patch_size + self.stride, w - self.patch_size + self.stride)
        top, left = (h - inner[0]) // 2, (w - inner[1]) // 2
        # Edge padding as gathers of clipped rows and columns (what np.pad's "edge" does).
        rows = np.clip(np.arange(h) - top, 0, inner[0] - 1)
        cols = np.clip(np.arange(w) - left, 0, inner[1] - 1)

        def maps(x):
            grid = mahalanobis_tensor(embed(x), self.patch_mean_, self.patch_precision_)
            full = tf.gather(tf.gather(to_full_map(grid, inner, 0.0), rows, axis=1), cols, axis=2)
            return to_full_map(full, size, self.map_sigma) if self.map_sigma > 0 else full

        return maps

    def score_function(self):
        """`image_scores` in TensorFlow, float32: the Mahalanobis distance (gde) or -log density (kde)."""
        self.network_  # noqa: B018 - built eagerly
        if self.density == "kde":
            train = self.train_embeddings_.astype(np.float64)
            train = (train / np.linalg.norm(train, axis=1, keepdims=True)).astype(np.float32)
            n, dims = train.shape
            # scikit-learn's Gaussian KernelDensity of bandwidth 1: log sum exp(-d^2/2) - log n - dims/2 log(2 pi)
            offset = float(np.log(n) + 0.5 * dims * np.log(2 * np.pi))

            def kde(x):
                emb = tf.math.l2_normalize(self._embed_batch(x), axis=1)
                squared = tf.maximum(2.0 - 2.0 * tf.matmul(emb, tf.constant(train), transpose_b=True), 0.0)
                return offset - tf.reduce_logsumexp(-0.5 * squared, axis=1)

            return kde
        return lambda x: mahalanobis_tensor(self._embed_batch(x), self.image_mean_, self.image_precision_)

    def _anomaly_maps(self, images: np.ndarray, method: str, dtype: str, return_reconstructions: bool = False):
        """(N, H, W) float32 maps (`patch`, `dense` or `gradcam`, see the module), upsampled and smoothed."""
        if dtype != "float64":
            raise AnomalyError(f"dtype: cutpaste maps are float64, got {dtype}")
        if method != "patch":
            if method == "dense":
                if getattr(self, "dense_mean_", None) is None:
                    raise AnomalyError("this cutpaste model was trained before dense maps existed; retrain it",
                                       "method")
                grid = self._dense_scores(images)
            else:
                grid = self._gradcam(images)
            maps = to_full_map(tf.constant(grid, tf.float32), self.input_shape[:2], self.map_sigma).numpy()
            return (maps, None) if return_reconstructions else maps
        emb = self.patch_embeddings(images)
        grid = mahalanobis(emb, self.patch_mean_, self.patch_precision_)
        # Each score sits at its patch centre: pad by half a patch so the map covers the image.
        h, w = self.input_shape[:2]
        inner = (h - self.patch_size + self.stride, w - self.patch_size + self.stride)
        maps = to_full_map(tf.constant(grid, tf.float32), inner, 0.0).numpy()
        top, left = (h - inner[0]) // 2, (w - inner[1]) // 2
        maps = np.pad(maps, ((0, 0), (top, h - inner[0] - top), (left, w - inner[1] - left)), mode="edge")
        if self.map_sigma > 0:
            maps = to_full_map(tf.constant(maps), (h, w), self.map_sigma).numpy()
        return (maps, None) if return_reconstructions else maps

    # ------------------------------------------------------------------ saving

    def save_plots(self, train_images: np.ndarray, dataset, folder: Path) -> None:
        """synthetic_examples.png and tsne.png (training images, synthetic anomalies and up to 32
        of the dataset's real test defects, shown only, never fitted) in `folder`."""
        from anomaly.data.io import read_images
        from anomaly.plots.cutpaste import plot_synthetic_examples, plot_tsne

        plot_synthetic_examples(train_images, folder / "synthetic_examples.png", self.seed)
        rng = np.random.default_rng(self.seed + 1)
        pick = train_images[:64]
        groups = {"normal (training)": self.embed(pick)}
        for label in (CUTPASTE, SCAR):
            groups[f"synthetic {CLASS_NAMES[label]}"] = self.embed(np.stack([pretext_sample(x, label, rng)
                                                                              for x in pick]))
        defects = [s.path for s in dataset.test if s.label == 1][:32]
        if defects:
            color_mode = "grayscale" if self.input_shape[-1] == 1 else "rgb"
            groups["real defects (test)"] = self.embed(read_images(defects, color_mode, self.input_shape[:2]))
        plot_tsne(groups, folder / "tsne.png", self.seed)

    def summary(self) -> dict:
        last = self.history_[-1] if self.history_ else {}
        return {"epochs": list(self.epochs), "pretext_accuracy": last.get("accuracy"),
                "patch_size": self.patch_size, "patch_stride": self.stride, "density": self.density}

    def _save_state(self, path: Path) -> None:
        weights = {f"w{i}": w for i, w in enumerate(self.network_.get_weights())}
        np.savez(path, image_mean=self.image_mean_, image_precision=self.image_precision_,
                 patch_mean=self.patch_mean_, patch_precision=self.patch_precision_,
                 dense_mean=self.dense_mean_, dense_precision=self.dense_precision_,
                 train_embeddings=self.train_embeddings_, **weights)

    def _load_state(self, path: Path) -> None:
        try:
            with load_npz(path) as data:
                for name in ("image_mean", "image_precision", "patch_mean", "patch_precision", "train_embeddings"):
                    setattr(self, f"{name}_", data[name])
                for name in ("dense_mean", "dense_precision"):  # absent in models saved before dense maps
                    setattr(self, f"{name}_", data[name] if name in data.files else None)
                weights = [data[f"w{i}"] for i in range(sum(k.startswith("w") for k in data.files))]
            self.build()
            self.network_.set_weights(weights)
        except (OSError, KeyError, ValueError) as exc:
            raise AnomalyError(f"-p {path}: cannot load cutpaste weights ({exc})") from None
