"""`strategy: mirrored` (tf.distribute) against one device, and mixed_float16's loss scaling.

The two-device runs happen in a fresh process (tests/distribute_runs.py): TensorFlow's logical
devices can only be configured before it starts. There the same seeded detector trains with
strategy "none" and with "mirrored" on two logical CPUs; here the curves are compared.

Tolerance: the global batch is the same, so the runs differ only in float32 rounding (a batch's
mean loss and gradient summed from two half-batches instead of one pass; the all-reduce), which
measured at most 1.3e-7 relative (range test 7e-8, training and validation loss 1.3e-7, CutPaste
3e-8). rtol 1e-5 leaves room for that and catches a wrong global-batch rule, as measured by
breaking it: replica losses summed instead of averaged (the curves double), each replica's loss
averaged over its own part (CutPaste's unevenly split last batch: 5e-2), per-replica batch-norm
statistics (CutPaste: 3e-1).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from anomaly.cli import train as train_cli
from anomaly.cli.common import run
from tests.conftest import train_args

ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("distribute")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "distribute_runs.py"), str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), out


def test_mirrored_autoencoder_follows_the_one_device_range_test_and_loss_curve(runs):
    results, _ = runs
    one, two = results["autoencoder"]["none"], results["autoencoder"]["mirrored"]
    assert len(one["finder"]) == len(two["finder"]) >= 6
    np.testing.assert_allclose(two["finder"], one["finder"], rtol=RTOL)
    assert two["lr"] == one["lr"]  # the range test picks the same rate: the batch is the global one
    assert len(one["loss"]) == len(two["loss"]) == 2
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=RTOL)
    np.testing.assert_allclose(two["val_loss"], one["val_loss"], rtol=RTOL)


def test_mirrored_cutpaste_follows_the_one_device_loss_curve(runs):
    results, _ = runs
    one, two = results["cutpaste"]["none"], results["cutpaste"]["mirrored"]
    assert len(one["loss"]) == len(two["loss"]) == 2
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=RTOL)
    assert two["accuracy"] == one["accuracy"]
    np.testing.assert_allclose(two["scores"], one["scores"], rtol=1e-4)
    # Saved from the mirrored run and loaded afresh: the same scores.
    np.testing.assert_allclose(results["cutpaste"]["loaded_scores"], two["scores"], rtol=1e-6)


def test_a_mirrored_model_loads_without_a_strategy(runs):
    from anomaly.detectors import Detector

    _, out = runs
    detector = Detector.load(out / "autoencoder")
    assert detector.strategy == "mirrored"  # recorded; loading and predicting need none
    maps = detector.anomaly_maps(np.load(out / "autoencoder_val.npy"), "l2")
    np.testing.assert_allclose(maps, np.load(out / "autoencoder_maps.npy"), rtol=1e-5, atol=1e-7)


def test_batches_that_leave_a_replica_without_images_are_refused(runs):
    results, _ = runs
    small, short = results["refusals"]["small batch"], results["refusals"]["short last batch"]
    assert small == ["batch_size", "1 is smaller than the 2 replicas of the strategy: the batch is the global "
                                    "one, split between them; give at least 2"]
    assert short[0] == "batch_size" and "last batch of 1, fewer than the 2 replicas" in short[1]


def test_bad_strategy_values_and_detectors_without_one_exit_2(demo_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(train_cli.main, train_args(demo_root, out, "--strategy", "mirorred")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --strategy: unknown value 'mirorred': expected one of none, mirrored, multi-worker"]
    assert run(train_cli.main, train_args(demo_root, out, "-a", "padim", "--strategy", "mirrored")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --strategy: 'strategy' is not an option of padim")
    assert not out.exists()


def test_strategy_and_mixed_float16_in_the_configuration():
    from anomaly.config import load_train_config
    from anomaly.errors import AnomalyError

    config = load_train_config({"data_dir": "x", "strategy": "mirrored", "precision": "mixed_float16"})
    assert config.params["strategy"] == "mirrored" and config.precision == "mixed_float16"
    assert load_train_config({"data_dir": "x", "architecture": "cutpaste"}).params["strategy"] == "none"
    with pytest.raises(AnomalyError, match="max_minutes: not with strategy multi-worker"):
        load_train_config({"data_dir": "x", "strategy": "multi-worker", "max_minutes": 5})
    with pytest.raises(AnomalyError, match="jit_compile: not with strategy mirrored: XLA"):
        load_train_config({"data_dir": "x", "strategy": "mirrored", "jit_compile": True})


def test_the_range_test_step_scales_the_loss_under_mixed_float16():
    """With a LossScaleOptimizer the step scales the loss and `apply` unscales the gradients: one step
    moves the weights as plain Adam does (without the scaling, Adam's epsilon would swamp gradients
    divided by 2**15 and the step would be far smaller)."""
    import tensorflow as tf

    from anomaly.schedule import _train_step_fn

    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x = tf.constant(np.random.default_rng(0).random((4, 8)), tf.float32)
        moved = []
        for scaled in (False, True):
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8), keras.layers.Dense(8, dtype="float32")])
            before = model.get_weights()
            optimizer = keras.optimizers.Adam(1e-3)
            if scaled:
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
                optimizer.build(model.trainable_variables)
            step = _train_step_fn(model, lambda y, p: tf.reduce_mean(tf.square(y - p), axis=-1), optimizer, False)
            assert np.isfinite(float(step(x, x)))
            moved.append(np.concatenate([(a - b).ravel() for a, b in zip(model.get_weights(), before)]))
        assert np.abs(moved[0]).max() > 1e-4
        np.testing.assert_allclose(moved[1], moved[0], rtol=1e-2, atol=1e-5)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def test_the_one_cycle_moves_adam_inside_a_loss_scale_optimizer():
    from anomaly.schedule import OneCycle, make_optimizer

    cycle = OneCycle(1e-2, steps_per_epoch=4)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.LossScaleOptimizer(make_optimizer(1e-3)), loss="mse")
    cycle.set_model(model)
    cycle.iteration = 1  # half way up the first half-cycle
    cycle.on_train_batch_begin(1)
    inner = model.optimizer.inner_optimizer
    assert float(inner.learning_rate.numpy()) == pytest.approx(5.5e-3)
    assert float(inner.beta_1.numpy()) == pytest.approx(0.90)
