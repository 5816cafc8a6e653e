"""A small demo dataset in MVTec AD layout, built offline from textures bundled with scikit-image.

``make_demo_dataset(root)`` writes::

    root/<texture>/train/good/000.png ...
    root/<texture>/test/good/000.png ...
    root/<texture>/test/{scratch,blob,patch}/000.png ...
    root/<texture>/ground_truth/{scratch,blob,patch}/000_mask.png ...
    root/<texture>/demo.json

Clean images imitate an inspection line, where a camera photographs the same product in the same
place: each is the same ``CROP`` x ``CROP`` panel of a 512x512 texture from ``skimage.data``
(at ``PANEL``), registered to within ``JITTER`` source pixels and lit within ``BRIGHTNESS``,
then resized to ``size`` x ``size``. (Random crops of the whole texture, turned and flipped, were
too varied for the demo's short training: a small CAE reconstructed them as a flat grey.)
Defects are synthetic and their masks are exact: the mask is computed first, and the defect
changes every masked pixel and no other pixel.  Every defect keeps at least
``BORDER`` pixels away from the image border.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from anomaly.errors import AnomalyError

#: Textures bundled with scikit-image (no download needed), all 512x512 uint8 grayscale.
TEXTURES = ("brick", "grass", "gravel")
#: Defect classes, each written to ``test/<defect>`` with masks in ``ground_truth/<defect>``.
DEFECTS = ("scratch", "blob", "patch")
#: Defects keep at least this many pixels between the mask and the image border.
BORDER = 4
#: Side of the square crop taken from the 512x512 source, in source pixels.
CROP = 128
#: Top-left corner of the panel every clean image shows, in source pixels.
PANEL = (192, 192)
#: Clean images are shifted by up to this many source pixels in each direction ...
JITTER = 3
#: ... and their brightness is scaled by a factor in [1 - BRIGHTNESS, 1 + BRIGHTNESS].
BRIGHTNESS = 0.1
#: Smallest mean intensity difference between a defect and the clean image around it.
MIN_CONTRAST = 60
#: The bumped version of demo.json; an older one is not reused.
FORMAT_VERSION = 3

_MIN_SIZE = 32
_MAX_SIZE = 1024
# which texture a "patch" defect is cut from: always a different one
_PATCH_SOURCE = {"brick": "gravel", "grass": "gravel", "gravel": "grass"}


# --------------------------------------------------------------------------- sources and crops


def _load_texture(name: str) -> np.ndarray:
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 3:  # not the case for the bundled textures, kept for safety
        image = np.rint(image[..., :3].astype(np.float64) @ [0.2125, 0.7154, 0.0721])
    return image.astype(np.uint8)


def _resize_u8(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape == (size, size):
        return image.astype(np.uint8, copy=True)
    from skimage.transform import resize

    out = resize(
        image.astype(np.float64),
        (size, size),
        order=1,
        mode="reflect",
        anti_aliasing=size < max(image.shape),
        preserve_range=True,
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _panel(source: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """The ``PANEL`` crop, shifted by up to ``JITTER`` pixels, brightness-scaled, resized."""
    r, c = (corner + int(rng.integers(-JITTER, JITTER + 1)) for corner in PANEL)
    crop = source[r : r + CROP, c : c + CROP].astype(np.float64) * float(rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS))
    return _resize_u8(np.clip(np.rint(crop), 0, 255).astype(np.uint8), size)


# --------------------------------------------------------------------------- defects


def _inner(size: int) -> np.ndarray:
    inner = np.zeros((size, size), dtype=bool)
    inner[BORDER : size - BORDER, BORDER : size - BORDER] = True
    return inner


def local_ring(mask: np.ndarray, width: int = 5) -> np.ndarray:
    """The pixels within ``width`` pixels of ``mask`` (4-connected steps) but not in it."""
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, iterations=width) & ~mask


def _local_mean(clean: np.ndarray, mask: np.ndarray) -> float:
    """Mean of the clean image on the ring around the defect: what the defect must stand out from."""
    ring = local_ring(mask)
    return float(clean[ring].mean()) if ring.any() else float(clean.mean())


def _target_level(local_mean: float, rng: np.random.Generator) -> float:
    """A grey level 80..100 above or below ``local_mean`` (a side with room for it)."""
    delta = float(rng.uniform(80, 100))
    sides = [s for s in (1.0, -1.0) if 0 <= local_mean + s * (delta + 15) <= 255]
    if not sides:  # cannot happen for delta + 15 <= 127, kept for safety
        sides = [1.0 if local_mean < 127.5 else -1.0]
    side = sides[int(rng.integers(0, len(sides)))]
    return local_mean + side * delta


def _scratch_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    from skimage.draw import bezier_curve

    width = int(rng.integers(2, 5))  # 2..4 px
    length = float(rng.uniform(0.2, 0.6)) * size
    angle = float(rng.uniform(0, np.pi))
    bend = float(rng.uniform(-0.15, 0.15)) * length
    direction = np.array([np.sin(angle), np.cos(angle)])
    normal = np.array([-direction[1], direction[0]])
    # control points relative to the centre: two ends and a bend point
    rel = np.stack([-direction * length / 2, normal * 2 * bend, direction * length / 2])
    lo = BORDER + width + 1
    hi = size - 1 - BORDER - width - 1
    c_lo = lo - rel.min(axis=0)
    c_hi = hi - rel.max(axis=0)
    c_hi = np.maximum(c_hi, c_lo)
    centre = rng.uniform(c_lo, c_hi)
    pts = np.rint(rel + centre).astype(int)
    rr, cc = bezier_curve(pts[0, 0], pts[0, 1], pts[1, 0], pts[1, 1], pts[2, 0], pts[2, 1], 1.0, shape=(size, size))
    mask = np.zeros((size, size), dtype=bool)
    off = width // 2
    for dr in range(width):
        for dc in range(width):
            r = np.clip(rr - off + dr, 0, size - 1)
            c = np.clip(cc - off + dc, 0, size - 1)
            mask[r, c] = True
    return mask


def _blob_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    from skimage.draw import ellipse

    r_rad = float(rng.uniform(0.04, 0.12)) * size
    c_rad = float(rng.uniform(0.04, 0.12)) * size
    rotation = float(rng.uniform(-np.pi, np.pi))
    reach = max(r_rad, c_rad) + 1
    lo, hi = BORDER + reach, size - 1 - BORDER - reach
    r, c = rng.uniform(lo, hi, size=2)
    rr, cc = ellipse(r, c, r_rad, c_rad, shape=(size, size), rotation=rotation)
    mask = np.zeros((size, size), dtype=bool)
    mask[rr, cc] = True
    return mask


def _patch_box(size: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    h = max(2, int(round(float(rng.uniform(0.10, 0.25)) * size)))
    w = max(2, int(round(float(rng.uniform(0.10, 0.25)) * size)))
    r = int(rng.integers(BORDER, size - BORDER - h + 1))
    c = int(rng.integers(BORDER, size - BORDER - w + 1))
    return r, c, h, w


def _finish(clean: np.ndarray, mask: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Write ``values`` (float, full-size) into ``clean`` on ``mask`` only, changing every masked pixel."""
    new = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    same = mask & (new == clean)
    # a masked pixel that happens to keep its value is nudged by one level, so the mask is exact
    new[same] = np.where(clean[same] < 255, clean[same] + 1, clean[same] - 1).astype(np.uint8)
    out = clean.copy()
    out[mask] = new[mask]
    return out, mask


def apply_defect(
    clean: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    patch_source: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Add one synthetic defect of ``kind`` to the uint8 image ``clean``.

    Returns ``(image, mask)``: ``mask`` is a bool array, True exactly where ``image`` differs
    from ``clean``, and it is empty within ``BORDER`` pixels of the border.  The defect's mean
    differs from the clean image's mean on ``local_ring(mask)`` by at least ``MIN_CONTRAST``
    grey levels (by design 80..100, a little less where clipping at 0/255 bites).  ``patch_source``
    (a uint8 grayscale image at least as large as the patch) is needed for ``kind="patch"``.
    """
    clean = np.asarray(clean, dtype=np.uint8)
    size = clean.shape[0]
    if clean.ndim != 2 or clean.shape[1] != size:
        raise ValueError(f"expected a square 2-D image, got shape {clean.shape}")
    inner = _inner(size)
    if kind == "scratch":
        mask = _scratch_mask(size, rng) & inner
        level = _target_level(_local_mean(clean, mask), rng)
        noise = rng.normal(0.0, 4.0, size=clean.shape)
        return _finish(clean, mask, level + noise)
    if kind == "blob":
        from scipy.ndimage import gaussian_filter

        mask = _blob_mask(size, rng) & inner
        level = _target_level(_local_mean(clean, mask), rng)
        noise = gaussian_filter(rng.normal(0.0, 10.0, size=clean.shape), sigma=1.5) * 2.0
        return _finish(clean, mask, level + noise)
    if kind == "patch":
        if patch_source is None:
            raise ValueError("kind='patch' needs patch_source")
        r, c, h, w = _patch_box(size, rng)
        mask = np.zeros_like(inner)
        mask[r : r + h, c : c + w] = True
        mask &= inner
        src = np.asarray(patch_source, dtype=np.float64)
        sr = int(rng.integers(0, src.shape[0] - h + 1))
        sc = int(rng.integers(0, src.shape[1] - w + 1))
        piece = src[sr : sr + h, sc : sc + w]
        # keep the foreign texture's structure, but at a clearly different mean level
        std = piece.std()
        piece = (piece - piece.mean()) * (min(std, 25.0) / std if std > 0 else 0.0)
        level = _target_level(_local_mean(clean, mask), rng)
        values = np.zeros(clean.shape, dtype=np.float64)
        values[r : r + h, c : c + w] = level + piece
        return _finish(clean, mask, values)
    raise ValueError(f"unknown defect kind {kind!r}; expected one of {', '.join(DEFECTS)}")


# --------------------------------------------------------------------------- writing


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(path, format="PNG")


def _params(texture: str, n_train: int, n_test_good: int, n_test_defect: int, size: int, seed: int) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "texture": texture,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_defect": n_test_defect,
        "size": size,
        "seed": seed,
        "defects": list(DEFECTS),
    }


def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise AnomalyError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise AnomalyError(f"{name} must be {bound}, got {value}")
    return value


def _is_complete(folder: Path, params: dict) -> bool:
    """True when ``folder`` holds a demo.json equal to ``params`` and the files it promises."""
    try:
        stored = json.loads((folder / "demo.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if stored != params:
        return False
    counts = [(folder / "train" / "good", params["n_train"]), (folder / "test" / "good", params["n_test_good"])]
    for d in DEFECTS:
        counts.append((folder / "test" / d, params["n_test_defect"]))
        counts.append((folder / "ground_truth" / d, params["n_test_defect"]))
    for sub, n in counts:
        if not sub.is_dir() or sum(1 for p in sub.iterdir() if p.suffix == ".png") != n:
            return False
    return True


def _fresh_sibling(root: Path, prefix: str) -> Path:
    """A new empty folder in ``root`` (made with mkdir, so it gets the usual umask permissions)."""
    while True:
        path = root / f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def _build(folder: Path, params: dict) -> None:
    texture, size = params["texture"], params["size"]
    n_train, n_good, n_defect = params["n_train"], params["n_test_good"], params["n_test_defect"]
    rng = np.random.default_rng(params["seed"])
    source = _load_texture(texture)
    width = max(3, len(str(max(n_train, n_good, n_defect, 1) - 1)))

    # the foreign texture for "patch", at the same scale as the crops
    other = _load_texture(_PATCH_SOURCE[texture])
    scale = size / CROP
    if scale != 1.0:
        other = _resize_u8(other, int(round(other.shape[0] * scale)))

    train_dir = folder / "train" / "good"
    train_dir.mkdir(parents=True)
    for i in range(n_train):
        _save_png(train_dir / f"{i:0{width}d}.png", _panel(source, rng, size))

    good_dir = folder / "test" / "good"
    good_dir.mkdir(parents=True)
    for i in range(n_good):
        _save_png(good_dir / f"{i:0{width}d}.png", _panel(source, rng, size))

    for kind in DEFECTS:
        img_dir = folder / "test" / kind
        gt_dir = folder / "ground_truth" / kind
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        for i in range(n_defect):
            clean = _panel(source, rng, size)
            image, mask = apply_defect(clean, kind, rng, patch_source=other)
            _save_png(img_dir / f"{i:0{width}d}.png", image)
            _save_png(gt_dir / f"{i:0{width}d}_mask.png", mask.astype(np.uint8) * 255)

    (folder / "demo.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def make_demo_dataset(
    root,
    texture: str = "brick",
    n_train: int = 60,
    n_test_good: int = 12,
    n_test_defect: int = 8,
    size: int = 128,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a small MVTec-AD-style dataset to ``root/<texture>`` and return that folder.

    ``texture`` is one of :data:`TEXTURES` (bundled with scikit-image, no download).  Writes
    ``n_train`` defect-free training images, ``n_test_good`` defect-free test images and
    ``n_test_defect`` test images per defect class in :data:`DEFECTS`, each with an exact
    0/255 mask, all ``size`` x ``size`` 8-bit grayscale PNGs.  The output depends only on the
    parameters (``seed`` drives ``numpy.random.default_rng``): two runs give identical bytes.

    If ``root/<texture>`` already holds a dataset written with the same parameters (recorded in
    its ``demo.json``) it is returned untouched.  If it holds anything else,
    :class:`~anomaly.errors.AnomalyError` is raised.  With ``overwrite`` true the folder is
    always rebuilt and replaced.  The dataset is built in
    a temporary sibling folder and renamed into place, so an interrupted run leaves nothing
    half-written.
    """
    if texture not in TEXTURES:
        raise AnomalyError(f"unknown demo texture {texture!r}; choose one of: {', '.join(TEXTURES)}")
    n_train = _check_int("n_train", n_train, 1)
    n_test_good = _check_int("n_test_good", n_test_good, 0)
    n_test_defect = _check_int("n_test_defect", n_test_defect, 0)
    size = _check_int("size", size, _MIN_SIZE, _MAX_SIZE)
    seed = _check_int("seed", seed, 0)
    params = _params(texture, n_train, n_test_good, n_test_defect, size, seed)

    root = Path(root)
    if root.exists() and not root.is_dir():
        raise AnomalyError(f"demo root {root} exists and is not a folder")
    target = root / texture
    if target.exists() and not target.is_dir():
        if not overwrite:
            raise AnomalyError(f"{target} exists and is not a folder; use overwrite to replace it")
    elif target.is_dir() and any(target.iterdir()):
        if not overwrite:
            if _is_complete(target, params):
                return target
            raise AnomalyError(
                f"{target} already exists and is not this demo dataset; use overwrite to replace it"
            )

    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = _fresh_sibling(root, f".{texture}.tmp-")
    except OSError as exc:
        raise AnomalyError(f"cannot write the demo dataset in {root}: {exc.strerror or exc}") from exc
    old = None
    try:
        _build(tmp, params)
        if target.exists() or target.is_symlink():
            if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
                target.rmdir()
            else:
                old = _fresh_sibling(root, f".{texture}.old-")
                os.replace(target, old / texture)
        os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not target.exists() and (old / texture).exists():
            os.replace(old / texture, target)  # put the previous dataset back
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        if isinstance(exc, OSError):
            raise AnomalyError(f"cannot write the demo dataset to {target}: {exc.strerror or exc}") from exc
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
