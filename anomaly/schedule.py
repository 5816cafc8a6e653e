"""Training policy of the original toolkit as Keras 3 callbacks, plus checkpoints for resuming.

- Learning-rate range test: the LR grows exponentially from `start` to `end` over at most
  `epochs` epochs of augmented training; the smoothed loss curve picks the peak LR with the
  toolkit's rule (85 % of the way down the curve). NaN or exploding losses end the test early
  and are cut from the curve (the original crashed on them).
- One cycle per epoch: LR rises lr/10 -> lr over the first half of the epoch and falls
  lr -> lr/1000 over the second; Adam's beta_1 moves 0.95 -> 0.85 -> 0.95 against it.
- Reduce on plateau halves both ends of the cycle (the original only ever shrank the peak).
- Early stopping on validation loss restores the best weights.
- Every epoch leaves `checkpoint/` with the last weights, optimizer state and callback state,
  so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

BETA_HIGH, BETA_LOW = 0.95, 0.85
ANNIHILATION = 1000.0
MIN_LR = 1e-7
MIN_FINDER_STEPS = 100
# Steps the range test runs before it judges its pace against a deadline.
_PACE_STEPS = 5
SKIP_FIRST = 10


@dataclass
class LRFinderResult:
    """The outcome of the learning-rate range test.

    Attributes:
        lrs: learning rate of each batch.
        losses: smoothed (bias-corrected EMA, beta 0.98) loss of each batch.
        lr_opt: the chosen peak learning rate.
        lr_base: the first learning rate above lr_opt / 10 (reported only).
        stop_reason: why the test ended.
    """

    lrs: list[float]
    losses: list[float]
    lr_opt: float
    lr_base: float
    stop_reason: str


def choose_learning_rate(lrs, losses, decrease_factor: float = 0.85) -> tuple[float, float]:
    """The toolkit's rule: the first LR whose loss is `decrease_factor` of the way down the curve.

    Args:
        lrs: learning rates, increasing.
        losses: the smoothed loss at each learning rate (finite values).
        decrease_factor: how far down from the curve's maximum (before its minimum) to go.

    Returns:
        (lr_opt, lr_base).
    """
    losses = np.asarray(losses, dtype=np.float64)
    lrs = np.asarray(lrs, dtype=np.float64)
    if len(losses) > 4 * SKIP_FIRST:
        # The first smoothed values rest on a handful of batches: one lucky batch there set
        # the curve's "maximum" and made the rule return the start rate. The plot skips them too.
        losses, lrs = losses[SKIP_FIRST:], lrs[SKIP_FIRST:]
    i_min = int(np.argmin(losses))
    segment = losses[: i_min + 1]
    l_max = segment.max()
    target = l_max - decrease_factor * (l_max - losses[i_min])
    below = np.flatnonzero(segment < target)
    i_opt = int(below[0]) if below.size else i_min
    lr_opt = float(lrs[i_opt])
    above = np.flatnonzero(lrs[: max(i_min, 1)] > lr_opt / 10)
    lr_base = float(lrs[above[0]]) if above.size else lr_opt / 10
    return lr_opt, lr_base


def progress_verbosity(progress: bool) -> int:
    """Keras verbosity: a live bar on a terminal, one line per epoch in a log file, or nothing."""
    if not progress:
        return 0
    return 1 if sys.stdout.isatty() else 2


def _train_step_fn(model: keras.Model, loss_fn, optimizer, jit_compile: bool, strategy=None):
    """One range-test step: the batch's mean loss (before the model's regularisation losses).

    With a strategy each replica's loss is its share of the global batch's mean
    (`anomaly.distribute.global_mean_loss`), the optimizer all-reduces (sums) the gradients, and
    the shares are summed back into the global mean. A `LossScaleOptimizer` (mixed_float16)
    scales the loss, and its `apply` unscales the gradients (skipping steps that overflow).
    """
    from anomaly.distribute import global_mean_loss

    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            if strategy is None:
                loss = tf.reduce_mean(loss_fn(y, pred))
                total = loss + tf.add_n(model.losses) if model.losses else loss
            else:
                loss = global_mean_loss(loss_fn(y, pred))
                total = loss + tf.nn.scale_regularization_loss(tf.add_n(model.losses)) if model.losses else loss
            if scaled:
                total = optimizer.scale_loss(total)
        grads = tape.gradient(total, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    if strategy is None:
        return tf.function(replica_step, jit_compile=jit_compile)

    @tf.function(jit_compile=jit_compile)
    def step(x, y):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(x, y)), axis=None)

    return step


def find_learning_rate(model: keras.Model, loss_fn, dataset: tf.data.Dataset, steps_per_epoch: int,
                       start: float = 1e-5, end: float = 10.0, epochs: int = 10,
                       stop_factor: float = 6.0, decrease_factor: float = 0.85,
                       jit_compile: bool = False, progress: bool = True,
                       max_steps: int | None = None, deadline: float | None = None,
                       check_pace: Callable[[float], None] | None = None, strategy=None) -> LRFinderResult:
    """Run the learning-rate range test, then restore the model's weights.

    Args:
        model: the model to probe; its weights are restored afterwards.
        loss_fn: the training loss.
        dataset: an endless-enough dataset of (x, y) training batches.
        steps_per_epoch: batches per epoch; the LR reaches `end` after `epochs` epochs.
        start: first learning rate.
        end: last learning rate.
        epochs: the most epochs to run (at least 100 batches are run all the same).
        stop_factor: stop when the smoothed loss exceeds this times the best smoothed loss.
        decrease_factor: see `choose_learning_rate`.
        jit_compile: compile the step with XLA.
        progress: show a progress bar.
        max_steps: the most batches to run whatever the above (a short training run gets a
            range test no longer than itself).
        deadline: a `time.perf_counter()` value by which the test must end: after a few steps
            have shown the pace, the sweep is shortened (still from `start` to `end`) to fit.
        check_pace: called with the seconds per step once the pace is known (after a few steps,
            or after the first one past the tracing when the deadline passes first); may raise
            to stop before training.
        strategy: a `tf.distribute.Strategy` whose scope built `model` (None: one device); the
            batches of `dataset` are global ones, split between its replicas.

    Returns:
        The curve and the chosen learning rate.
    """
    weights = model.get_weights()
    # Small datasets give few batches per epoch; the curve needs enough points to be read.
    total = max(epochs * steps_per_epoch, MIN_FINDER_STEPS)
    if max_steps is not None:
        total = max(1, min(total, max_steps))
    mult = (end / start) ** (1.0 / total)
    optimizer = keras.optimizers.Adam(learning_rate=start)
    if model.dtype_policy.name == "mixed_float16":  # as Keras `compile` does
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    if strategy is not None or isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        # Built before the step is traced: a strategy mirrors the variables (in its scope, not in
        # a replica), and the loss scale is read from its variable, not baked in as a constant.
        optimizer.build(model.trainable_variables)
    step = _train_step_fn(model, loss_fn, optimizer, jit_compile, strategy)
    if strategy is not None:
        from anomaly.distribute import distribute

        dataset = distribute(strategy, dataset.take(total))
    bar = keras.utils.Progbar(total, stateful_metrics=["lr", "loss"], verbose=progress_verbosity(progress))
    lrs, smoothed = [], []
    avg, best, lr = 0.0, math.inf, start
    reason = f"reached {epochs} epochs"
    traced = 0.0
    for i, (x, y) in enumerate(dataset if strategy is not None else dataset.take(total)):
        if i >= total:  # the sweep was shortened to fit the deadline
            break
        optimizer.learning_rate.assign(lr)
        loss = float(step(x, y))
        if deadline is not None:
            now = time.perf_counter()
            if i == 0:
                traced = now  # the first step pays for tracing; the pace is measured after it
            # The pace is judged after a few steps, or after one past the tracing if the deadline
            # comes first (a slow trace alone says nothing of the steps that follow).
            if check_pace is not None and (i == _PACE_STEPS or (now > deadline and 0 < i < _PACE_STEPS)):
                check_pace((now - traced) / i)
            if i == _PACE_STEPS:
                fits = int((deadline - now) / ((now - traced) / i))
                if i + 1 + fits < total:
                    total = max(i + 2, i + 1 + fits)
                    mult = (end / lr) ** (1.0 / (total - i - 1))
                    bar.target = total
                    reason = f"shortened to {total} steps by the time budget"
            if now > deadline and i > 0:
                reason = "the time budget ran out"
                break
        if not math.isfinite(loss):
            reason = f"loss became {loss} at lr {lr:.3g}"
            break
        avg = 0.98 * avg + 0.02 * loss
        value = avg / (1 - 0.98 ** (i + 1))
        lrs.append(lr)
        smoothed.append(value)
        bar.update(i + 1, [("lr", lr), ("loss", value)])
        if i > 0 and value > stop_factor * best:
            reason = f"loss exceeded {stop_factor:g}x its minimum at lr {lr:.3g}"
            break
        best = min(best, value)
        lr *= mult
        if lr > end:
            reason = f"learning rate passed {end:g}"
            break
    if progress:
        print()
    model.set_weights(weights)
    if len(smoothed) < 2:
        lr_opt, lr_base = start, start / 10
    else:
        lr_opt, lr_base = choose_learning_rate(lrs, smoothed, decrease_factor)
    return LRFinderResult(lrs, smoothed, lr_opt, lr_base, reason)


class OneCycle(keras.callbacks.Callback):
    """Per-epoch triangular cycle with annihilation and cyclical Adam beta_1.

    Args:
        max_lr: the peak learning rate.
        steps_per_epoch: batches per epoch; one cycle spans one epoch.
    """

    def __init__(self, max_lr: float, steps_per_epoch: int):
        super().__init__()
        self.max_lr = float(max_lr)
        self.base_lr = float(max_lr) / 10.0
        self.half = max(math.ceil(steps_per_epoch / 2), 1)
        self.iteration = 0
        self.lrs: list[float] = []

    def value(self, iteration: int) -> tuple[float, float]:
        """(learning rate, beta_1) at a global batch index."""
        pos = iteration % (2 * self.half)
        if pos < self.half:
            frac = pos / self.half
            lr = self.base_lr + (self.max_lr - self.base_lr) * frac
        else:
            frac = (pos - self.half) / self.half
            low = self.max_lr / ANNIHILATION
            lr = self.max_lr - (self.max_lr - low) * frac
            frac = 1.0 - frac
        beta = BETA_HIGH - (BETA_HIGH - BETA_LOW) * frac
        return lr, beta

    def on_train_batch_begin(self, batch, logs=None):
        lr, beta = self.value(self.iteration)
        # Under mixed_float16 `compile` wraps the Adam of `make_optimizer` in a LossScaleOptimizer.
        optimizer = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)
        optimizer.learning_rate.assign(lr)
        optimizer.beta_1.assign(beta)

    def on_train_batch_end(self, batch, logs=None):
        self.iteration += 1

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = self.max_lr

    def halve(self) -> None:
        """Reduce on plateau: halve both ends of the cycle (not below 1e-7)."""
        self.max_lr = max(self.max_lr / 2, MIN_LR)
        self.base_lr = max(self.base_lr / 2, MIN_LR / 10)


def make_optimizer(lr: float) -> keras.optimizers.Adam:
    """Adam whose beta_1 is a variable, so the cycle can move it inside a compiled step."""
    optimizer = keras.optimizers.Adam(learning_rate=lr, beta_1=BETA_HIGH)
    optimizer.beta_1 = keras.Variable(BETA_HIGH, trainable=False, name="beta_1", dtype="float32")
    return optimizer


class PatienceAndCheckpoint(keras.callbacks.Callback):
    """Early stopping, reduce-on-plateau and per-epoch checkpoints in one place.

    Args:
        checkpoint_dir: where `last.weights.h5` (with the optimizer state), `best.weights.h5`
            and `state.json` are written after every epoch.
        schedule: the OneCycle callback whose rate is halved on a plateau.
        early_stopping: patience in epochs before training stops.
        reduce_on_plateau: patience in epochs before the rate is halved.
        state: a saved state to continue from (resume).
    """

    def __init__(self, checkpoint_dir: Path, schedule: OneCycle, early_stopping: int,
                 reduce_on_plateau: int, state: dict | None = None):
        super().__init__()
        self.dir = Path(checkpoint_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.schedule = schedule
        self.early_stopping = early_stopping
        self.reduce_on_plateau = reduce_on_plateau
        state = state or {}
        self.best = state.get("best", math.inf)
        self.best_epoch = state.get("best_epoch", -1)
        self.wait = state.get("wait", 0)
        self.plateau_wait = state.get("plateau_wait", 0)
        self.history: list[dict] = state.get("history", [])
        self.stopped_early = False

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        current = logs.get("val_loss", logs.get("loss"))
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}}
        self.history.append(row)
        if current is not None and math.isfinite(current) and current < self.best:
            self.best, self.best_epoch, self.wait, self.plateau_wait = float(current), epoch, 0, 0
            self.model.save_weights(self.dir / "best.weights.h5")
        else:
            self.wait += 1
            self.plateau_wait += 1
            if self.plateau_wait >= self.reduce_on_plateau:
                self.schedule.halve()
                self.plateau_wait = 0
            if self.wait >= self.early_stopping:
                self.stopped_early = True
                self.model.stop_training = True
        self._save(epoch)

    def _save(self, epoch: int) -> None:
        # A compiled model's weights file holds the optimizer's variables too (moments, step).
        self.model.save_weights(self.dir / "last.weights.h5")
        state = {"epoch": epoch + 1, "best": self.best, "best_epoch": self.best_epoch,
                 "wait": self.wait, "plateau_wait": self.plateau_wait,
                 "max_lr": self.schedule.max_lr, "base_lr": self.schedule.base_lr,
                 "iteration": self.schedule.iteration, "stopped_early": self.stopped_early,
                 "history": self.history}
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.dir / "state.json")

    def mark_finished(self) -> None:
        """Record that training ended normally, so it cannot be resumed."""
        path = self.dir / "state.json"
        state = json.loads(path.read_text()) if path.exists() else {}
        state["finished"] = True
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(path)

    def restore_best(self) -> None:
        """Load the best weights seen so far into the model."""
        if (self.dir / "best.weights.h5").exists():
            self.model.load_weights(self.dir / "best.weights.h5")


class TimeBudget(keras.callbacks.Callback):
    """Stop training so that it ends by a deadline.

    Between epochs: stop when the next epoch, expected as long as the slowest so far, would end
    after it. Within an epoch (a first epoch longer than the whole budget): stop when the next
    batch and the validation after it (`reserve_batches` more batches) would end after it.

    Args:
        deadline: the `time.perf_counter()` value by which training must end.
        reserve_batches: batches' worth of time kept for the validation that follows a stop.
    """

    def __init__(self, deadline: float, reserve_batches: int = 1):
        super().__init__()
        self.deadline = deadline
        self.reserve_batches = reserve_batches
        self.longest = 0.0
        self.longest_batch = 0.0
        self.stopped = False
        self._epoch_start = 0.0
        self._batch_start = 0.0
        self._batches = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self._batches += 1
        if self._batches > 1:  # the first batch pays for tracing
            self.longest_batch = max(self.longest_batch, now - self._batch_start)
        if now + self.longest_batch * (1 + self.reserve_batches) > self.deadline:
            self.stopped = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.longest = max(self.longest, now - self._epoch_start)
        if now + self.longest > self.deadline:
            self.stopped = True
            self.model.stop_training = True


def load_checkpoint_state(checkpoint_dir: Path) -> dict | None:
    """The saved training state of an interrupted run, or None."""
    path = Path(checkpoint_dir) / "state.json"
    return json.loads(path.read_text()) if path.exists() else None
