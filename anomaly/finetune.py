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
from anomaly.postprocessing import largest_area_table, quantile_grid, threshold_grid
from anomaly.resmaps import THRESHOLD_GRID, check_method

MIN_AREAS = tuple(range(5, 1005, 5))


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

    def maps(self, samples: list[Sample], method: str, dtype: str, **kwargs):
        size = (self.config.input_size,) * 2
        images = read_images([s.path for s in samples], self.config.color_mode, size)
        return images, self.detector.anomaly_maps(images, method, dtype, **kwargs)


def load_model(path: str | Path) -> LoadedModel:
    """Resolve `-p` (model file or directory) and load the model, its config and its dataset."""
    model_dir, model_file = modeldir.resolve(path)
    config = config_from_dict(modeldir.read_config(model_dir))
    dataset = find_dataset(config.data_dir)
    detector = load_detector(config, model_file)
    return LoadedModel(model_dir, model_file, config, dataset, detector)


def search_pair(val_maps: np.ndarray, ft_maps: np.ndarray, ft_labels: np.ndarray, method: str,
                dtype: str, min_areas=MIN_AREAS) -> tuple[dict, list[dict]]:
    """The (min_area, threshold) search.

    Args:
        val_maps: (Nv, H, W) maps of defect-free validation images.
        ft_maps: (Nf, H, W) maps of the labelled finetune images.
        ft_labels: (Nf,) 0 good / 1 defective.
        method, dtype: select the threshold grid's start and step.
        min_areas: the candidate minimum region areas.

    Returns:
        (best row, candidate table); each row has min_area, threshold, tpr, tnr,
        balanced_accuracy and f1 on the finetune images.
    """
    if (dtype, method) in THRESHOLD_GRID:
        start, step = THRESHOLD_GRID[(dtype, method)]
        grid = threshold_grid(start, step, float(val_maps.max()))
    else:
        grid = quantile_grid(val_maps)
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


def finetune(path: str | Path, method: str | None = None, dtype: str = "float64", fraction: float = 0.1,
             seed: int | None = None, progress: bool = True) -> dict:
    """Finetune a trained model and write `finetune/<method>_<dtype>/`.

    Args:
        path: the model file or its directory.
        method: the map: "ssim" or "l2" for autoencoders, "zscore" for pixel-gaussian;
            None for the detector's first.
        dtype: "float64" or "uint8".
        fraction: share of the test images used (and then excluded from testing).
        seed: seeds the finetune subset; the training seed when None.
        progress: print what it does.

    Returns:
        The content of finetune.json.
    """
    if not 0 < fraction < 1:
        raise AnomalyError(f"--split: expected a fraction in (0, 1), got {fraction}")
    loaded = load_model(path)
    method = method or loaded.detector.methods[0]
    check_method(method, dtype, loaded.detector.methods)
    cfg = loaded.config
    seed = cfg.seed if seed is None else seed
    val = loaded.samples(cfg.extra["split"]["validation"])
    test = loaded.dataset.require_test()
    subset = finetune_split(test, fraction, seed)
    labels = np.array([s.label for s in subset])
    if progress:
        print(f"finetuning on {len(val)} validation images and {len(subset)} test images "
              f"({int(labels.sum())} defective), maps {method}/{dtype}")
    _, val_maps = loaded.maps(val, method, dtype)
    _, ft_maps = loaded.maps(subset, method, dtype)
    best, table = search_pair(val_maps, ft_maps, labels, method, dtype)
    result = {"method": method, "dtype": dtype, "mode": "semi", "min_area": best["min_area"],
              "threshold": best["threshold"], "score": best["balanced_accuracy"],
              "score_name": "balanced_accuracy", "tpr": best["tpr"], "tnr": best["tnr"],
              "split": fraction, "seed": seed, "model_file": loaded.model_file.name,
              "finetune_images": [s.relpath for s in subset],
              "validation_images": [s.relpath for s in val], "candidates": table}
    target = modeldir.finetune_dir(loaded.model_dir, method, dtype)
    with modeldir.replace_folder(target) as tmp:
        modeldir.write_json(tmp / "finetune.json", result)
        plots.plot_finetune(table, best, tmp / "finetune_plot.png")
    result["dir"] = str(target)
    return result
