"""From anomaly maps to decisions: binarise, connected components, min-area/threshold search."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from anomaly.arrays import load_npz
from anomaly.errors import AnomalyError

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
    """1 for each map holding a region over `threshold` of at least `min_area` pixels, else 0."""
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
    def fit(cls, maps: np.ndarray) -> "MapStats":
        """Statistics of (N, H, W) maps; the floor is 1e-3 of the maps' overall spread."""
        floor = max(float(maps.std()) * 1e-3, 1e-12)
        return cls(maps.mean(axis=0), maps.std(axis=0) + floor)

    def apply(self, maps: np.ndarray) -> np.ndarray:
        """(maps - mean) / std, pixel by pixel."""
        return ((maps - self.mean) / self.std).astype(np.float32)

    def save(self, path) -> None:
        np.savez(path, mean=self.mean, std=self.std)

    @classmethod
    def load(cls, path) -> "MapStats":
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
