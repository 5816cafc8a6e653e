"""Training run: dataset -> detector -> model directory."""

from __future__ import annotations

import csv
import io
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomaly import __version__, modeldir, plots
from anomaly.config import TrainConfig, saved_config
from anomaly.data.dataset import Dataset, validation_split
from anomaly.data.io import ImageFiles, materialise, read_images
from anomaly.detectors import detector_class
from anomaly.detectors.autoencoder import set_seed
from anomaly.detectors.base import Detector, FitResult
from anomaly.errors import AnomalyError
from anomaly.progress import step as progress_step
from anomaly.schedule import load_checkpoint_state

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
    # A set of up to IN_MEMORY_BYTES is read now (a bad image fails before any folder is made);
    # a larger one stays files, read batch by batch by the detector, never held at once.
    return (train, val, materialise(ImageFiles([s.path for s in train], config.color_mode, size)),
            materialise(ImageFiles([s.path for s in val], config.color_mode, size)))


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
    dataset = config.dataset()
    if resume_dir is None:
        modeldir.check_output_dir(config.output_dir)  # fail now, not after reading every image
    set_seed(config.seed)
    train_s, val_s, train_x, val_x = load_split(dataset, config)
    detector = detector_class(config.architecture).from_train_config(config)
    detector.check()  # e.g. a bad backbone or weights file fails before any folder is made
    if resume_dir is None:
        # The outermost folder this run makes: removed whole if the fit is refused (a large set's
        # unreadable image is found only while the detector reads it).
        planned = Path(config.output_dir).resolve() / dataset.name / config.architecture / config.variant
        fresh = next((p for p in reversed([planned, *planned.parents]) if not p.exists()), None)
        model_dir = modeldir.new_model_dir(config.output_dir, dataset.name, config.architecture, config.variant)
        fresh = fresh if fresh is not None and model_dir.is_relative_to(fresh) else model_dir
        saved = config.to_dict()
        saved["data_dir"] = str(Path(config.data_dir).resolve())
        saved["split"] = {"train": [s.relpath for s in train_s], "validation": [s.relpath for s in val_s]}
        saved["versions"] = _versions()
        saved["command"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        modeldir.write_yaml(model_dir / modeldir.CONFIG_FILE, saved)
    else:
        model_dir = Path(resume_dir)
    if progress:
        from anomaly.machine import device_description

        print(f"{dataset.root}: {len(train_s)} training and {len(val_s)} validation images "
              f"-> {model_dir}")
        print(f"running on {device_description()}")
        if detector.uses_backbone:
            print(f"fitting {config.architecture} on {config.params['backbone']} features")
        plan = detector.fit_plan(len(train_x))
        if plan:
            print(plan)

    detector.checkpoint_dir, detector.resume = model_dir / "checkpoint", resume_dir is not None
    start = time.perf_counter()
    # Detectors that train for epochs show their own bars; the others one for the images.
    try:
        with progress_step(f"fitting {config.architecture} on {len(train_x)} images", len(train_x),
                           enabled=progress and not detector.trains_epochs):
            detector.fit(train_x, val_x, progress=progress)
    except AnomalyError:
        if resume_dir is None:  # a run refused before it learned anything leaves no folder behind
            shutil.rmtree(fresh, ignore_errors=True)
        raise
    record = detector.fit_record(time.perf_counter() - start)
    # An interrupted run still leaves its best model to use; resuming replaces it.
    model_file = detector.save(model_dir)
    summary = {"fit_seconds": record.seconds, **detector.summary()}
    modeldir.write_json(model_dir / modeldir.SUMMARY_FILE, summary)
    if detector.history_ or detector.trains_epochs:
        modeldir.write_text(model_dir / modeldir.HISTORY_FILE, _history_csv(detector.history_))
    detector.save_plots(train_x, dataset, model_dir / "plots")
    if progress and "bank_size" in summary:
        print(f"memory bank: {summary['bank_size']} x {summary['feature_dim']} ({summary['bank_mb']:.1f} MiB)")
    if config.inspect and not record.interrupted and detector.family == "autoencoder":
        inspect(detector, dataset, val_s, val_x, model_dir / "inspection")
    return TrainOutcome(model_dir, model_file, record)


def inspect(detector: Detector, dataset: Dataset, val_s, val_x: np.ndarray, out: Path) -> None:
    """Input / reconstruction / residual figures for validation and a few test images."""
    method = "l2" if detector.loss == "l2" else "ssim"
    groups = [("val", val_s[:N_INSPECT], val_x[:N_INSPECT])]
    if dataset.test:
        step = max(len(dataset.test) // N_INSPECT, 1)
        picked = dataset.test[::step][:N_INSPECT]
        color_mode = "grayscale" if detector.input_shape[-1] == 1 else "rgb"
        groups.append(("test", picked, read_images([s.path for s in picked], color_mode, detector.input_shape[:2])))
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
    return saved_config(model_dir).validate()
