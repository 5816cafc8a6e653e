"""Choosing the (min_area, threshold) pair that turns anomaly maps into decisions.

Semi-supervised, as the original toolkit: for every min_area in 5, 10, ..., 1000, the threshold
is the lowest one at which no validation image (defect-free, held out from training) holds a
region of min_area pixels; each pair then classifies a seeded, stratified subset of the test
images, and the pair with the best balanced accuracy wins (ties: the smallest min_area).

Fixed from the original: the finetune images are recorded and excluded from test metrics, an
empty threshold grid no longer crashes, thresholds are exact multiples of the step, and regions
touching the image border are kept (the original cleared them, missing defects at the edge).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomaly import modeldir, plots
from anomaly.config import TrainConfig, saved_config
from anomaly.data.dataset import Dataset, Sample, finetune_split
from anomaly.data.io import read_images
from anomaly.data.synthetic import DEFECT_KINDS, validation_defects
from anomaly.detectors.base import Detector
from anomaly.errors import AnomalyError
from anomaly.postprocessing import (
    DEFAULT_MODE,
    MIN_AREAS,
    MODES,
    SCORES,
    PostProcessor,
    classify,
    normal_only_pair,
    search_pair,
    smooth_maps,
)
from anomaly.progress import step as progress_step
from anomaly.resmaps import check_method

SYNTHETIC_PLOT = "synthetic_defects.png"

__all__ = ["LoadedModel", "load_model", "finetune", "MIN_AREAS", "MODES", "SCORES", "normal_only_pair", "search_pair"]


@dataclass
class LoadedModel:
    """A trained model with its configuration and dataset, ready to produce maps."""

    model_dir: Path
    model_file: Path
    config: TrainConfig
    dataset: Dataset
    detector: Detector

    def samples(self, relpaths: list[str]) -> list[Sample]:
        by_path = {s.relpath: s for s in self.dataset.train + self.dataset.test}
        missing = [p for p in relpaths if p not in by_path]
        if missing:
            raise AnomalyError(f"{self.dataset.root / missing[0]}: image listed in the model directory is missing")
        return [by_path[p] for p in relpaths]

    def maps(self, samples: list[Sample], method: str, dtype: str, smooth: float = 0.0, show: str = ""):
        """(images, maps) of samples; maps Gaussian-smoothed with sigma `smooth` when > 0; `show`
        names the step for a progress bar ("" for none)."""
        size = self.config.image_size
        images = read_images([s.path for s in samples], self.config.color_mode, size)
        with progress_step(f"{show}: {len(samples)} images", len(samples), enabled=bool(show)):
            maps = self.detector.anomaly_maps(images, method, dtype)
        return images, smooth_maps(maps, smooth)

    def fit_map_stats(self, pp: PostProcessor, show: str = "") -> None:
        """Fit `pp`'s normalisation on the training images' maps when it normalises (else nothing)."""
        if pp.normalize:
            train = self.samples(self.config.extra["split"]["train"])
            pp.fit_stats(self.maps(train, pp.method, pp.dtype, show=show)[1])

    def defect_maps(self, images: np.ndarray, method: str, dtype: str, seed: int, show: str = ""):
        """(the seeded synthetic defects made on `images` (`validation_defects`), their maps): the set
        `--mode synthetic` finetunes on and `anomaly-train -a auto` scores candidates on."""
        defects = validation_defects(images, seed)
        with progress_step(f"{show}: {len(defects.kinds)} images", len(defects.kinds), enabled=bool(show)):
            maps = self.detector.anomaly_maps(defects.images, method, dtype)
        return defects, maps


def load_model(path: str | Path, data_dir: str | Path | None = None) -> LoadedModel:
    """Resolve `-p` (model file or directory) and load the model, its config and its dataset.

    Args:
        path: the model file or its directory.
        data_dir: the dataset's folder when it is no longer where training found it.
    """
    model_dir, model_file = modeldir.resolve(path)
    config = saved_config(model_dir)
    try:
        config.validate()
    except AnomalyError as exc:
        raise AnomalyError(f"{model_dir / modeldir.CONFIG_FILE}: {exc}") from None
    if data_dir is None and not Path(config.data_dir).is_dir():
        raise AnomalyError(f"the training data recorded in {model_dir / modeldir.CONFIG_FILE} is gone "
                           f"({config.data_dir}); pass the dataset folder's new place", "data_dir")
    dataset = config.dataset(data_dir)
    detector = Detector.load(model_dir, model_file)
    return LoadedModel(model_dir, model_file, config, dataset, detector)


def finetune(path: str | Path, method: str | None = None, dtype: str = "float64", fraction: float = 0.1,
             seed: int | None = None, progress: bool = True, mode: str = DEFAULT_MODE,
             target_fpr: float = 0.05, smooth: float | None = None, score_sigma: float | None = None,
             score: str | None = None, normalize: bool | None = None, data_dir: str | Path | None = None) -> dict:
    """Finetune a trained model and write `finetune/<method>_<dtype>/`.

    Args:
        path: the model file or its directory.
        method: the map: "ssim" or "l2" for autoencoders, "zscore" for pixel-gaussian;
            None for the detector's default (`finetune_defaults`, also for smooth and normalize).
        dtype: "float64" or "uint8".
        fraction: share of the test images used (and then excluded from testing).
        seed: seeds the finetune subset; the training seed when None.
        progress: print what it does.
        mode: "synthetic" (the default: the validation images and seeded synthetic defects made
            on them, `validation_defects` and `synthetic_pair`; no test image is used),
            "normal-only" (validation images alone; no test image is used, see
            `normal_only_pair`) or "semi" (a labelled test subset picks the pair, as the original
            toolkit did).
        target_fpr: normal-only: the share of validation images allowed to be flagged.
        smooth: Gaussian sigma (pixels) applied to every map before thresholding; test uses
            the same.
        score_sigma: the test's continuous image score is the maximum of each map after a
            Gaussian of this sigma (recorded here, used by test); None for the detector's
            default (4, or 0 for detectors whose maps are smoothed already).
        score: "max" (the smoothed maximum above), "area" (pixels in the largest region over
            the chosen threshold), "mean" (the map mean) or "detector" (the detector's own image
            score); None for the detector's default.
        normalize: turn maps into per-pixel z-scores against the maps of the training images
            (`MapStats`, saved as map_stats.npz beside finetune.json and used by test).
        data_dir: where the training data is now, when it has moved since training.

    Returns:
        The content of finetune.json.
    """
    if mode not in MODES:
        raise AnomalyError(f"--mode: unknown mode '{mode}': expected one of {', '.join(MODES)}")
    if not 0 < fraction < 1:
        raise AnomalyError(f"--split: expected a fraction in (0, 1), got {fraction}")
    if not 0 <= target_fpr < 1:
        raise AnomalyError(f"--target-fpr: expected a fraction in [0, 1), got {target_fpr}")
    for flag, sigma in (("--smooth", smooth), ("--score-sigma", score_sigma)):
        if sigma is not None and not 0 <= sigma < float("inf"):  # NaN fails this too
            raise AnomalyError(f"{flag}: expected a finite sigma >= 0, got {sigma}")
    loaded = load_model(path, data_dir)
    pp = PostProcessor.for_detector(loaded.detector, method=method, dtype=dtype, smooth=smooth,
                                    normalize=normalize, score_sigma=score_sigma, image_score=score)
    check_method(pp.method, dtype, loaded.detector.methods)
    cfg = loaded.config
    seed = cfg.seed if seed is None else seed
    val = loaded.samples(cfg.extra["split"]["validation"])
    show = "maps of the validation images" if progress else ""
    val_images, val_maps = loaded.maps(val, pp.method, dtype, show=show)
    loaded.fit_map_stats(pp, show=show and "maps of the training images")
    subset = []
    if mode == "normal-only":
        if progress:
            print(f"finetuning on {len(val)} defect-free validation images only, maps {pp.method}/{dtype}, "
                  f"target false-positive rate {target_fpr:g}")
        best, table = pp.fit(val_maps, mode, target_fpr)
    elif mode == "synthetic":
        if progress:
            print(f"finetuning on {len(val)} defect-free validation images and seeded synthetic defects made "
                  f"on them ({', '.join(DEFECT_KINDS)}), maps {pp.method}/{dtype}")
        defects, defect_maps = loaded.defect_maps(val_images, pp.method, dtype, seed,
                                                  show="maps of the synthetic defects" if progress else "")
        best, table = pp.fit(val_maps, mode, ft_maps=defect_maps, defect_areas=defects.masks.sum(axis=(1, 2)))
        found = classify(pp.transform(defect_maps), pp.threshold, pp.min_area).astype(bool)
        synthetic = {"seed": seed, "copies": defects.copies, "kinds": list(DEFECT_KINDS),
                     "tpr_by_kind": {k: float(np.mean(found[np.array(defects.kinds) == k])) if k in defects.kinds
                                     else None for k in DEFECT_KINDS}}
    else:
        subset = finetune_split(loaded.dataset.require_test(), fraction, seed)
        labels = np.array([s.label for s in subset])
        if progress:
            print(f"finetuning on {len(val)} validation images and {len(subset)} test images "
                  f"({int(labels.sum())} defective), maps {pp.method}/{dtype}")
        ft_maps = loaded.maps(subset, pp.method, dtype, show=show and "maps of the finetuning test images")[1]
        best, table = pp.fit(val_maps, mode, ft_maps=ft_maps, ft_labels=labels)
    record = {"mode": mode, "score": best["balanced_accuracy"], "score_name": "balanced_accuracy",
              "tpr": best["tpr"], "tnr": best["tnr"], "target_fpr": target_fpr if mode == "normal-only" else None,
              "split": fraction if mode == "semi" else 0.0, "seed": seed, "model_file": loaded.model_file.name,
              "finetune_images": [s.relpath for s in subset],
              "validation_images": [s.relpath for s in val], "candidates": table}
    if mode == "synthetic":
        record["synthetic"] = synthetic
    target = modeldir.finetune_dir(loaded.model_dir, pp.method, dtype)
    with modeldir.replace_folder(target) as tmp:
        pp.save(tmp, record)
        plots.plot_finetune(table, best, tmp / "finetune_plot.png")
        if mode == "synthetic":
            plots.plot_synthetic_defects(defects.images, defects.masks, defects.kinds, tmp / SYNTHETIC_PLOT)
    result = {**pp.to_dict(), **record}
    result["dir"] = str(target)
    return result
