"""Training run: dataset -> autoencoder -> model directory."""

from __future__ import annotations

import csv
import io
import platform
import sys
from dataclasses import dataclass
from inspect import signature
from pathlib import Path

import numpy as np

from anomaly import __version__, modeldir, plots
from anomaly.config import TrainConfig, config_from_dict
from anomaly.data.dataset import Dataset, find_dataset, validation_split
from anomaly.data.io import read_images
from anomaly.detectors.autoencoder import AutoencoderDetector, FitResult, set_seed
from anomaly.training import load_checkpoint_state
from anomaly.detectors import detector_class, is_autoencoder
from anomaly.errors import AnomalyError

N_INSPECT = 8


@dataclass
class TrainOutcome:
    """Where training saved its results and how it went (`fit.interrupted` after Ctrl-C)."""

    model_dir: Path
    model_file: Path
    fit: FitResult


def _versions() -> dict[str, str]:
    import keras
    import skimage
    import sklearn
    import tensorflow as tf

    return {"anomaly": __version__, "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__, "scikit-image": skimage.__version__,
            "scikit-learn": sklearn.__version__}


def load_split(dataset: Dataset, config: TrainConfig):
    """(train samples, validation samples, train images, validation images) for a configuration."""
    train, val = validation_split(dataset.train, config.val_split, config.seed)
    if not val:
        raise AnomalyError(f"{dataset.root / 'train' / 'good'}: need at least 2 images "
                           f"(one is held out for validation), found {len(dataset.train)}")
    size = config.image_size
    return (train, val, read_images([s.path for s in train], config.color_mode, size),
            read_images([s.path for s in val], config.color_mode, size))


def _history_csv(history: list[dict]) -> str:
    if not history:
        return "epoch\n"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def train(config: TrainConfig, progress: bool = True, resume_dir: Path | None = None) -> TrainOutcome:
    """Train an autoencoder on `config.data_dir` and save it in a new model directory.

    Args:
        config: the resolved configuration.
        progress: print progress bars and messages.
        resume_dir: an interrupted model directory to continue instead of starting afresh.

    Returns:
        The model directory, the model file (the best so far when interrupted) and the
        training record.
    """
    dataset = find_dataset(config.data_dir)
    if resume_dir is None:
        modeldir.check_output_dir(config.output_dir)  # fail now, not after reading every image
    set_seed(config.seed)
    train_s, val_s, train_x, val_x = load_split(dataset, config)
    detector = None
    if not is_autoencoder(config.architecture):
        detector = detector_class(config.architecture).from_config(config)
        if hasattr(detector, "extractor"):
            detector.extractor  # noqa: B018 - a bad backbone, weights file or layer fails before any folder is made
    if resume_dir is None:
        model_dir = modeldir.new_model_dir(config.output_dir, dataset.name, config.architecture, config.variant)
        saved = config.to_dict()
        saved["data_dir"] = str(Path(config.data_dir).resolve())
        saved["split"] = {"train": [s.relpath for s in train_s], "validation": [s.relpath for s in val_s]}
        saved["versions"] = _versions()
        saved["command"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        modeldir.write_yaml(model_dir / modeldir.CONFIG_FILE, saved)
    else:
        model_dir = Path(resume_dir)
    if progress:
        print(f"{dataset.root}: {len(train_s)} training and {len(val_s)} validation images "
              f"-> {model_dir}")

    if detector is not None:
        return _fit_detector(detector, config, dataset, model_dir, train_x, val_x, progress)
    detector = AutoencoderDetector(config)
    result = detector.fit(train_x, val_x, model_dir / "checkpoint", resume=resume_dir is not None,
                          progress=progress)
    modeldir.write_text(model_dir / "history.csv", _history_csv(result.history))
    if result.history:
        plots.plot_history(result.history, model_dir / "plots" / "loss_plot.png")
    if result.lr_finder is not None:
        f = result.lr_finder
        plots.plot_lr_finder(f.lrs, f.losses, f.lr_opt, f.lr_base, model_dir / "plots" / "lr_plot.png")
        modeldir.write_json(model_dir / "plots" / "lr_finder.json",
                            {"lr_opt": f.lr_opt, "lr_base": f.lr_base, "stop_reason": f.stop_reason,
                             "lrs": f.lrs, "losses": f.losses})
    if result.schedule:
        plots.plot_schedule(result.schedule, model_dir / "plots" / "lr_schedule_plot.png")
    # An interrupted run still leaves its best model to use; resuming replaces it.
    for stale in model_dir.glob("*.keras"):
        stale.unlink()
    model_file = model_dir / f"{config.architecture}_b{config.batch_size}_e{result.best_epoch}.keras"
    tmp = model_file.with_name(".tmp-" + model_file.name)
    detector.save(tmp)
    tmp.replace(model_file)
    if config.inspect and not result.interrupted:
        inspect(detector, dataset, val_s, val_x, model_dir / "inspection")
    return TrainOutcome(model_dir, model_file, result)


def _fit_detector(detector, config: TrainConfig, dataset: Dataset, model_dir: Path, train_x: np.ndarray,
                  val_x: np.ndarray, progress: bool) -> TrainOutcome:
    """Fit a detector other than an autoencoder (pixel-gaussian, feature detectors) and save it."""
    import time

    start = time.perf_counter()
    if progress:
        print(f"fitting {config.architecture}" + (f" on {config.backbone} features" if config.variant != "none" else ""))
    if "progress" in signature(detector.fit).parameters:
        detector.fit(train_x, val_x, progress=progress)
    else:
        detector.fit(train_x, val_x)
    seconds = time.perf_counter() - start
    model_file = model_dir / f"{config.architecture}{detector.file_suffix}"
    tmp = model_dir / f".tmp-{model_file.name}"
    detector.save(tmp)
    tmp.replace(model_file)
    summary = {"fit_seconds": seconds, **(detector.summary() if hasattr(detector, "summary") else {})}
    modeldir.write_json(model_dir / "detector.json", summary)
    if getattr(detector, "history_", None):
        modeldir.write_text(model_dir / "history.csv", _history_csv(detector.history_))
    if hasattr(detector, "save_plots"):  # figures of what it learned (CutPaste)
        detector.save_plots(train_x, dataset, config.color_mode, model_dir / "plots")
    if progress and "bank_size" in summary:
        print(f"memory bank: {summary['bank_size']} x {summary['feature_dim']} ({summary['bank_mb']:.1f} MiB)")
    fit = FitResult(history=[], best_epoch=0, lr_finder=None, lr=0.0, schedule=[], interrupted=False,
                    seconds=seconds)
    return TrainOutcome(model_dir, model_file, fit)


def inspect(detector: AutoencoderDetector, dataset: Dataset, val_s, val_x: np.ndarray, out: Path) -> None:
    """Input / reconstruction / residual figures for validation and a few test images."""
    method = "l2" if detector.config.loss == "l2" else "ssim"
    groups = [("val", val_s[:N_INSPECT], val_x[:N_INSPECT])]
    if dataset.test:
        step = max(len(dataset.test) // N_INSPECT, 1)
        picked = dataset.test[::step][:N_INSPECT]
        size = detector.config.image_size
        groups.append(("test", picked, read_images([s.path for s in picked], detector.config.color_mode, size)))
    for group, samples, images in groups:
        maps, recons = detector.anomaly_maps(images, method, "float64", return_reconstructions=True)
        for s, x, r, m in zip(samples, images, recons, maps):
            name = f"{s.defect_type}_{Path(s.relpath).stem}_inspection.png"
            plots.plot_inspection(x, r, m, out / group / name, title=f"{group}: {s.relpath}")


def resume_config(model_dir: Path) -> TrainConfig:
    """The configuration of an interrupted run, checked to be resumable."""
    model_dir = Path(model_dir)
    if not (model_dir / "checkpoint" / "state.json").exists():
        raise AnomalyError(f"--resume {model_dir}: no checkpoint/state.json (nothing to resume)")
    state = load_checkpoint_state(model_dir / "checkpoint")
    if state.get("finished"):
        raise AnomalyError(f"--resume {model_dir}: training already finished")
    return config_from_dict(modeldir.read_config(model_dir)).validate()
