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

from dataclasses import dataclass

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


# ---------------------------------------------------------------- validation defects
#
# Defects made on held-out defect-free images, to choose a threshold and a detector without a
# real defect (`anomaly-finetune --mode synthetic`). Besides CutPaste's kinds, they imitate what
# inspection finds on real parts: a missing or displaced piece, a blob or hole, a thin crack, a
# local change of texture. Sizes are shares of the image's shorter side, so a 64 px test image
# and a 1024 px photograph get defects of the same relative size. Each mask is exactly the
# pixels that changed.

DEFECT_KINDS = ("cutpaste", "cutpaste-polygon", "scar", "displaced", "blob", "crack", "texture")
_VISIBLE = 4 / 255  # a pixel counts as changed when some channel moved by more than this


def _changed(before: np.ndarray, after: np.ndarray, region: np.ndarray) -> np.ndarray:
    return region & (np.abs(after - before).max(axis=-1) > _VISIBLE)


def displaced(image: np.ndarray, rng: np.random.Generator, area_ratio=(0.01, 0.06)) -> tuple[np.ndarray, np.ndarray]:
    """A missing or misplaced piece: a region (a box, or a polygon in it) replaced by another place
    of the same image, or filled smoothly (the image blurred over twice the region's size).

    Returns:
        (image, mask): the new float32 image and the bool (H, W) pixels that changed.
    """
    from scipy import ndimage

    h, w = image.shape[:2]
    ph, pw = _box(h, w, rng, area_ratio, ((0.5, 2.0),))
    y, x = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    inside = polygon_mask(ph, pw, rng) if rng.random() < 0.5 else np.ones((ph, pw), bool)
    if rng.random() < 0.5:
        y0, x0 = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
        fill = image[y0:y0 + ph, x0:x0 + pw]
    else:
        sigma = (max(ph, pw), max(ph, pw), 0)
        fill = ndimage.gaussian_filter(image, sigma, mode="reflect")[y:y + ph, x:x + pw]
    out = np.array(image, np.float32, copy=True)
    out[y:y + ph, x:x + pw][inside] = fill[inside]
    region = np.zeros((h, w), bool)
    region[y:y + ph, x:x + pw] = inside
    return out, _changed(image, out, region)


def blob(image: np.ndarray, rng: np.random.Generator, radius=(0.015, 0.05)) -> tuple[np.ndarray, np.ndarray]:
    """A dark spot or hole, or a bright one: a soft-edged ellipse blended towards a dark or bright grey.

    Returns:
        (image, mask): the new float32 image and the bool (H, W) pixels that changed.
    """
    h, w, c = image.shape
    side = min(h, w)
    ry, rx = (max(rng.uniform(*radius) * side, 1.5) for _ in range(2))
    cy, cx = rng.uniform(ry, h - ry), rng.uniform(rx, w - rx)
    yy, xx = np.mgrid[:h, :w]
    distance = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    alpha = np.clip(1.5 - distance, 0.0, 1.0)[..., None].astype(np.float32)  # 1 inside, fading over half a radius
    target = rng.uniform(0.02, 0.25) if rng.random() < 0.5 else rng.uniform(0.75, 0.98)
    out = (image * (1 - alpha) + np.float32(target) * alpha).astype(np.float32)
    return out, _changed(image, out, alpha[..., 0] > 0)


def crack(image: np.ndarray, rng: np.random.Generator, length=(0.15, 0.4)) -> tuple[np.ndarray, np.ndarray]:
    """A thin crack: a wandering line 1-2 px wide, darker than its surroundings (lighter on dark parts).

    Returns:
        (image, mask): the new float32 image and the bool (H, W) line.
    """
    from scipy import ndimage
    from skimage.draw import line

    h, w = image.shape[:2]
    side = min(h, w)
    steps = 8
    step = rng.uniform(*length) * side / steps
    y, x = rng.uniform(0.2 * h, 0.8 * h), rng.uniform(0.2 * w, 0.8 * w)
    angle = rng.uniform(0, 2 * np.pi)
    path = np.zeros((h, w), bool)
    for _ in range(steps):
        angle += rng.normal(0, 0.35)
        ny, nx = np.clip(y + step * np.sin(angle), 0, h - 1), np.clip(x + step * np.cos(angle), 0, w - 1)
        rr, cc = line(int(round(y)), int(round(x)), int(round(ny)), int(round(nx)))
        path[rr, cc] = True
        y, x = ny, nx
    if rng.random() < 0.5:
        path = ndimage.binary_dilation(path)
    out = np.array(image, np.float32, copy=True)
    level = float(image[path].mean()) if path.any() else 0.5
    factor = rng.uniform(0.15, 0.5)
    out[path] = image[path] * factor if level > 0.35 else 1 - (1 - image[path]) * factor
    return out, _changed(image, out, path)


def texture(image: np.ndarray, rng: np.random.Generator, area_ratio=(0.02, 0.08)) -> tuple[np.ndarray, np.ndarray]:
    """A local change of texture, as DRAEM makes them: a smooth-noise blob (value noise of 4-16 cells
    per side, thresholded to 2-8 % of the image) inside which another texture is blended in, the
    image itself turned, flipped and colour-jittered.

    Returns:
        (image, mask): the new float32 image and the bool (H, W) pixels that changed.
    """
    from scipy import ndimage

    h, w = image.shape[:2]
    cells = int(2 ** rng.integers(2, 5))
    noise = ndimage.zoom(rng.random((cells, cells)), (h / cells, w / cells), order=3, mode="reflect")[:h, :w]
    region = noise > np.quantile(noise, 1 - rng.uniform(*area_ratio))
    turns = int(rng.integers(1, 4)) if h == w else 2  # a quarter turn would not fit a non-square image
    other = np.rot90(image, turns, axes=(0, 1))
    other = other[::-1] if rng.random() < 0.5 else other
    other = colour_jitter(np.ascontiguousarray(other), rng, 0.4)
    beta = np.float32(rng.uniform(0.5, 1.0))
    out = np.array(image, np.float32, copy=True)
    out[region] = (1 - beta) * image[region] + beta * other[region]
    return out, _changed(image, out, region)


def make_defect(image: np.ndarray, kind: str, rng: np.random.Generator,
                tries: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One defect of `kind` (`DEFECT_KINDS`) on an (H, W, C) image in [0, 1].

    A defect that changed almost nothing (a piece moved onto a plain background that looks the
    same) is made again, up to `tries` times: it would only teach that defects are invisible.

    Returns:
        (image, mask): float32 (H, W, C) and the bool (H, W) pixels that changed.
    """
    makers = {"cutpaste": cutpaste, "cutpaste-polygon": lambda x, r: cutpaste(x, r, polygon=True), "scar": scar,
              "displaced": displaced, "blob": blob, "crack": crack, "texture": texture}
    if kind not in makers:
        raise ValueError(f"unknown defect kind {kind!r}: expected one of {', '.join(DEFECT_KINDS)}")
    least = max(4, int(0.0005 * image.shape[0] * image.shape[1]))
    for _ in range(tries):
        out, mask = makers[kind](image, rng)
        mask = _changed(image, out, mask)
        if mask.sum() >= least:
            break
    return out, mask


def synthetic_defects(images, seed: int, kinds: tuple[str, ...] = DEFECT_KINDS, copies: int = 1):
    """Seeded synthetic defects on copies of images, the kinds taken in turn.

    Args:
        images: (N, H, W, C) float images in [0, 1] (or an `anomaly.data.io.ImageFiles`).
        seed: defect j gets `numpy.random.default_rng([seed, j])`, so any one can be remade alone.
        kinds: the kinds of defect (`DEFECT_KINDS`).
        copies: defects per image; defect j is made on image j % N, of kind kinds[j % len(kinds)]
            (so the kinds' counts differ by one at most).

    Returns:
        (images, masks, kinds): float32 (N * copies, H, W, C), bool (N * copies, H, W) and the
        kind of each.
    """
    n = len(images)
    out, masks, names = [], [], []
    for j in range(n * copies):
        kind = kinds[j % len(kinds)]
        image, mask = make_defect(np.asarray(images[j % n], np.float32), kind, np.random.default_rng([seed, j]))
        out.append(image)
        masks.append(mask)
        names.append(kind)
    return np.stack(out), np.stack(masks), names


@dataclass
class SyntheticDefects:
    """Synthetic defects on validation images (`validation_defects`).

    Attributes:
        images: float32 (N, H, W, C) images with one defect each.
        masks: bool (N, H, W) the pixels each defect changed.
        kinds: the kind of each defect.
        copies: defects made on each validation image.
    """

    images: np.ndarray
    masks: np.ndarray
    kinds: list[str]
    copies: int


def validation_defects(images, seed: int, least_per_kind: int = 5, most_copies: int = 4) -> SyntheticDefects:
    """`synthetic_defects` of every kind on defect-free validation images, with enough copies that
    each kind has at least `least_per_kind` examples (up to `most_copies` per image)."""
    n = len(images)
    copies = int(np.clip(-(-least_per_kind * len(DEFECT_KINDS) // max(n, 1)), 1, most_copies))
    out, masks, kinds = synthetic_defects(images, seed, DEFECT_KINDS, copies)
    return SyntheticDefects(out, masks, kinds, copies)
