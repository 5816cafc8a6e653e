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
from anomaly.config import TrainConfig, config_from_dict
from anomaly.data.dataset import Dataset, Sample, find_dataset, finetune_split
from anomaly.data.io import read_images
from anomaly.detectors import load_detector
from anomaly.detectors.base import Detector
from anomaly.errors import AnomalyError
from anomaly.metrics import classification_metrics
from anomaly.postprocessing import MapStats, largest_area_table, quantile_grid, smooth_maps, threshold_grid
from anomaly.resmaps import THRESHOLD_GRID, check_method

MIN_AREAS = tuple(range(5, 1005, 5))
MODES = ("semi", "normal-only")
# max: the (smoothed) map maximum; area: pixels of the largest region over the threshold;
# mean: the map mean (FRE's squared error); detector: the detector's own image score (CutPaste).
SCORES = ("max", "area", "mean", "detector")


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

    def maps(self, samples: list[Sample], method: str, dtype: str, smooth: float = 0.0):
        """(images, maps) of samples; maps Gaussian-smoothed with sigma `smooth` when > 0."""
        size = self.config.image_size
        images = read_images([s.path for s in samples], self.config.color_mode, size)
        return images, smooth_maps(self.detector.anomaly_maps(images, method, dtype), smooth)


def load_model(path: str | Path) -> LoadedModel:
    """Resolve `-p` (model file or directory) and load the model, its config and its dataset."""
    model_dir, model_file = modeldir.resolve(path)
    config = config_from_dict(modeldir.read_config(model_dir))
    try:
        config.validate()
    except AnomalyError as exc:
        raise AnomalyError(f"{model_dir / modeldir.CONFIG_FILE}: {exc}") from None
    dataset = find_dataset(config.data_dir)
    detector = load_detector(config, model_file)
    return LoadedModel(model_dir, model_file, config, dataset, detector)


def search_pair(val_maps: np.ndarray, ft_maps: np.ndarray, ft_labels: np.ndarray, method: str,
                dtype: str, min_areas=MIN_AREAS, normalized: bool = False) -> tuple[dict, list[dict]]:
    """The (min_area, threshold) search.

    Args:
        val_maps: (Nv, H, W) maps of defect-free validation images.
        ft_maps: (Nf, H, W) maps of the labelled finetune images.
        ft_labels: (Nf,) 0 good / 1 defective.
        method, dtype: select the threshold grid's start and step.
        normalized: the maps are z-scores (`MapStats`): thresholds from their quantiles.
        min_areas: the candidate minimum region areas.

    Returns:
        (best row, candidate table); each row has min_area, threshold, tpr, tnr,
        balanced_accuracy and f1 on the finetune images.
    """
    grid = _grid_for(val_maps, method, dtype, normalized)
    largest_val = largest_area_table(val_maps, grid).max(axis=1)
    ft_areas = largest_area_table(ft_maps, grid)
    table = []
    for min_area in min_areas:
        clean = np.flatnonzero(largest_val < min_area)
        ti = int(clean[0]) if clean.size else len(grid) - 1
        predicted = (ft_areas[ti] >= min_area).astype(int)
        m = classification_metrics(ft_labels, predicted)
        table.append({"min_area": int(min_area), "threshold": float(grid[ti]), "tpr": m["tpr"],
                      "tnr": m["tnr"], "balanced_accuracy": m["balanced_accuracy"], "f1": m["f1"]})
    scores = np.array([row["balanced_accuracy"] if row["balanced_accuracy"] is not None else -1.0
                       for row in table])
    return table[int(np.argmax(scores))], table


def _grid_for(val_maps: np.ndarray, method: str, dtype: str, normalized: bool = False) -> np.ndarray:
    if (dtype, method) in THRESHOLD_GRID and not normalized:
        start, step = THRESHOLD_GRID[(dtype, method)]
        return threshold_grid(start, step, float(val_maps.max()))
    return quantile_grid(val_maps)


def normal_only_pair(val_maps: np.ndarray, method: str, dtype: str, target_fpr: float = 0.05,
                     min_areas=MIN_AREAS, normalized: bool = False) -> tuple[dict, list[dict]]:
    """Choose (min_area, threshold) from defect-free validation maps alone.

    For every min_area, the threshold is the lowest one at which at most `target_fpr` of the
    validation images hold a region of min_area pixels (a quantile, not the maximum, so one odd
    validation image does not set it). Small areas need high thresholds and low thresholds need
    large areas; the pair chosen is the knee of that curve: the point closest to (smallest
    area, lowest threshold) after scaling both axes to [0, 1].

    Returns:
        (best row, candidate table); rows hold min_area, threshold and val_fpr.
    """
    grid = _grid_for(val_maps, method, dtype, normalized)
    val_areas = largest_area_table(val_maps, grid)
    table = []
    for min_area in min_areas:
        fpr = (val_areas >= min_area).mean(axis=1)
        ok = np.flatnonzero(fpr <= target_fpr)
        ti = int(ok[0]) if ok.size else len(grid) - 1
        table.append({"min_area": int(min_area), "threshold": float(grid[ti]), "val_fpr": float(fpr[ti]),
                      "tpr": None, "tnr": None, "balanced_accuracy": None, "f1": None})
    areas = np.array([r["min_area"] for r in table], dtype=np.float64)
    thresholds = np.array([r["threshold"] for r in table])
    span_t = thresholds.max() - thresholds.min() or 1.0
    dist = ((areas - areas.min()) / (areas.max() - areas.min() or 1.0)) ** 2 + \
        ((thresholds - thresholds.min()) / span_t) ** 2
    return table[int(np.argmin(dist))], table


def finetune(path: str | Path, method: str | None = None, dtype: str = "float64", fraction: float = 0.1,
             seed: int | None = None, progress: bool = True, mode: str = "normal-only",
             target_fpr: float = 0.05, smooth: float | None = None, score_sigma: float | None = None,
             score: str | None = None, normalize: bool | None = None) -> dict:
    """Finetune a trained model and write `finetune/<method>_<dtype>/`.

    Args:
        path: the model file or its directory.
        method: the map: "ssim" or "l2" for autoencoders, "zscore" for pixel-gaussian;
            None for the detector's default (`finetune_defaults`, also for smooth and normalize).
        dtype: "float64" or "uint8".
        fraction: share of the test images used (and then excluded from testing).
        seed: seeds the finetune subset; the training seed when None.
        progress: print what it does.
        mode: "normal-only" (validation images alone; no test image is used, see
            `normal_only_pair`) or "semi" (a labelled test subset picks the pair, as the
            original toolkit did).
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
    loaded = load_model(path)
    defaults = loaded.detector.finetune_defaults
    method = method or defaults["method"]
    smooth = defaults["smooth"] if smooth is None else smooth
    normalize = defaults["normalize"] if normalize is None else normalize
    score_sigma = defaults.get("score_sigma", 4.0) if score_sigma is None else score_sigma
    score = defaults.get("image_score", "max") if score is None else score
    check_method(method, dtype, loaded.detector.methods)
    cfg = loaded.config
    seed = cfg.seed if seed is None else seed
    val = loaded.samples(cfg.extra["split"]["validation"])
    if score not in SCORES:
        raise AnomalyError(f"--score: unknown image score '{score}': expected one of {', '.join(SCORES)}")
    if score == "detector" and not hasattr(loaded.detector, "image_scores"):
        raise AnomalyError(f"--score detector: {cfg.architecture} has no image score of its own; use max, area or mean")
    _, val_maps = loaded.maps(val, method, dtype, smooth)
    stats = None
    if normalize:
        _, train_maps = loaded.maps(loaded.samples(cfg.extra["split"]["train"]), method, dtype, smooth)
        stats = MapStats.fit(train_maps)
        val_maps = stats.apply(val_maps)
    if mode == "normal-only":
        if progress:
            print(f"finetuning on {len(val)} defect-free validation images only, maps {method}/{dtype}, "
                  f"target false-positive rate {target_fpr:g}")
        subset = []
        best, table = normal_only_pair(val_maps, method, dtype, target_fpr, normalized=normalize)
    else:
        subset = finetune_split(loaded.dataset.require_test(), fraction, seed)
        labels = np.array([s.label for s in subset])
        if progress:
            print(f"finetuning on {len(val)} validation images and {len(subset)} test images "
                  f"({int(labels.sum())} defective), maps {method}/{dtype}")
        _, ft_maps = loaded.maps(subset, method, dtype, smooth)
        if stats is not None:
            ft_maps = stats.apply(ft_maps)
        best, table = search_pair(val_maps, ft_maps, labels, method, dtype, normalized=normalize)
    result = {"method": method, "dtype": dtype, "mode": mode, "smooth": smooth, "score_sigma": score_sigma,
              "image_score": score, "normalize": normalize, "min_area": best["min_area"],
              "threshold": best["threshold"], "score": best["balanced_accuracy"],
              "score_name": "balanced_accuracy", "tpr": best["tpr"], "tnr": best["tnr"],
              "target_fpr": target_fpr if mode == "normal-only" else None,
              "split": fraction if mode == "semi" else 0.0, "seed": seed, "model_file": loaded.model_file.name,
              "finetune_images": [s.relpath for s in subset],
              "validation_images": [s.relpath for s in val], "candidates": table}
    target = modeldir.finetune_dir(loaded.model_dir, method, dtype)
    with modeldir.replace_folder(target) as tmp:
        modeldir.write_json(tmp / "finetune.json", result)
        if stats is not None:
            stats.save(tmp / "map_stats.npz")
        plots.plot_finetune(table, best, tmp / "finetune_plot.png")
    result["dir"] = str(target)
    return result
