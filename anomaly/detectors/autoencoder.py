"""Convolutional autoencoder detector: the map is the residual between image and reconstruction."""

from __future__ import annotations

import glob
import math
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from anomaly.data.io import ImageFiles
from anomaly.data.pipeline import Augmentation, evaluation_dataset, steps_per_epoch, training_dataset
from anomaly.detectors.base import Detector, FitResult, register
from anomaly.distribute import (
    STRATEGIES,
    check_batch_size,
    check_options,
    get_strategy,
    keras_fit,
    scope,
    shard_by_data,
    synchronize_batch_norm,
    unmirrored,
)
from anomaly.errors import AnomalyError
from anomaly.losses import LOSSES, MSSIM_MIN_SIZE, get_loss, get_metric
from anomaly.models import build_model
from anomaly.progress import advance as advance_progress
from anomaly.resmaps import RESIDUALS, check_method, finish_map, finish_tensor
from anomaly.schedule import (
    MIN_FINDER_STEPS,
    OneCycle,
    PatienceAndCheckpoint,
    TimeBudget,
    find_learning_rate,
    load_checkpoint_state,
    make_optimizer,
    progress_verbosity,
)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TensorFlow's ops deterministic."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


# The share of a --max-minutes budget the learning-rate range test may use.
FINDER_SHARE = 0.25
# A budget must hold at least this many range-test steps in its share, or training does not start.
SHORT_FINDER_STEPS = 20

class _RecordLR(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.lrs: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.lrs.append(float(self.model.optimizer.learning_rate.numpy()))


class AutoencoderDetector(Detector):
    """A convolutional autoencoder trained on defect-free images; the map is the residual.

    Args:
        input_shape: (H, W, C) of the images, C 1 (grayscale) or 3 (RGB).
        loss: "ssim", "mssim" or "l2".
        batch_size, epochs: training batch size and the cap on epochs (early stopping usually
            ends training first).
        max_minutes: a training time budget in minutes, learning-rate finder included; None
            for none.
        seed: seeds the weights, augmentation and shuffling.
        lr: a fixed peak learning rate; None runs the learning-rate range test.
        lr_finder_start, lr_finder_end, lr_finder_epochs, lr_finder_stop_factor,
            lr_decrease_factor: the range test (see `anomaly.schedule.find_learning_rate`).
        early_stopping, reduce_on_plateau: patience in epochs (stop; halve the peak rate).
        rotation, shift, brightness: augmentation ranges.
        precision: "float32", "mixed_bfloat16" (CPUs with AVX512-BF16/AMX) or "mixed_float16"
            (GPUs; `compile` scales the loss, and so does the range test).
        jit_compile: compile the training step with XLA.
        strategy: "none" (one device), "mirrored" (`tf.distribute.MirroredStrategy` over this
            machine's GPUs, or its logical CPUs) or "multi-worker"
            (`tf.distribute.MultiWorkerMirroredStrategy` over the hosts of `TF_CONFIG`); see
            `anomaly.distribute`. `batch_size` is the global batch, split between the replicas,
            so the steps and the loss curve are those of one device and `lr` needs no change;
            to use more devices for throughput raise `batch_size` (the range test re-finds the
            rate; a fixed `lr` is yours to scale, e.g. linearly with the batch).

    Attributes:
        checkpoint_dir: where `fit` keeps per-epoch checkpoints (a temporary folder when None);
            with `resume` True, `fit` continues the run checkpointed there.
        model_: the Keras model after `fit` or `load`.
        fit_result_: the `FitResult` of the last `fit`.
    """

    family = "autoencoder"
    trains_epochs = True
    methods = ("mssim", "ssim", "l2")
    file_suffix = ".keras"
    # Chosen by measurement on bottle, cookie and KolektorSDD (docs/results.md): the multi-scale
    # SSIM residual smoothed with sigma 4; z-scores help KolektorSDD but hurt bottle and cookie.
    finetune_defaults = {"method": "mssim", "smooth": 4.0, "normalize": False}
    defaults_file = "autoencoder.yaml"
    choices = {"loss": tuple(LOSSES), "strategy": STRATEGIES}
    checks = {"lr": "positive-number", "lr_finder_epochs": "positive", "reduce_on_plateau": "positive"}
    checkpoint_dir: Path | None = None
    resume: bool = False

    def __init__(self, input_shape=(256, 256, 1), loss: str = "ssim", batch_size: int = 8, epochs: int = 1024,
                 max_minutes: float | None = None, seed: int = 42, lr: float | None = None,
                 lr_finder_start: float = 1e-5, lr_finder_end: float = 10.0, lr_finder_epochs: int = 10,
                 lr_finder_stop_factor: float = 6.0, lr_decrease_factor: float = 0.85, early_stopping: int = 12,
                 reduce_on_plateau: int = 6, rotation: float = 5.0, shift: float = 0.05, brightness: float = 0.05,
                 precision: str = "float32", jit_compile: bool = False, strategy: str = "none"):
        self.input_shape = tuple(input_shape)
        self.loss, self.batch_size, self.epochs, self.max_minutes = loss, batch_size, epochs, max_minutes
        self.seed, self.lr = seed, lr
        self.lr_finder_start, self.lr_finder_end = lr_finder_start, lr_finder_end
        self.lr_finder_epochs = lr_finder_epochs
        self.lr_finder_stop_factor, self.lr_decrease_factor = lr_finder_stop_factor, lr_decrease_factor
        self.early_stopping, self.reduce_on_plateau = early_stopping, reduce_on_plateau
        self.rotation, self.shift, self.brightness = rotation, shift, brightness
        self.precision, self.jit_compile, self.strategy = precision, jit_compile, strategy
        self._predict = {}

    @classmethod
    def check_hyper_parameters(cls, params, run) -> None:
        super().check_hyper_parameters(params, run)
        if params.get("loss") == "mssim" and min(run.image_size) < MSSIM_MIN_SIZE:
            raise AnomalyError(f"mssim needs an input size and width >= {MSSIM_MIN_SIZE}, "
                               f"got {run.image_size[0]}x{run.image_size[1]}", "loss")
        check_options(params.get("strategy"), run.jit_compile, run.max_minutes)

    @property
    def model(self) -> keras.Model:
        """The network (built untrained on first use before `fit`)."""
        if getattr(self, "model_", None) is None:
            self.model_ = build_model(self.name, self.input_shape)
        return self.model_

    @property
    def model_file_name(self) -> str:
        return f"{self.name}_b{self.batch_size}_e{self.fit_result_.best_epoch}.keras"

    def _state_file(self, directory: Path) -> Path:
        files = sorted(Path(directory).glob(f"{glob.escape(self.name)}_b*_e*.keras"))
        return files[-1] if files else Path(directory) / f"{self.name}.keras"

    def fit(self, train_images: np.ndarray, validation_images: np.ndarray | None = None,
            progress: bool = False) -> AutoencoderDetector:
        """Train on defect-free images with the toolkit's schedule.

        Args:
            train_images: (N, H, W, C) in [0, 1].
            validation_images: (M, H, W, C) in [0, 1] for early stopping (required).
            progress: show progress bars.

        Returns:
            self, holding the best weights; the record is `fit_result_` and `history_`.
        """
        if validation_images is None or not len(validation_images):
            raise AnomalyError("validation_images: an autoencoder needs defect-free validation images "
                               "for early stopping")
        train_images, validation_images = self.prepare(train_images), self.prepare(validation_images)
        for images in (train_images, validation_images):
            if isinstance(images, ImageFiles):  # streamed from files during training: check them first
                images.verify()
        if self.checkpoint_dir is None:
            with tempfile.TemporaryDirectory(prefix="anomaly-checkpoint-") as folder:
                return self._fit(train_images, validation_images, Path(folder), False, progress)
        return self._fit(train_images, validation_images, Path(self.checkpoint_dir), self.resume, progress)

    def _fit(self, train_images: np.ndarray, val_images: np.ndarray, checkpoint_dir: Path,
             resume: bool, progress: bool) -> AutoencoderDetector:
        if self.precision != "float32":
            keras.mixed_precision.set_global_policy(self.precision)
        check_options(self.strategy, self.jit_compile, self.max_minutes)
        strategy = get_strategy(self.strategy)
        check_batch_size(strategy, self.batch_size, training=len(train_images), validation=len(val_images))
        # Without a strategy no scope at all: the one-device path is exactly what it was.
        with scope(strategy):
            if strategy is not None:
                # Built (or rebuilt, from an earlier fit's weights) in the scope: mirrored variables.
                earlier = getattr(self, "model_", None)
                self.model_ = build_model(self.name, self.input_shape)
                if earlier is not None:
                    self.model_.set_weights(earlier.get_weights())
                synchronize_batch_norm(self.model_)
            self._fit_in_scope(train_images, val_images, checkpoint_dir, resume, progress, strategy)
        if strategy is not None:
            self.model_ = unmirrored(lambda: build_model(self.name, self.input_shape), self.model_)
            self._predict = {}
        return self

    def _plain_copy(self) -> keras.Model:
        plain = build_model(self.name, self.input_shape)
        plain.set_weights(self.model.get_weights())
        return plain

    def _fit_in_scope(self, train_images, val_images, checkpoint_dir: Path, resume: bool, progress: bool,
                      strategy) -> None:
        cfg = self
        start = time.perf_counter()
        deadline = None if cfg.max_minutes is None else start + cfg.max_minutes * 60.0
        loss_fn = get_loss(cfg.loss)
        aug = Augmentation(cfg.rotation, cfg.shift, cfg.brightness)
        steps = steps_per_epoch(len(train_images), cfg.batch_size)
        state = load_checkpoint_state(checkpoint_dir) if resume else None
        first_epoch = state["epoch"] if state else 0

        finder = None
        if state:
            lr = state["max_lr"]
        elif cfg.lr is not None:
            lr = cfg.lr
        else:
            # The range test never runs longer than the training it serves (-e 3: at most 3 epochs).
            finder_epochs = min(cfg.lr_finder_epochs, cfg.epochs)
            max_steps = cfg.epochs * steps
            if progress:
                share = ("" if deadline is None
                         else f", at most {FINDER_SHARE * cfg.max_minutes * 60:.0f} s of the budget")
                print(f"learning-rate range test: up to {min(max(finder_epochs * steps, MIN_FINDER_STEPS), max_steps)} "
                      f"steps (training: up to {max_steps} steps{share})")
            probe = training_dataset(train_images, cfg.batch_size, cfg.seed + 1, aug,
                                     epochs=finder_epochs + math.ceil(MIN_FINDER_STEPS / steps))
            finder = find_learning_rate(
                self.model, loss_fn, probe, steps, start=cfg.lr_finder_start, end=cfg.lr_finder_end,
                epochs=finder_epochs, stop_factor=cfg.lr_finder_stop_factor,
                decrease_factor=cfg.lr_decrease_factor, jit_compile=cfg.jit_compile, progress=progress,
                max_steps=max_steps, strategy=strategy,
                deadline=None if deadline is None else start + FINDER_SHARE * (deadline - start),
                check_pace=None if deadline is None else self._budget_check(
                    deadline, steps + steps_per_epoch(len(val_images), cfg.batch_size)))
            lr = finder.lr_opt
            if progress:
                print(f"learning-rate finder: {finder.stop_reason}; chosen lr {lr:.3g}")

        # A fresh optimizer: the original kept Adam's moments from the range test.
        color_mode = "grayscale" if self.input_shape[-1] == 1 else "rgb"
        self.model.compile(optimizer=make_optimizer(lr / 10), loss=loss_fn,
                           metrics=[get_metric(color_mode, min(self.input_shape[:2]))],
                           jit_compile=cfg.jit_compile)
        schedule = OneCycle(lr, steps)
        keeper = PatienceAndCheckpoint(checkpoint_dir, schedule, cfg.early_stopping,
                                       cfg.reduce_on_plateau, state)
        if state:
            self.model.optimizer.build(self.model.trainable_variables)
            self.model.load_weights(Path(checkpoint_dir) / "last.weights.h5")
            schedule.max_lr, schedule.base_lr = state["max_lr"], state["base_lr"]
            schedule.iteration = state["iteration"]
        recorder = _RecordLR()
        callbacks = [schedule, keeper, recorder]
        budget = None
        if deadline is not None:
            budget = TimeBudget(deadline, reserve_batches=steps_per_epoch(len(val_images), cfg.batch_size))
            callbacks.append(budget)
        train_ds = training_dataset(train_images, cfg.batch_size, cfg.seed, aug, first_epoch, cfg.epochs)
        val_ds = evaluation_dataset(val_images, cfg.batch_size)
        if strategy is not None:  # Keras splits each global batch between the replicas
            train_ds, val_ds = shard_by_data(train_ds), shard_by_data(val_ds)
        interrupted = False
        if first_epoch < cfg.epochs and not (state and state.get("stopped_early")):
            try:
                with keras_fit(self.model, strategy, val_ds):
                    self.model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs,
                                   initial_epoch=first_epoch, steps_per_epoch=steps, shuffle=False,
                                   callbacks=callbacks, verbose=progress_verbosity(progress))
            except KeyboardInterrupt:
                interrupted = True
        keeper.restore_best()
        if not interrupted:
            keeper.mark_finished()
        self._predict = {}
        self.fit_result_ = FitResult(history=keeper.history, best_epoch=keeper.best_epoch + 1, lr_finder=finder,
                                     lr=lr, schedule=recorder.lrs, interrupted=interrupted,
                                     seconds=time.perf_counter() - start, out_of_time=bool(budget and budget.stopped))
        self.history_ = keeper.history


    def _predict_fn(self, method: str):
        if method not in self._predict:
            spec = tf.TensorSpec((None, *self.input_shape), tf.float32)
            residual = RESIDUALS[method]

            @tf.function(input_signature=[spec])
            def predict(x):
                y = tf.cast(self.model(x, training=False), tf.float32)
                return y, residual(x, y)

            self._predict[method] = predict
        return self._predict[method]

    def map_function(self, method: str, dtype: str):
        """The network, its residual map and `finish_map` (see `Detector.map_function`)."""
        check_method(method, dtype)
        model, residual = self.model, RESIDUALS[method]

        def maps(x):
            return finish_tensor(residual(x, tf.cast(model(x, training=False), tf.float32)), method, dtype)

        return maps

    def fit_record(self, seconds: float) -> FitResult:
        return self.fit_result_

    def _budget_check(self, deadline: float, epoch_steps: int):
        """A `check_pace` for the range test: fail at once when the time left cannot hold a short
        range test (`SHORT_FINDER_STEPS`, in its share) and one epoch (`epoch_steps` with validation)."""
        def check(seconds_per_step: float) -> None:
            needed = seconds_per_step * max(SHORT_FINDER_STEPS / FINDER_SHARE, epoch_steps / (1 - FINDER_SHARE))
            if needed > deadline - time.perf_counter():
                raise AnomalyError(f"{self.max_minutes:g} minutes is too short for this data: at "
                                   f"{seconds_per_step:.2g} s a step, a short learning-rate range test "
                                   f"({SHORT_FINDER_STEPS} steps in a quarter of the budget) and one epoch "
                                   f"({epoch_steps} steps with validation) need about {needed / 60:.2g} minutes",
                                   "max_minutes")

        return check

    def save_plots(self, train_images: np.ndarray, dataset, folder: Path) -> None:
        """The loss curves, the learning-rate range test and the schedule of the last `fit`."""
        from anomaly import modeldir, plots

        result = self.fit_result_
        if result.history:
            plots.plot_history(result.history, folder / "loss_plot.png")
        if result.lr_finder is not None:
            f = result.lr_finder
            plots.plot_lr_finder(f.lrs, f.losses, f.lr_opt, f.lr_base, folder / "lr_plot.png")
            modeldir.write_json(folder / "lr_finder.json", {"lr_opt": f.lr_opt, "lr_base": f.lr_base,
                                                             "stop_reason": f.stop_reason, "lrs": f.lrs,
                                                             "losses": f.losses})
        if result.schedule:
            plots.plot_schedule(result.schedule, folder / "lr_schedule_plot.png")

    def reconstruct(self, images) -> np.ndarray:
        """Reconstructions of images (any size; see `prepare`), float32 in [0, 1]."""
        return self.anomaly_maps(images, "l2", return_reconstructions=True)[1]

    def _anomaly_maps(self, images: np.ndarray, method: str, dtype: str, return_reconstructions: bool = False,
                      batch_size: int = 32):
        """Residual maps (N, H, W) of images against their reconstructions (`anomaly.resmaps`).

        The model and the map run in one compiled function per batch; `dtype` "uint8" gives
        the original toolkit's quantised maps.
        """
        check_method(method, dtype)
        predict = self._predict_fn(method)
        maps, recons = [], []
        for start in range(0, len(images), batch_size):
            y, residual = predict(tf.constant(images[start:start + batch_size]))
            maps.append(finish_map(residual, method, dtype))
            advance_progress(len(maps[-1]))
            if return_reconstructions:
                recons.append(y.numpy())
        maps = np.concatenate(maps) if maps else np.zeros((0, *self.input_shape[:2]), np.float32)
        if return_reconstructions:
            return maps, (np.concatenate(recons) if recons else np.zeros((0, *self.input_shape), np.float32))
        return maps

    def save(self, directory: str | Path) -> Path:
        """As `Detector.save`; a resumed run's model file replaces the interrupted run's."""
        for stale in Path(directory).glob(f"{glob.escape(self.name)}_b*_e*.keras"):
            stale.unlink()
        return super().save(directory)

    def _save_state(self, path: Path) -> None:
        # Without the optimizer: a plain copy of the weights in a freshly built network.
        self._plain_copy().save(path)

    def _load_state(self, path: Path) -> None:
        from anomaly.models import load_saved_model

        model = load_saved_model(path)
        shape = tuple(model.input_shape[1:])
        if shape != tuple(self.input_shape):
            raise AnomalyError(f"-p {path}: model input {shape} does not match its configuration {self.input_shape}")
        self.model_ = model
        best = path.stem.rsplit("_e", 1)[-1]
        self.fit_result_ = FitResult(history=[], best_epoch=int(best) if best.isdigit() else 0, lr_finder=None,
                                     lr=0.0, schedule=[], interrupted=False, seconds=0.0)
        self._predict = {}


@register
class MvtecCAE(AutoencoderDetector):
    """The MVTec paper's autoencoder (`anomaly.models.mvtec_cae`)."""

    name = "mvtecCAE"


@register
class BaselineCAE(AutoencoderDetector):
    """The original toolkit's baseline autoencoder (`anomaly.models.baseline_cae`)."""

    name = "baselineCAE"


@register
class InceptionCAE(AutoencoderDetector):
    """The autoencoder with inception blocks (`anomaly.models.inception_cae`)."""

    name = "inceptionCAE"


@register
class ResnetCAE(AutoencoderDetector):
    """The autoencoder on a ResNet encoder (`anomaly.models.resnet_cae`)."""

    name = "resnetCAE"


@register
class SkipCAE(AutoencoderDetector):
    """The autoencoder with skip connections (`anomaly.models.skip_cae`)."""

    name = "skipCAE"
