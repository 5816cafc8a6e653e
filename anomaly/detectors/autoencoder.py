"""Convolutional autoencoder detector: the map is the residual between image and reconstruction."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from anomaly.config import TrainConfig
from anomaly.data.pipeline import Augmentation, evaluation_dataset, steps_per_epoch, training_dataset
from anomaly.detectors.base import Detector
from anomaly.errors import AnomalyError
from anomaly.losses import get_loss, get_metric
from anomaly.models import build_model
from anomaly.resmaps import RESIDUALS, check_method, finish_map
from anomaly.training import (MIN_FINDER_STEPS, LRFinderResult, OneCycle, PatienceAndCheckpoint, TimeBudget,
                              find_learning_rate, load_checkpoint_state, make_optimizer, progress_verbosity)


@dataclass
class FitResult:
    """What training produced.

    Attributes:
        history: one dict per epoch (epoch, loss, val_loss, metric, val_metric, lr).
        best_epoch: 1-based epoch of the lowest validation loss.
        lr_finder: the range test's outcome (None with a fixed --lr or on resume).
        lr: the peak learning rate used.
        schedule: learning rate of every batch trained in this call.
        interrupted: True when Ctrl-C ended training.
        seconds: wall time of this call.
        out_of_time: True when the `max_minutes` budget ended training.
    """

    history: list[dict]
    best_epoch: int
    lr_finder: LRFinderResult | None
    lr: float
    schedule: list[float]
    interrupted: bool
    seconds: float
    out_of_time: bool = False


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TensorFlow's ops deterministic."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


class _RecordLR(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.lrs: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.lrs.append(float(self.model.optimizer.learning_rate.numpy()))


class AutoencoderDetector(Detector):
    """A convolutional autoencoder trained on defect-free images.

    Args:
        config: the training configuration (architecture, loss, input shape, schedule).
        model: an already built or loaded Keras model; built from `config` when None.
    """

    methods = ("ssim", "mssim", "l2")
    file_suffix = ".keras"
    # Chosen by measurement on bottle, cookie and KolektorSDD (docs/results.md): the multi-scale
    # SSIM residual smoothed with sigma 4; z-scores help KolektorSDD but hurt bottle and cookie.
    finetune_defaults = {"method": "mssim", "smooth": 4.0, "normalize": False}

    def __init__(self, config: TrainConfig, model: keras.Model | None = None):
        self.config = config
        self.input_shape = config.input_shape
        if config.precision == "mixed_bfloat16":
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
        self.model = model if model is not None else build_model(config.architecture, config.input_shape)
        self._predict = {}

    def fit(self, train_images: np.ndarray, val_images: np.ndarray, checkpoint_dir: Path,
            resume: bool = False, progress: bool = True) -> FitResult:
        """Train on defect-free images with the toolkit's schedule.

        Args:
            train_images: (N, H, W, C) in [0, 1].
            val_images: (M, H, W, C) in [0, 1] for early stopping.
            checkpoint_dir: where per-epoch checkpoints are kept (and read when resuming).
            resume: continue from the checkpoint in `checkpoint_dir`.
            progress: show progress bars.

        Returns:
            The training record; the model holds the best weights afterwards.
        """
        cfg = self.config
        start = time.perf_counter()
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
            probe = training_dataset(train_images, cfg.batch_size, cfg.seed + 1, aug,
                                     epochs=cfg.lr_finder_epochs + math.ceil(MIN_FINDER_STEPS / steps))
            finder = find_learning_rate(
                self.model, loss_fn, probe, steps, start=cfg.lr_finder_start, end=cfg.lr_finder_end,
                epochs=cfg.lr_finder_epochs, stop_factor=cfg.lr_finder_stop_factor,
                decrease_factor=cfg.lr_decrease_factor, jit_compile=cfg.jit_compile, progress=progress)
            lr = finder.lr_opt
            if progress:
                print(f"learning-rate finder: {finder.stop_reason}; chosen lr {lr:.3g}")

        # A fresh optimizer: the original kept Adam's moments from the range test.
        self.model.compile(optimizer=make_optimizer(lr / 10), loss=loss_fn,
                           metrics=[get_metric(cfg.color_mode, min(cfg.image_size))],
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
        if cfg.max_minutes is not None:
            budget = TimeBudget(start + cfg.max_minutes * 60.0)
            callbacks.append(budget)
        train_ds = training_dataset(train_images, cfg.batch_size, cfg.seed, aug, first_epoch, cfg.epochs)
        val_ds = evaluation_dataset(val_images, cfg.batch_size)
        interrupted = False
        if first_epoch < cfg.epochs and not (state and state.get("stopped_early")):
            try:
                self.model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs,
                               initial_epoch=first_epoch, steps_per_epoch=steps, shuffle=False,
                               callbacks=callbacks, verbose=progress_verbosity(progress))
            except KeyboardInterrupt:
                interrupted = True
        keeper.restore_best()
        if not interrupted:
            keeper.mark_finished()
        self._predict = {}
        return FitResult(history=keeper.history, best_epoch=keeper.best_epoch + 1, lr_finder=finder,
                         lr=lr, schedule=recorder.lrs, interrupted=interrupted,
                         seconds=time.perf_counter() - start, out_of_time=bool(budget and budget.stopped))

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

    def reconstruct(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Reconstructions of (N, H, W, C) images, float32 in [0, 1]."""
        return self.anomaly_maps(images, "l2", batch_size=batch_size, return_reconstructions=True)[1]

    def anomaly_maps(self, images: np.ndarray, method: str = "ssim", dtype: str = "float64",
                     batch_size: int = 32, return_reconstructions: bool = False):
        """Residual maps (N, H, W) of images against their reconstructions.

        The model and the map run in one compiled function per batch.

        Args:
            images: (N, H, W, C) in [0, 1].
            method: "ssim", "mssim" or "l2" (see `anomaly.resmaps`).
            dtype: "float64" or "uint8".
            batch_size: images per forward pass.
            return_reconstructions: also return the reconstructions.

        Returns:
            The maps, or (maps, reconstructions).
        """
        check_method(method, dtype)
        predict = self._predict_fn(method)
        maps, recons = [], []
        for start in range(0, len(images), batch_size):
            y, residual = predict(tf.constant(images[start:start + batch_size]))
            maps.append(finish_map(residual, method, dtype))
            if return_reconstructions:
                recons.append(y.numpy())
        maps = np.concatenate(maps) if maps else np.zeros((0, *self.input_shape[:2]), np.float32)
        if return_reconstructions:
            return maps, (np.concatenate(recons) if recons else np.zeros((0, *self.input_shape), np.float32))
        return maps

    def save(self, path: Path) -> None:
        """Save the model (weights and architecture, no optimizer) as a `.keras` file."""
        plain = build_model(self.config.architecture, self.config.input_shape)
        plain.set_weights(self.model.get_weights())
        plain.save(path)

    @classmethod
    def load(cls, config: TrainConfig, model_file: Path) -> "AutoencoderDetector":
        """Load a saved autoencoder for inference."""
        from anomaly.models import load_saved_model

        model = load_saved_model(model_file)
        shape = tuple(model.input_shape[1:])
        if shape != tuple(config.input_shape):
            raise AnomalyError(f"-p {model_file}: model input {shape} does not match config.yaml {config.input_shape}")
        return cls(config, model)
