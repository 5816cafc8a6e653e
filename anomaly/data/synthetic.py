"""Synthetic anomalies for self-supervised training (CutPaste and its polygon/scar variants).

Li et al., "CutPaste: Self-Supervised Learning for Anomaly Detection and Localization", CVPR
2021, and the polygon-patch variant of the seed project (see the reference fact sheet):

- cutpaste: a rectangle of 2-15 % of the image (aspect ratio in (0.3, 1) or (1, 3.3), either
  side equally likely) is cut at one place, colour-jittered and pasted at another; with
  `polygon=True` only the part inside a random convex polygon is pasted.
- scar: a thin rectangle (2-16 x 10-25 px) of one random colour, rotated by up to 45 degrees.

Every function takes float images in [0, 1] of shape (H, W, C), C = 1 or 3, and a numpy
Generator, and returns a new image and the boolean mask of what changed, so the same seed
gives the same anomaly.
"""

from __future__ import annotations

import numpy as np

NORMAL, CUTPASTE, SCAR = 0, 1, 2


def _box(h: int, w: int, rng: np.random.Generator, area_ratio, aspect_ranges) -> tuple[int, int]:
    """(height, width) of a patch: area a share of the image, aspect from one of the ranges."""
    area = rng.uniform(*area_ratio) * h * w
    low, high = aspect_ranges[rng.integers(len(aspect_ranges))]
    aspect = rng.uniform(low, high)  # width / height
    ph = int(np.clip(round(np.sqrt(area / aspect)), 1, h))
    pw = int(np.clip(round(np.sqrt(area * aspect)), 1, w))
    return ph, pw


def polygon_mask(h: int, w: int, rng: np.random.Generator, n_points=(3, 15)) -> np.ndarray:
    """A filled convex polygon through 3-15 random points of the box's inner 80 % (bool (h, w))."""
    from scipy.spatial import ConvexHull, QhullError
    from skimage.draw import polygon

    n = int(rng.integers(n_points[0], n_points[1] + 1))
    points = rng.uniform(0.1, 0.9, (n, 2)) * [h - 1, w - 1]
    try:
        hull = points[ConvexHull(points).vertices]
    except QhullError:  # collinear points: fall back to the whole box
        return np.ones((h, w), bool)
    mask = np.zeros((h, w), bool)
    rr, cc = polygon(hull[:, 0], hull[:, 1], (h, w))
    mask[rr, cc] = True
    return mask if mask.any() else np.ones((h, w), bool)


def colour_jitter(patch: np.ndarray, rng: np.random.Generator, strength: float = 0.3) -> np.ndarray:
    """Brightness, contrast, saturation and hue jitter of `strength`, as torchvision's ColorJitter."""
    x = patch * rng.uniform(1 - strength, 1 + strength)                       # brightness
    x = (x - x.mean()) * rng.uniform(1 - strength, 1 + strength) + x.mean()   # contrast
    if x.shape[-1] == 3:
        from skimage.color import hsv2rgb, rgb2hsv

        gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
        x = (x - gray[..., None]) * rng.uniform(1 - strength, 1 + strength) + gray[..., None]  # saturation
        hsv = rgb2hsv(np.clip(x, 0, 1))
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-strength, strength)) % 1.0  # hue
        x = hsv2rgb(hsv)
    return np.clip(x, 0, 1).astype(np.float32)


def cutpaste(image: np.ndarray, rng: np.random.Generator, polygon: bool = False, area_ratio=(0.02, 0.15),
             aspect_ranges=((0.3, 1.0), (1.0, 3.3)), jitter: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Cut a patch, jitter its colours and paste it elsewhere (inside a polygon if asked).

    Returns:
        (image, mask): the new float32 image and the bool (H, W) pasted region.
    """
    h, w = image.shape[:2]
    ph, pw = _box(h, w, rng, area_ratio, aspect_ranges)
    y0, x0 = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    y1, x1 = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    patch = colour_jitter(image[y0:y0 + ph, x0:x0 + pw], rng, jitter)
    inside = polygon_mask(ph, pw, rng) if polygon else np.ones((ph, pw), bool)
    out = np.array(image, np.float32, copy=True)
    region = out[y1:y1 + ph, x1:x1 + pw]
    region[inside] = patch[inside]
    mask = np.zeros((h, w), bool)
    mask[y1:y1 + ph, x1:x1 + pw] = inside
    return out, mask


def scar(image: np.ndarray, rng: np.random.Generator, width=(2, 16), height=(10, 25),
         max_angle: float = 45.0) -> tuple[np.ndarray, np.ndarray]:
    """Paste a thin rectangle of one random colour, rotated by up to `max_angle` degrees.

    Returns:
        (image, mask): the new float32 image and the bool (H, W) scar.
    """
    from skimage.transform import rotate

    h, w, c = image.shape
    sw, sh = int(rng.integers(width[0], width[1] + 1)), int(rng.integers(height[0], height[1] + 1))
    shape = rotate(np.ones((sh, sw)), rng.uniform(-max_angle, max_angle), resize=True, order=0) > 0.5
    shape = shape[:h, :w]
    ph, pw = shape.shape
    y, x = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    colour = rng.integers(10, 241, c).astype(np.float32) / 255.0
    out = np.array(image, np.float32, copy=True)
    out[y:y + ph, x:x + pw][shape] = colour
    mask = np.zeros((h, w), bool)
    mask[y:y + ph, x:x + pw] = shape
    return out, mask


def pretext_sample(image: np.ndarray, label: int, rng: np.random.Generator,
                   polygon_share: float = 0.5) -> np.ndarray:
    """One training sample of the 3-class pretext task.

    The whole image is first rotated by a random multiple of 90 degrees (every class, so the
    rotation says nothing about the label); then class 1 gets a CutPaste patch (a polygon one
    with probability `polygon_share`) and class 2 a scar.
    """
    image = np.rot90(image, int(rng.integers(4)), axes=(0, 1))
    if label == CUTPASTE:
        return cutpaste(image, rng, polygon=bool(rng.random() < polygon_share))[0]
    if label == SCAR:
        return scar(image, rng)[0]
    return np.ascontiguousarray(image, np.float32)
