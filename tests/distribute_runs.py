"""Seeded training runs on one device and on two logical CPUs, for tests/test_distribute.py.

Run as a script (`python tests/distribute_runs.py OUT_DIR [CASE ...]`): TensorFlow's logical
devices can only be set before it starts, which a pytest session has done long before. Each case
trains the same seeded detector twice, with strategy "none" and "mirrored", and writes what the
test compares to OUT_DIR/results.json (and the mirrored detector's maps and model to OUT_DIR).

Cases:
    autoencoder: mvtecCAE, 32x32 grayscale, learning-rate range test then 2 epochs of Keras `fit`
        (12 training images in batches of 4: every batch splits evenly).
    cutpaste: CutPaste, 32x32 RGB, 1 + 1 epochs of its own loop (11 images in batches of 4: the
        last batch of 3 splits 2 + 1), on a two-layer stand-in for the backbone (conv, batch norm,
        ReLU, named as EfficientNet-Lite0's feature layers): the training loop is under test, and
        tracing the real backbone's distributed step takes half a minute.
    refusals: a batch smaller than the replicas; a last batch smaller than them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

REPLICAS = 2
tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                           [tf.config.LogicalDeviceConfiguration()] * REPLICAS)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import anomaly.backbones  # noqa: E402
from anomaly.detectors import Detector  # noqa: E402
from anomaly.detectors.autoencoder import MvtecCAE, set_seed  # noqa: E402
from anomaly.detectors.cutpaste import CutPasteDetector  # noqa: E402
from anomaly.errors import AnomalyError  # noqa: E402


def images(n: int, size: int, channels: int, seed: int) -> np.ndarray:
    """Smooth seeded random images in [0, 1] (noise at a quarter of the size, upsampled)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, size // 4, size // 4, channels)).astype(np.float32)
    return tf.image.resize(x, (size, size)).numpy().clip(0.0, 1.0)


def autoencoder(out: Path) -> dict:
    train, val = images(12, 32, 1, 0), images(4, 32, 1, 1)
    runs = {}
    for strategy in ("none", "mirrored"):
        start = time.perf_counter()
        set_seed(3)
        # A range test up to 1e-2: it and the training it picks the rate for stay well conditioned.
        detector = MvtecCAE(input_shape=(32, 32, 1), batch_size=4, epochs=2, lr_finder_epochs=2,
                            lr_finder_end=1e-2, strategy=strategy)
        detector.fit(train, val)
        result = detector.fit_result_
        runs[strategy] = {"loss": [h["loss"] for h in result.history],
                          "val_loss": [h["val_loss"] for h in result.history],
                          "finder": result.lr_finder.losses, "lr": result.lr,
                          "seconds": time.perf_counter() - start}
        if strategy == "mirrored":
            detector.save(out / "autoencoder")
            np.save(out / "autoencoder_maps.npy", detector.anomaly_maps(val, "l2"))
            np.save(out / "autoencoder_val.npy", val)
    return runs


def tiny_backbone(name: str, weights: str = "random", input_shape=(32, 32, 3), seed: int = 0):
    """`anomaly.backbones.build_backbone`'s interface: a model whose layers the dense maps read, and
    its preprocessing."""
    inputs = keras.Input(input_shape)
    x = inputs
    for i, (filters, stride, layer) in enumerate(((8, 4, "block3_expand_relu"), (16, 2, "block5_expand_relu"))):
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=layer)(x)
    return keras.Model(inputs, x, name="tiny"), lambda v: v * 2.0 - 1.0


def cutpaste(out: Path) -> dict:
    anomaly.backbones.build_backbone = tiny_backbone
    train = images(11, 32, 3, 2)
    runs = {}
    for strategy in ("none", "mirrored"):
        start = time.perf_counter()
        detector = CutPasteDetector(input_shape=(32, 32, 3), weights="random", epochs=(1, 1), batch_size=4,
                                    seed=5, strategy=strategy)
        detector.fit(train)
        runs[strategy] = {"loss": [h["loss"] for h in detector.history_],
                          "accuracy": [h["accuracy"] for h in detector.history_],
                          "seconds": time.perf_counter() - start}
        runs[strategy]["scores"] = detector.image_scores(train).tolist()
        if strategy == "mirrored":
            detector.save(out / "cutpaste")
            runs["loaded_scores"] = Detector.load(out / "cutpaste").image_scores(train).tolist()
    return runs


def refusals(out: Path) -> dict:
    x = images(9, 32, 1, 0)
    errors = {}
    for name, batch_size, n_train in (("small batch", 1, 8), ("short last batch", 4, 9)):
        try:
            MvtecCAE(input_shape=(32, 32, 1), batch_size=batch_size, epochs=1, lr=1e-3,
                     strategy="mirrored").fit(x[:n_train], x[:4])
            errors[name] = None
        except AnomalyError as exc:
            errors[name] = [exc.option, exc.message]
    return errors


CASES = {"autoencoder": autoencoder, "cutpaste": cutpaste, "refusals": refusals}

if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    results = {name: CASES[name](out) for name in (sys.argv[2:] or CASES)}
    (out / "results.json").write_text(json.dumps(results, indent=1))
