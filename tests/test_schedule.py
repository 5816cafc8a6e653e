"""Training policy, determinism and resuming after an interruption."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly.config import load_train_config
from anomaly.errors import AnomalyError
from anomaly.schedule import OneCycle, PatienceAndCheckpoint, choose_learning_rate
from tests.conftest import train_args


def test_lr_rule_takes_85_percent_of_the_descent():
    lrs = np.logspace(-5, 1, 7)
    losses = [1.0, 1.0, 0.9, 0.5, 0.2, 0.1, 3.0]  # max 1.0 before the minimum 0.1 -> target 0.235
    lr_opt, lr_base = choose_learning_rate(lrs, losses, 0.85)
    assert lr_opt == pytest.approx(lrs[4])
    assert lr_base == pytest.approx(lrs[4])  # first rate above lr_opt / 10 before the minimum


def test_one_cycle_shape():
    sched = OneCycle(max_lr=1e-3, steps_per_epoch=10)
    lrs, betas = zip(*(sched.value(i) for i in range(10)))
    assert lrs[0] == pytest.approx(1e-4) and max(lrs) == pytest.approx(1e-3)
    assert lrs[-1] < 3e-4 and lrs[-1] > 1e-3 / 1000
    assert betas[0] == pytest.approx(0.95) and min(betas) == pytest.approx(0.85)
    assert sched.value(10) == sched.value(0)  # one cycle per epoch
    sched.halve()
    assert sched.max_lr == pytest.approx(5e-4) and sched.base_lr == pytest.approx(5e-5)


def _weights(model_dir):
    import keras

    (model_file,) = model_dir.glob("*.keras")
    return keras.models.load_model(model_file, compile=False).get_weights()


def _config(data, out, **kw):
    values = {"data_dir": str(data), "output_dir": str(out), "input_size": 64, "epochs": 3, "batch_size": 8,
              "lr_finder_epochs": 1, "seed": 3}
    values.update(kw)
    return load_train_config(values)


def test_same_seed_same_model_and_resume_matches(demo_root, tmp_path, monkeypatch):
    from anomaly.train import resume_config, train

    first = train(_config(demo_root, tmp_path / "a"), progress=False)
    second = train(_config(demo_root, tmp_path / "b"), progress=False)
    for w1, w2 in zip(_weights(first.model_dir), _weights(second.model_dir)):
        np.testing.assert_array_equal(w1, w2)
    assert first.fit.lr == second.fit.lr and first.fit.lr_finder is not None
    assert (first.model_dir / "plots" / "lr_plot.png").exists()

    original = PatienceAndCheckpoint.on_epoch_end

    def interrupt_after_first(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(PatienceAndCheckpoint, "on_epoch_end", interrupt_after_first)
    cut = train(_config(demo_root, tmp_path / "c"), progress=False)
    assert cut.fit.interrupted and cut.model_file.name == "mvtecCAE_b8_e1.keras"  # best so far, usable
    assert (cut.model_dir / "checkpoint" / "state.json").exists()
    monkeypatch.setattr(PatienceAndCheckpoint, "on_epoch_end", original)
    resumed = train(resume_config(cut.model_dir), progress=False, resume_dir=cut.model_dir)
    assert not resumed.fit.interrupted
    assert [p.name for p in resumed.model_dir.glob("*.keras")] == [resumed.model_file.name]
    assert [row["epoch"] for row in resumed.fit.history] == [1, 2, 3]
    with pytest.raises(AnomalyError, match="already finished"):
        resume_config(cut.model_dir)
    for w1, w2 in zip(_weights(first.model_dir), _weights(resumed.model_dir)):
        np.testing.assert_allclose(w1, w2, rtol=1e-5, atol=1e-6)


def test_other_seed_other_model(demo_root, tmp_path):
    from anomaly.train import train

    a = train(_config(demo_root, tmp_path / "a", epochs=1, lr=1e-3), progress=False)
    b = train(_config(demo_root, tmp_path / "b", epochs=1, lr=1e-3, seed=4), progress=False)
    assert any(not np.array_equal(x, y) for x, y in zip(_weights(a.model_dir), _weights(b.model_dir)))


def test_time_budget_ends_training_after_the_epoch_that_fills_it(demo_root, tmp_path, capsys):
    from anomaly.cli import train

    # 0.001 minutes: any first epoch (with its tracing) fills the budget, so training stops there
    # instead of running the 30 epochs asked for; the model is still saved and usable. (A fixed
    # learning rate, as train_args gives: there is no range test whose pace could show the budget too short.)
    assert train.main(train_args(demo_root, tmp_path, "-e", "30", "--max-minutes", "0.001")) == 0
    out = capsys.readouterr().out
    assert "trained 1 epochs" in out and "stopped by --max-minutes 0.001" in out
    (model_file,) = tmp_path.rglob("*.keras")
    assert model_file.name == "mvtecCAE_b8_e1.keras"


def test_a_budget_too_short_for_a_range_test_and_one_epoch_is_refused(demo_root, tmp_path, capsys):
    from anomaly.cli import train
    from anomaly.cli.common import run

    # No --lr: the range test runs, and its first step already overruns the budget's share.
    argv = ["-d", str(demo_root), "-o", str(tmp_path), "--input-size", "64", "-b", "8", "-q", "--max-minutes", "0.001"]
    assert run(train.main, argv) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error")]
    assert len(err) == 1 and err[0].startswith("error: --max-minutes: 0.001 minutes is too short for this data")
    assert not any(p.is_file() for p in tmp_path.rglob("*")), "a refused run leaves no model folder"


def test_time_budget_must_be_positive(demo_root, tmp_path):
    with pytest.raises(AnomalyError, match="max_minutes: expected a positive number"):
        _config(demo_root, tmp_path, max_minutes=0)


def test_the_range_test_is_never_longer_than_the_training_it_serves(demo_root):
    from anomaly.data.io import read_images
    from anomaly.detectors.autoencoder import MvtecCAE

    paths = sorted((demo_root / "train" / "good").glob("*.png"))
    images = read_images(paths, "grayscale", (64, 64))
    detector = MvtecCAE(input_shape=(64, 64, 1), epochs=3, batch_size=8, lr_finder_epochs=10)
    detector.fit(images[:12], images[12:])
    finder = detector.fit_result_.lr_finder
    steps = 2  # 12 images in batches of 8
    assert finder is not None and 1 <= len(finder.lrs) <= 3 * steps
    assert np.isfinite(detector.fit_result_.lr)


def test_the_time_budget_stops_within_an_epoch_that_would_overrun_it():
    """A first epoch longer than the whole budget is cut after the batch that reaches it."""
    import time
    import types

    from anomaly.schedule import TimeBudget

    start = time.perf_counter()
    budget = TimeBudget(start + 0.1, reserve_batches=1)
    budget.set_model(types.SimpleNamespace(stop_training=False))
    budget.on_epoch_begin(0)
    for batch in range(100):  # an epoch of 100 batches of 10 ms: 1 s, ten times the budget
        budget.on_train_batch_begin(batch)
        time.sleep(0.01)
        budget.on_train_batch_end(batch)
        if budget.model.stop_training:
            break
    assert budget.stopped and batch < 12
    # it left room for the batch and the validation it reserves
    assert time.perf_counter() - start <= 0.1


def test_the_range_test_takes_only_its_share_of_a_time_budget(demo_root, monkeypatch):
    import time

    import anomaly.schedule as schedule
    from anomaly.data.io import read_images
    from anomaly.detectors.autoencoder import FINDER_SHARE, MvtecCAE

    paths = sorted((demo_root / "train" / "good").glob("*.png"))
    images = read_images(paths, "grayscale", (64, 64))
    # Only the share is tested here, not the refusal of a short budget: a loaded machine can be slow.
    monkeypatch.setattr(MvtecCAE, "_budget_check", lambda self, deadline, epoch_steps: None)
    ends = []  # when each step of the range test ended
    real = schedule._train_step_fn

    def timed_steps(*args, **kwargs):
        step = real(*args, **kwargs)

        def timed(x, y):
            out = step(x, y)
            ends.append(time.perf_counter())
            return out
        return timed

    monkeypatch.setattr(schedule, "_train_step_fn", timed_steps)
    # No early stopping: the rate the shortened range test picks varies with the machine's pace, and a
    # poor one can stop training early, before the budget this test is about.
    detector = MvtecCAE(input_shape=(64, 64, 1), epochs=1000, batch_size=8, max_minutes=0.3, lr_finder_epochs=1000,
                        early_stopping=1000)
    detector.fit(images[:12], images[12:])
    result = detector.fit_result_
    # Unbounded, the range test would run 2000 steps (1000 epochs of 2). Its deadline is its share of
    # the 18 s after the fit began, so the steps after the first (which pays for tracing, seconds
    # on a busy machine) end within that share, plus the one step that passes the deadline.
    assert FINDER_SHARE < 1 and len(result.lr_finder.lrs) < 2000
    longest = max(np.diff(ends))
    assert ends[-1] - ends[0] <= FINDER_SHARE * 18 + longest + 0.5, (ends[-1] - ends[0], longest)
    assert result.out_of_time and len(result.history) >= 1 and np.isfinite(result.lr)
