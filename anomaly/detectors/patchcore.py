"""PatchCore: a memory bank of locally aware patch features of defect-free images.

Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022. Each image
position gets a feature from two mid-level backbone layers (3x3 local average, the coarser map
upsampled to the finer grid, concatenated). A greedy k-centre coreset of all training patches
is the memory bank; a test patch's score is its distance to the nearest bank feature, the map
is the score grid upsampled bilinearly and smoothed with a Gaussian (sigma 4 px), and the
image score is the map's maximum.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from anomaly.arrays import load_npz
from anomaly.detectors.base import Detector, register
from anomaly.detectors.features import BackboneDetectorMixin, local_patches, row_offsets, to_full_map
from anomaly.errors import AnomalyError
from anomaly.progress import advance as advance_progress
from anomaly.progress import step as progress_step


def greedy_coreset(features: np.ndarray, n: int, projection_dim: int = 128, n_starts: int = 10,
                   seed: int = 0, on_picks: Callable[[int], None] | None = None) -> np.ndarray:
    """Indices of `n` features chosen by approximate greedy k-centre (farthest-point) selection.

    As the official implementation: distances are measured after a random linear projection to
    `projection_dim` dimensions (Johnson-Lindenstrauss), and every point starts with its mean
    distance to `n_starts` random points, so the first pick is already far from the bulk.

    Args:
        features: (N, D) float32.
        n: how many to select (<= N).
        projection_dim: dimensions of the projection; no projection when >= D.
        n_starts: random starting points.
        seed: seeds the projection and the starting points.
        on_picks: called with the number of features picked by each segment of the selection.

    Returns:
        (n,) int64 indices, in selection order.
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(features, np.float32)
    if projection_dim < x.shape[1]:
        bound = 1.0 / np.sqrt(x.shape[1])
        x = x @ rng.uniform(-bound, bound, (x.shape[1], projection_dim)).astype(np.float32)
    starts = rng.choice(len(x), size=min(n_starts, len(x)), replace=False)
    x = tf.constant(x)
    squared, anchor = _anchor(x, tf.constant(starts, tf.int32))
    chosen = []
    # In segments, so a long selection shows its progress; each continues the last one's distances.
    for done in range(0, n, _SEGMENT):
        k = min(_SEGMENT, n - done)
        picks, anchor = _greedy(x, squared, anchor, tf.constant(k))
        chosen.append(picks.numpy())
        if on_picks is not None:
            on_picks(k)
    return np.concatenate(chosen).astype(np.int64)


_SEGMENT = 256  # picks per call of the traced selection loop


def _distance(x, squared, c):
    return tf.sqrt(tf.maximum(squared - 2.0 * tf.linalg.matvec(x, c) + tf.reduce_sum(c * c), 0.0))


@tf.function(reduce_retracing=True)
def _anchor(x, starts):
    """Squared norms of the rows, and each row's mean distance to the starting rows."""
    squared = tf.reduce_sum(x * x, axis=1)
    return squared, tf.reduce_mean(tf.map_fn(lambda c: _distance(x, squared, c), tf.gather(x, starts)), axis=0)


@tf.function(reduce_retracing=True)
def _greedy(x, squared, anchor, n):
    """`n` farthest-point picks from the distances `anchor`; the picks and the updated distances."""
    chosen = tf.TensorArray(tf.int32, size=n)
    for i in tf.range(n):
        idx = tf.cast(tf.argmax(anchor), tf.int32)
        chosen = chosen.write(i, idx)
        anchor = tf.minimum(anchor, _distance(x, squared, x[idx]))
    return chosen.stack(), anchor


def augmented_bank(bank: np.ndarray) -> np.ndarray:
    """The bank as rows [b, -||b||^2 / 2], so one product ranks it for `nearest_distances`."""
    bank = np.asarray(bank, np.float32)
    return np.concatenate([bank, -0.5 * np.sum(bank.astype(np.float64) ** 2, axis=1, keepdims=True)],
                          axis=1).astype(np.float32)


def nearest_distances(queries: tf.Tensor, bank_aug: tf.Tensor, k: int = 1) -> tuple[tf.Tensor, tf.Tensor]:
    """Euclidean distances and indices of the k nearest bank rows for each query row (exact).

    ||q - b||^2 = ||q||^2 - 2 (q.b - ||b||^2 / 2): with the bank augmented by -||b||^2 / 2
    (`augmented_bank`) and the queries by a 1, a single matrix product ranks the whole bank,
    and the largest entries are the nearest rows. One pass over the (Q, M) product instead of
    three keeps the search bound by the product itself (see scripts/benchmark_nn.py).

    Args:
        queries: (Q, D) float32.
        bank_aug: (M, D + 1) from `augmented_bank`.
        k: neighbours.

    Returns:
        ((Q, k) distances, (Q, k) int32 indices), nearest first.
    """
    ones = tf.ones_like(queries[:, :1])
    augmented = tf.concat([queries, ones], axis=1)
    bank_aug = tf.convert_to_tensor(bank_aug, tf.float32)
    # The nearest row of a bank of more than 2048 rows is searched 1024 rows at a time, and the
    # chunks' winners compared: without oneDNN, one product of 4096 queries with 5000-20000 rows and
    # its argmax took 1.3-1.9x as long as the chunks; with oneDNN the chunks cost ~10% more (docs/speed.md).
    chunk, rows = 1024, bank_aug.shape[0]
    starts = list(range(0, rows, chunk)) if k == 1 and rows is not None and rows > 2 * chunk else [0]
    best, idx = [], []
    for start in starts:
        scores = tf.matmul(augmented, bank_aug if len(starts) == 1 else bank_aug[start:start + chunk],
                           transpose_b=True)
        if k == 1:
            i = tf.argmax(scores, axis=1, output_type=tf.int32)[:, None]
            best.append(tf.gather(scores, i, batch_dims=1))
            idx.append(i + start if start else i)
        else:
            b, i = tf.math.top_k(scores, k)
            best.append(b)
            idx.append(i)
    if len(starts) == 1:
        best, idx = best[0], idx[0]
    else:  # argmax picks the first of equal maxima: the earlier chunk, as one product would
        pick = tf.argmax(tf.concat(best, axis=1), axis=1, output_type=tf.int32)[:, None]
        best = tf.gather(tf.concat(best, axis=1), pick, batch_dims=1)
        idx = tf.gather(tf.concat(idx, axis=1), pick, batch_dims=1)
    d2 = tf.reduce_sum(queries * queries, axis=1, keepdims=True) - 2.0 * best
    return tf.sqrt(tf.maximum(d2, 0.0)), idx


# Patch features held at once for the exact coreset (bottle's 209 images at 256 px: 1.3 GB).
EXACT_BYTES = 3 << 29
# Beyond it: chunks of this many patches (24 MiB per 64 feature channels), and each chunk keeps
# this many times its share of the bank as candidates for the final selection.
CHUNK_ROWS = 1 << 17
OVERSAMPLE = 2


def _exact(patches: int, width: int) -> bool:
    """Whether the coreset of `patches` float32 features of `width` is chosen from all at once."""
    return patches * width * 4 <= EXACT_BYTES


def _chunked_coreset(batches, total: int, n: int, seed: int, progress: bool = False) -> np.ndarray:
    """`n` rows of `total` streamed feature rows: greedy coresets of chunks, then of their union."""
    candidates, buffer, held, chunk = [], [], 0, 0

    def reduce():
        nonlocal buffer, held, chunk
        block = np.concatenate(buffer)
        keep = min(len(block), max(1, math.ceil(OVERSAMPLE * n * len(block) / total)))
        candidates.append(block[greedy_coreset(block, keep, seed=seed + chunk)])
        buffer, held, chunk = [], 0, chunk + 1

    for _, rows in row_offsets(batches):
        buffer.append(rows)
        held += len(rows)
        if held >= CHUNK_ROWS:
            reduce()
    if buffer:
        reduce()
    pool = np.concatenate(candidates)
    if n >= len(pool):
        return pool
    with progress_step(f"choosing the memory bank: {n:,} of {len(pool):,} candidates", n, progress, "patch"):
        return pool[greedy_coreset(pool, n, seed=seed, on_picks=advance_progress)]


@register
class PatchCoreDetector(BackboneDetectorMixin, Detector):
    """PatchCore with a coreset memory bank.

    Args:
        input_shape: (H, W, C) of the images.
        backbone: a name from `anomaly.backbones.list_backbones()`.
        weights: "imagenet", "random" or a weights file.
        layers: the two layers whose patch features are concatenated; empty for the
            backbone's stride 8 and 16 layers (`BackboneSpec.padim_layers`).
        coreset_ratio: share of all training patches kept in the memory bank (1 keeps all).
        min_bank_size: but at least this many (or all): a small training set at a small ratio
            leaves too few patches to cover the normal variation (bottle's 1,540-patch bank
            halved lost 0.018 AUPRO, docs/results.md).
        num_neighbors: a patch's score is its mean distance to this many nearest bank features.
        neighbourhood: the side of the window each feature map is averaged over (the paper's
            patch size p).
        reweight: scale each image's map by the paper's weight 1 - softmax of the distances
            from its most anomalous patch to the 9 bank neighbours of that patch's nearest
            feature (so the image score, the map maximum, is the re-weighted score).
        map_sigma: Gaussian sigma (pixels) smoothing the upsampled map.
        seed: seeds the coreset.
        batch_size: images per forward pass.
    """

    name = "patchcore"
    methods = ("nn",)
    file_suffix = ".npz"
    finetune_defaults = {"method": "nn", "smooth": 0.0, "normalize": False, "score_sigma": 0.0}
    reweight_neighbors = 9
    checks = {"coreset_ratio": "fraction", "num_neighbors": "positive", "map_sigma": "non-negative",
              "min_bank_size": "positive", "neighbourhood": "positive"}

    def __init__(self, input_shape=(256, 256, 3), backbone: str = "efficientnet_lite0", weights: str = "imagenet",
                 layers: tuple[str, ...] = (), coreset_ratio: float = 0.002, num_neighbors: int = 1,
                 reweight: bool = False, map_sigma: float = 4.0, seed: int = 0, batch_size: int = 8,
                 min_bank_size: int = 1000, neighbourhood: int = 3):
        from anomaly.backbones import backbone_spec

        self.input_shape = tuple(input_shape)
        self.backbone, self.weights = backbone, weights
        self.layers = tuple(layers) or backbone_spec(backbone).padim_layers
        self.coreset_ratio, self.num_neighbors, self.reweight = coreset_ratio, num_neighbors, reweight
        self.map_sigma, self.seed, self.batch_size = map_sigma, seed, batch_size
        self.min_bank_size, self.neighbourhood = min_bank_size, neighbourhood

    def bank_plan(self, n_images: int) -> tuple[int, int, int]:
        """(patches, bank rows, feature width) that fitting `n_images` images gives."""
        grid = self.output_shape(self._local_patches)
        patches = n_images * grid[0] * grid[1]
        return patches, min(patches, max(1, self.min_bank_size, int(round(patches * self.coreset_ratio)))), grid[2]

    def fit(self, train_images: np.ndarray, validation_images: np.ndarray | None = None,
            progress: bool = False) -> PatchCoreDetector:
        """Build the memory bank `memory_bank_` (M, D) from defect-free images.

        Up to `EXACT_BYTES` of patch features the coreset is chosen from all patches at once, as
        the paper. A larger set is streamed: the features of each chunk of `CHUNK_ROWS` patches
        are reduced to `OVERSAMPLE` times its share of the bank by the same greedy selection, and
        the bank is the greedy selection from those candidates. Memory then holds one chunk and
        the candidates, and the selection time grows linearly with the images.
        """
        images = self.prepare(train_images)
        total, n, width = self.bank_plan(len(images))
        h, w, _ = self.output_shape(self._local_patches)
        self.grid_ = (h, w)
        rows = self.stream(self._local_patches, images)
        if _exact(total, width):
            features = np.empty((total, width), np.float32)
            for start, batch in row_offsets(rows):
                features[start:start + len(batch)] = batch
            if n < len(features):
                with progress_step(f"choosing the memory bank: {n:,} of {total:,} patches", n, progress, "patch"):
                    features = features[greedy_coreset(features, n, seed=self.seed, on_picks=advance_progress)]
        else:
            features = _chunked_coreset(rows, total, n, self.seed, progress)
        self.memory_bank_ = np.ascontiguousarray(features, np.float32)
        self.forget_traces()
        return self

    def fit_plan(self, n_images: int) -> str:
        total, n, width = self.bank_plan(n_images)
        mib = 4 * width / 2 ** 20
        if _exact(total, width):
            how = f"chosen from all patches at once ({total * mib:,.0f} MiB of features)"
        else:
            candidates = min(total, math.ceil(OVERSAMPLE * n * (1 + CHUNK_ROWS / total)))
            how = (f"chosen from chunks of {CHUNK_ROWS:,} patches ({CHUNK_ROWS * mib:,.0f} MiB) as they "
                   f"stream, then from ~{candidates:,} candidates ({candidates * mib:,.0f} MiB)")
        return f"memory bank: {n:,} of {total:,} patches x {width} ({n * mib:,.1f} MiB), {how}"

    def summary(self) -> dict:
        return {"bank_size": int(len(self.memory_bank_)), "feature_dim": int(self.memory_bank_.shape[1]),
                "bank_mb": self.memory_bank_.nbytes / 2 ** 20, "layers": list(self.layers)}

    def _local_patches(self, x):
        return local_patches(self.extractor(x), self.neighbourhood)

    def _maps(self, x):
        """Maps of an image batch (traced once; the bank becomes a constant of the graph)."""
        bank = tf.constant(self.memory_bank_)
        bank_aug = tf.constant(augmented_bank(self.memory_bank_))
        k = min(self.num_neighbors, len(self.memory_bank_))
        b = min(self.reweight_neighbors, len(self.memory_bank_))
        f = self._local_patches(x)
        n, h, w = tf.shape(f)[0], tf.shape(f)[1], tf.shape(f)[2]
        flat = tf.reshape(f, (-1, f.shape[-1]))
        dist, idx = nearest_distances(flat, bank_aug, k)
        grid = tf.reshape(tf.reduce_mean(dist, axis=1), (n, h, w))
        maps = to_full_map(grid, self.input_shape[:2], self.map_sigma)
        if self.reweight:
            per_image = tf.reshape(grid, (n, -1))
            worst = tf.argmax(per_image, axis=1, output_type=tf.int32)
            patch = tf.gather(tf.reshape(f, (n, h * w, -1)), worst, batch_dims=1)      # (n, D)
            nearest = tf.gather(tf.reshape(idx[:, 0], (n, h * w)), worst, batch_dims=1)  # (n,)
            _, neighbours = nearest_distances(tf.gather(bank, nearest), bank_aug, b)  # (n, b)
            delta = tf.norm(patch[:, None, :] - tf.gather(bank, neighbours), axis=-1)    # (n, b)
            weight = 1.0 - tf.nn.softmax(delta, axis=1)[:, 0]
            maps = maps * weight[:, None, None]
        return maps

    def _save_state(self, path: Path) -> None:
        np.savez(path, memory_bank=self.memory_bank_, grid=np.array(self.grid_))

    def _load_state(self, path: Path) -> None:
        try:
            with load_npz(path) as data:
                self.memory_bank_, self.grid_ = data["memory_bank"], tuple(data["grid"])
        except (OSError, KeyError, ValueError) as exc:
            raise AnomalyError(f"-p {path}: cannot load a patchcore memory bank ({exc})") from None
