"""From anomaly maps to decisions: binarise, connected components, min-area/threshold search, and the
`PostProcessor` that holds all of it for a finetuned model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from anomaly import modeldir
from anomaly.arrays import load_npz
from anomaly.errors import AnomalyError, AnomalyWarning
from anomaly.metrics import classification_metrics
from anomaly.resmaps import THRESHOLD_GRID

MIN_AREAS = tuple(range(5, 1005, 5))
MODES = ("semi", "normal-only", "synthetic")
# Synthetic defects chose better pairs than normal-only on each shared dataset (docs/results.md).
DEFAULT_MODE = "synthetic"
# max: the (smoothed) map maximum; area: pixels of the largest region over the threshold;
# mean: the map mean (FRE's squared error); detector: the detector's own image score (CutPaste).
SCORES = ("max", "area", "mean", "detector")

# 8-connectivity in each image and none across the stack, so a batch labels in one call.
_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE[1] = True


def threshold_grid(start: float, step: float, maximum: float) -> np.ndarray:
    """Thresholds start, start+step, ... up to and including the first one above `maximum`.

    Built from integer multiples of `step` so values do not drift (the original's float
    arange gave thresholds like 0.27000000000000013), and never empty.
    """
    n = max(int(np.floor((maximum - start) / step)) + 2, 1)
    return np.round(start + step * np.arange(n), 10)


def quantile_grid(val_maps: np.ndarray, n: int = 400) -> np.ndarray:
    """Thresholds for maps of any scale: quantiles 0.5 .. 1 of the validation pixels, then one above.

    Used for detectors whose maps have no fixed range (z-scores, feature distances).
    """
    values = np.quantile(val_maps, np.linspace(0.5, 1.0, n))
    top = float(val_maps.max())
    return np.unique(np.append(values, top + max(abs(top), 1e-12) * 1e-6))


def segment(maps: np.ndarray, threshold: float, min_area: int = 0) -> np.ndarray:
    """Predicted defect masks: pixels over `threshold` in regions of at least `min_area` pixels.

    Args:
        maps: (N, H, W) anomaly maps.
        threshold: pixels with map > threshold are candidates.
        min_area: connected regions (8-connectivity) smaller than this are dropped.

    Returns:
        bool (N, H, W).
    """
    binary = maps > threshold
    if min_area <= 1:
        return binary
    labels, n = ndimage.label(binary, structure=_STRUCTURE)
    if n == 0:
        return binary
    areas = np.bincount(labels.ravel())
    keep = areas >= min_area
    keep[0] = False
    return keep[labels]


def largest_region_areas(maps: np.ndarray, threshold: float) -> np.ndarray:
    """Area in pixels of the largest region over `threshold` in each map (0 when none)."""
    labels, n = ndimage.label(maps > threshold, structure=_STRUCTURE)
    out = np.zeros(len(maps), dtype=np.int64)
    if n == 0:
        return out
    flat = labels.ravel()
    areas = np.bincount(flat, minlength=n + 1)
    pixels = np.flatnonzero(flat)
    image_of_label = np.zeros(n + 1, dtype=np.int64)
    image_of_label[flat[pixels]] = pixels // (flat.size // len(maps))
    np.maximum.at(out, image_of_label[1:], areas[1:])
    return out


def largest_area_table(maps: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(len(thresholds), N) table of each map's largest region area at each threshold."""
    return np.stack([largest_region_areas(maps, t) for t in thresholds])


def classify(maps: np.ndarray, threshold: float, min_area: int) -> np.ndarray:
    """1 for each map holding a region over `threshold` of at least `min_area` pixels, else 0.

    A region has at least one pixel, so a `min_area` of 0 means 1: a map with no pixel over the
    threshold is never anomalous.
    """
    min_area = max(int(min_area), 1)
    out = np.zeros(len(maps), dtype=np.int64)
    # A map with fewer pixels over the threshold than min_area cannot hold such a region:
    # only the others need connected components (most defect-free maps are skipped).
    candidates = np.flatnonzero((maps > threshold).reshape(len(maps), -1).sum(axis=1) >= min_area)
    if candidates.size:
        out[candidates] = largest_region_areas(maps[candidates], threshold) >= min_area
    return out


class MapStats:
    """Per-pixel mean and standard deviation of the maps of defect-free training images.

    Autoencoders reconstruct some places (edges, rims, specular spots) badly on every image;
    dividing the map's excess over its usual value by its usual spread turns those systematic
    errors down and leaves what is unusual for that pixel.

    Args:
        mean: (H, W) mean map.
        std: (H, W) standard deviation, floored so constant pixels do not divide by zero.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)

    @classmethod
    def fit(cls, maps: np.ndarray) -> MapStats:
        """Statistics of (N, H, W) maps; the floor is 1e-3 of the maps' overall spread."""
        floor = max(float(maps.std()) * 1e-3, 1e-12)
        return cls(maps.mean(axis=0), maps.std(axis=0) + floor)

    def apply(self, maps: np.ndarray) -> np.ndarray:
        """(maps - mean) / std, pixel by pixel."""
        return ((maps - self.mean) / self.std).astype(np.float32)

    def save(self, path) -> None:
        np.savez(path, mean=self.mean, std=self.std)

    @classmethod
    def load(cls, path) -> MapStats:
        try:
            with load_npz(path) as data:
                return cls(data["mean"], data["std"])
        except (OSError, KeyError, ValueError) as exc:
            raise AnomalyError(f"{path}: cannot load the map statistics ({exc})") from None


def smooth_maps(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smooth each (H, W) map of a stack; sigma 0 returns the maps unchanged."""
    if sigma <= 0:
        return maps
    return ndimage.gaussian_filter(maps.astype(np.float32), sigma=(0, sigma, sigma), mode="nearest")


def image_scores(maps: np.ndarray, sigma: float = 4.0) -> np.ndarray:
    """Continuous image scores: the maximum of each map after Gaussian smoothing.

    Smoothing first makes the score reflect a defect-sized region rather than one noisy pixel.

    Args:
        maps: (N, H, W) anomaly maps.
        sigma: Gaussian standard deviation in pixels (0 for the raw maximum).

    Returns:
        float64 (N,).
    """
    maps = smooth_maps(maps, sigma)
    return maps.reshape(len(maps), -1).max(axis=1).astype(np.float64)


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


def _balanced_by_threshold(good_areas: np.ndarray, bad_areas: np.ndarray, min_area: int) -> np.ndarray:
    """Balanced accuracy at each threshold of (thresholds, images) largest-area tables of good and
    defective images, an image being flagged when its largest region has at least `min_area` pixels."""
    return ((good_areas < min_area).mean(axis=1) + (bad_areas >= min_area).mean(axis=1)) / 2


def synthetic_pair(val_maps: np.ndarray, defect_maps: np.ndarray, defect_areas: np.ndarray, method: str,
                   dtype: str, min_areas=MIN_AREAS, normalized: bool = False) -> tuple[dict, list[dict]]:
    """Choose (min_area, threshold) on defect-free validation maps and maps of synthetic defects.

    The candidate min areas are those no larger than the median synthetic defect (a larger one
    would miss half of them by its size alone). For each, the threshold of the best balanced
    accuracy over the validation images (good) and the synthetic ones (defective); where many
    thresholds do equally well, the middle one, the farthest from both kinds of mistake; then the
    min area of the best of those, the smallest among equals. The thresholds span the synthetic
    defects' maps too, so that the middle can lie above every validation map.

    Args:
        val_maps: (Nv, H, W) maps of defect-free validation images.
        defect_maps: (Nd, H, W) maps of images with synthetic defects.
        defect_areas: (Nd,) pixels of each synthetic defect.

    Returns:
        (best row, candidate table); rows hold min_area, threshold, tpr, tnr, balanced_accuracy, f1.
    """
    grid = _grid_for(np.concatenate([val_maps, defect_maps]), method, dtype, normalized)
    median = float(np.median(defect_areas)) if len(defect_areas) else 0.0
    candidates = [m for m in min_areas if m <= median] or [min_areas[0]]
    val_areas = largest_area_table(val_maps, grid)        # (thresholds, Nv)
    defect_table = largest_area_table(defect_maps, grid)  # (thresholds, Nd)
    labels = np.r_[np.zeros(len(val_maps), int), np.ones(len(defect_maps), int)]
    table = []
    for min_area in candidates:
        balanced = _balanced_by_threshold(val_areas, defect_table, min_area)
        tied = np.flatnonzero(balanced == balanced.max())
        ti = int(tied[len(tied) // 2])
        predicted = np.r_[val_areas[ti] >= min_area, defect_table[ti] >= min_area].astype(int)
        m = classification_metrics(labels, predicted)
        table.append({"min_area": int(min_area), "threshold": float(grid[ti]), "tpr": m["tpr"], "tnr": m["tnr"],
                      "balanced_accuracy": m["balanced_accuracy"], "f1": m["f1"]})
    return table[int(np.argmax([row["balanced_accuracy"] for row in table]))], table


def best_balanced_accuracy(maps: np.ndarray, labels: np.ndarray, chosen: tuple[float, int] | None = None,
                           min_areas=MIN_AREAS, n: int = 100) -> float | None:
    """The best balanced accuracy any (min_area, threshold) reaches on labelled maps.

    A diagnostic of how good the maps are for decisions (test metrics show it beside the
    balanced accuracy of the chosen pair); never used to choose anything. Thresholds are `n`
    quantiles of the maps from their minimum to their maximum, and the `chosen` pair is among
    the candidates, so the result is never below that pair's. None without both good and
    defective images.
    """
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return None
    thresholds = np.quantile(maps, np.linspace(0.0, 1.0, n))
    areas_to_try = (1, *min_areas)
    if chosen is not None:
        thresholds = np.append(thresholds, chosen[0])
        areas_to_try = (*areas_to_try, max(int(chosen[1]), 1))
    areas = largest_area_table(maps, np.unique(thresholds))
    good, bad = labels == 0, labels == 1
    return float(max(_balanced_by_threshold(areas[:, good], areas[:, bad], m).max() for m in areas_to_try))


@dataclass
class Decisions:
    """What post-processing makes of a batch of maps.

    Attributes:
        maps: (N, H, W) float32 maps after smoothing and normalisation.
        scores: (N,) float64 image scores, higher = more anomalous.
        masks: (N, H, W) bool: regions over the threshold of at least `min_area` pixels.
        is_anomalous: (N,) bool decisions.
    """

    maps: np.ndarray
    scores: np.ndarray
    masks: np.ndarray
    is_anomalous: np.ndarray


@dataclass
class PostProcessor:
    """From a detector's raw maps to scores, masks and decisions; fitted by `anomaly-finetune`.

    Attributes:
        method, dtype: the map it was fitted on.
        smooth: Gaussian sigma (pixels) applied to every map first.
        normalize: whether maps become per-pixel z-scores against the training images' maps
            (`stats`, fitted by `fit_stats`).
        image_score: "max", "area", "mean" or "detector" (see `SCORES`).
        score_sigma: for "max": the Gaussian sigma before taking the maximum.
        threshold, min_area: the decision: a region of at least `min_area` pixels over
            `threshold` makes an image anomalous (None until `fit`).
        stats: the normalisation statistics.
    """

    method: str
    dtype: str = "float64"
    smooth: float = 0.0
    normalize: bool = False
    image_score: str = "max"
    score_sigma: float = 4.0
    threshold: float | None = None
    min_area: int = 0
    stats: MapStats | None = None

    @classmethod
    def for_detector(cls, detector, **options) -> PostProcessor:
        """The detector's defaults (`finetune_defaults`), with the options that are not None."""
        defaults = {"smooth": 0.0, "normalize": False, "score_sigma": 4.0, "image_score": "max",
                    **detector.finetune_defaults}
        values = {**defaults, **{k: v for k, v in options.items() if v is not None}}
        pp = cls(**values)
        if pp.image_score not in SCORES:
            raise AnomalyError(f"unknown image score '{pp.image_score}': expected one of {', '.join(SCORES)}", "score")
        if pp.image_score == "detector" and not detector.own_image_score:
            raise AnomalyError(f"{detector.name} has no image score of its own; use max, area or mean", "score")
        return pp

    def transform(self, maps: np.ndarray) -> np.ndarray:
        """Smoothing, then the z-scores when `normalize`."""
        maps = smooth_maps(maps, self.smooth)
        if self.normalize:
            if self.stats is None:
                raise AnomalyError("the map statistics were not fitted (run fit_stats)", "normalize")
            maps = self.stats.apply(maps)
        return maps

    def fit_stats(self, train_maps: np.ndarray) -> PostProcessor:
        """Fit the normalisation statistics on the (raw) maps of defect-free training images."""
        if self.normalize:
            self.stats = MapStats.fit(smooth_maps(train_maps, self.smooth))
        return self

    def fit(self, val_maps: np.ndarray, mode: str = "normal-only", target_fpr: float = 0.05,
            ft_maps: np.ndarray | None = None, ft_labels: np.ndarray | None = None,
            defect_areas: np.ndarray | None = None) -> tuple[dict, list[dict]]:
        """Choose (min_area, threshold) from raw maps.

        Args:
            val_maps: maps of defect-free validation images.
            mode: "normal-only" (`normal_only_pair`), "semi" (`search_pair` on `ft_maps`) or
                "synthetic" (`synthetic_pair`: `ft_maps` are maps of synthetic defects).
            target_fpr: normal-only: the share of validation images allowed to be flagged.
            ft_maps, ft_labels: semi: maps and labels of labelled images.
            defect_areas: synthetic: the pixels of each synthetic defect.

        Returns:
            (the chosen row, the candidate table).
        """
        if mode not in MODES:
            raise AnomalyError(f"unknown mode '{mode}': expected one of {', '.join(MODES)}", "mode")
        val = self.transform(val_maps)
        if mode == "normal-only" and 0 < target_fpr and len(val) * target_fpr < 1:
            import math
            import warnings

            # With n images the rate moves in steps of 1/n: every target below 1/n flags none of them.
            warnings.warn(f"{len(val)} validation images cannot tell a false-positive rate of {target_fpr:g} from 0 "
                          f"(steps of 1/{len(val)}): the threshold flags none of them; {math.ceil(1 / target_fpr)} "
                          "or more defect-free validation images are needed for that rate", AnomalyWarning,
                          stacklevel=2)
        if mode == "normal-only":
            best, table = normal_only_pair(val, self.method, self.dtype, target_fpr, normalized=self.normalize)
        elif mode == "synthetic":
            best, table = synthetic_pair(val, self.transform(ft_maps), np.asarray(defect_areas), self.method,
                                         self.dtype, normalized=self.normalize)
        else:
            best, table = search_pair(val, self.transform(ft_maps), np.asarray(ft_labels), self.method, self.dtype,
                                      normalized=self.normalize)
        self.threshold, self.min_area = float(best["threshold"]), int(best["min_area"])
        return best, table

    def scores(self, maps: np.ndarray, detector_scores: np.ndarray | None = None) -> np.ndarray:
        """(N,) image scores of transformed maps (`detector_scores` for image_score "detector")."""
        if self.image_score == "area":
            return largest_region_areas(maps, self.threshold).astype(np.float64)
        if self.image_score == "mean":
            return maps.reshape(len(maps), -1).mean(axis=1).astype(np.float64)
        if self.image_score == "detector":
            if detector_scores is None:
                raise AnomalyError("this post-processing uses the detector's own image scores", "score")
            return np.asarray(detector_scores, np.float64)
        return image_scores(maps, self.score_sigma)

    def apply(self, maps: np.ndarray, detector_scores: np.ndarray | None = None,
              threshold: float | None = None, min_area: int | None = None) -> Decisions:
        """Scores, masks and decisions of raw maps.

        Args:
            maps: (N, H, W) raw maps of the detector.
            detector_scores: the detector's own image scores (image_score "detector").
            threshold, min_area: override the fitted pair for this call only.
        """
        threshold = self.threshold if threshold is None else threshold
        min_area = self.min_area if min_area is None else min_area
        if threshold is None:
            raise AnomalyError("not fitted yet (run anomaly-finetune first)", "threshold")
        maps = self.transform(maps)
        return Decisions(maps=maps, scores=self.scores(maps, detector_scores), masks=segment(maps, threshold, min_area),
                         is_anomalous=classify(maps, threshold, min_area).astype(bool))

    def to_dict(self) -> dict:
        """The settings as finetune.json records them."""
        return {"method": self.method, "dtype": self.dtype, "smooth": self.smooth, "score_sigma": self.score_sigma,
                "image_score": self.image_score, "normalize": self.normalize, "min_area": self.min_area,
                "threshold": self.threshold}

    def save(self, directory: Path, record: dict | None = None) -> None:
        """Write finetune.json (the settings, plus `record`) and map_stats.npz into `directory`."""
        directory = Path(directory)
        modeldir.write_json(directory / modeldir.FINETUNE_FILE, {**self.to_dict(), **(record or {})})
        if self.stats is not None:
            self.stats.save(directory / modeldir.STATS_FILE)

    @classmethod
    def load(cls, directory: Path) -> PostProcessor:
        """The post-processing `save` wrote (a finetune/<method>_<dtype>/ folder)."""
        import json

        path = Path(directory) / modeldir.FINETUNE_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise AnomalyError(f"{path}: cannot read the finetuned post-processing ({exc})") from None
        return cls.from_dict(data, Path(directory))

    @classmethod
    def from_dict(cls, data: dict, directory: Path | None = None) -> PostProcessor:
        """From the content of finetune.json (its statistics read from `directory`)."""
        try:
            pp = cls(method=str(data["method"]), dtype=str(data.get("dtype", "float64")),
                     smooth=_finite(data.get("smooth", 0.0), "smooth"),
                     normalize=bool(data.get("normalize", False)),
                     image_score=str(data.get("image_score", "max")),
                     score_sigma=_finite(data.get("score_sigma", 4.0), "score_sigma"),
                     threshold=_finite(data["threshold"], "threshold"), min_area=int(data["min_area"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise AnomalyError(f"{directory}: finetune.json is incomplete or damaged ({exc})") from None
        if pp.image_score not in SCORES:
            raise AnomalyError(f"{directory}: finetune.json: unknown image score '{pp.image_score}'")
        if pp.normalize:
            pp.stats = MapStats.load(Path(directory) / modeldir.STATS_FILE)
        return pp


def _finite(value, name: str) -> float:
    number = float(value)
    if not np.isfinite(number):
        raise ValueError(f"{name} is {value}")
    return number
