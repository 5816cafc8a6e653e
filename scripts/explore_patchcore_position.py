"""Does position close PatchCore's gap to PaDiM? Patch features with their grid coordinates appended.

Exploration for docs/results.md ("PatchCore's choices"), not a detector of the package: PatchCore at
its defaults, each patch feature extended by its (row, column) in [0, 1] times LAMBDA times the
median distance between two training patches (from 8 training images), so that a bank patch from
elsewhere in the image costs up to LAMBDA typical distances more. Fitted on the seed-42 training
split, scored on every test image (map maximum); LAMBDA 0 is PatchCore itself.

Example:
    python scripts/explore_patchcore_position.py ../shared/data/kolektorsdd/kolektorsdd 0 0.5 1 2
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tensorflow as tf

from anomaly.config import load_train_config
from anomaly.data.io import read_images, read_mask
from anomaly.detectors.features import local_patches
from anomaly.detectors.patchcore import PatchCoreDetector
from anomaly.metrics import aupro, image_auroc, pixel_auroc
from anomaly.train import load_split


class PositionalPatchCore(PatchCoreDetector):
    """PatchCore whose patch features end with their scaled grid coordinates."""

    weight = 0.0  # LAMBDA x the typical distance between two training patches

    def _local_patches(self, x):
        f = local_patches(self.extractor(x), self.neighbourhood)
        if self.weight <= 0:
            return f
        yy, xx = tf.meshgrid(tf.linspace(0.0, 1.0, f.shape[1]), tf.linspace(0.0, 1.0, f.shape[2]), indexing="ij")
        coords = tf.tile(tf.stack([yy, xx], -1)[None] * self.weight, [tf.shape(f)[0], 1, 1, 1])
        return tf.concat([f, coords], -1)


def main() -> None:
    data, lambdas = sys.argv[1], [float(v) for v in sys.argv[2:]]
    config = load_train_config({"architecture": "patchcore", "data_dir": data})
    dataset = config.dataset()
    _, _, train_x, _ = load_split(dataset, config)
    test = dataset.require_test()
    size = config.image_size
    images = read_images([s.path for s in test], config.color_mode, size)
    labels = np.array([s.label for s in test])
    masks = None
    if dataset.has_masks:
        masks = np.stack([read_mask(s.mask_path, s.path, size) if s.mask_path else np.zeros(size, bool)
                          for s in test])
    plain = PatchCoreDetector.from_train_config(config)
    features = plain.patch_features(train_x[:8]).reshape(-1, plain.output_shape(plain._local_patches)[-1])
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(features), 4000), rng.integers(0, len(features), 4000)
    typical = float(np.median(np.linalg.norm(features[a] - features[b], axis=1)))
    for lam in lambdas:
        detector = PositionalPatchCore.from_train_config(config)
        detector.weight = lam * typical
        maps = detector.fit(train_x).anomaly_maps(images)
        print(json.dumps({"data": dataset.name, "lambda": lam, "typical_distance": typical,
                          "image_auroc": image_auroc(labels, maps.reshape(len(maps), -1).max(axis=1)),
                          "pixel_auroc": None if masks is None else pixel_auroc(masks, maps),
                          "aupro": None if masks is None else aupro(masks, maps, 0.3)}), flush=True)


if __name__ == "__main__":
    main()
