"""Finding the images of a dataset folder in MVTec AD layout.

    <root>/train/good/*.<ext>
    <root>/test/<good|defect type>/*.<ext>
    <root>/ground_truth/<defect type>/<stem>_mask.<ext>      (optional)

Without `ground_truth/` the test set is still usable for image-level metrics.

Or the layout most users have (as anomalib's `Folder`): one folder of good images, one of
defective images and, optionally, one of masks named after the defective images:

    <root>/<normal_dir>/*.<ext>      a seeded share becomes test/good, the rest train/good
    <root>/<abnormal_dir>/*.<ext>    test/<abnormal_dir>
    <root>/<mask_dir>/<stem>[_mask].<ext>
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anomaly.data.io import IMAGE_EXTENSIONS, is_image_file
from anomaly.errors import AnomalyError, AnomalyWarning

GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    Attributes:
        path: the image file.
        relpath: path relative to the dataset root, with forward slashes (e.g. "test/crack/000.png").
        label: 0 for a defect-free image, 1 for a defective one.
        defect_type: "good" or the name of the defect folder.
        mask_path: the ground-truth mask of a defective image, if the dataset has masks.
    """

    path: Path
    relpath: str
    label: int
    defect_type: str
    mask_path: Path | None = None


@dataclass
class Dataset:
    """The images of one category folder."""

    root: Path
    train: list[Sample]
    test: list[Sample] = field(default_factory=list)
    has_masks: bool = False

    @property
    def name(self) -> str:
        """"<parent>/<category>", e.g. "mvtec_ad/bottle", used to place model directories."""
        return f"{self.root.parent.name or 'data'}/{self.root.name}"

    def require_test(self) -> list[Sample]:
        """The test images, or a clear error when the dataset has none."""
        if not self.test:
            raise AnomalyError(f"{self.root / 'test'}: no test images (expected test/<good|defect type>/*.png)")
        return self.test


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def _relpath(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def find_dataset(root: str | Path) -> Dataset:
    """Index a dataset folder and check its layout.

    Args:
        root: the category folder (the one holding `train/`).

    Returns:
        A Dataset with sorted train and test samples.

    Raises:
        AnomalyError: the folder is missing or empty, has no images in `train/good`, or a
            mask has no image (or a defective image no mask) when `ground_truth/` exists.
    """
    # Absolute and normalised, so that the dataset's name (which places the model directory) is
    # never ".." or "."; symlinked folders keep the name the user gave them.
    root = Path(os.path.abspath(Path(root).expanduser()))
    if not root.exists():
        raise AnomalyError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise AnomalyError(f"{root}: expected a dataset folder, got a file")
    if not any(root.iterdir()):
        raise AnomalyError(f"{root}: dataset folder is empty (expected train/good/ and test/)")
    good_dir = root / "train" / GOOD
    if not good_dir.is_dir():
        raise AnomalyError(f"{root}: no train/good folder (expected MVTec layout: train/good/*.png)")
    train = [Sample(p, _relpath(p, root), 0, GOOD) for p in _images_in(good_dir)]
    if not train:
        raise AnomalyError(f"{good_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")

    gt_dir = root / "ground_truth"
    has_masks = gt_dir.is_dir()
    masks: dict[tuple[str, str], Path] = {}
    if has_masks:
        for defect_dir in sorted(d for d in gt_dir.iterdir() if d.is_dir()):
            for mask in _images_in(defect_dir):
                stem = mask.stem[:-5] if mask.stem.endswith("_mask") else mask.stem
                masks[(defect_dir.name, stem)] = mask

    test: list[Sample] = []
    test_dir = root / "test"
    if test_dir.is_dir():
        for class_dir in sorted(d for d in test_dir.iterdir() if d.is_dir()):
            defect = class_dir.name
            label = 0 if defect == GOOD else 1
            for image in _images_in(class_dir):
                mask = masks.pop((defect, image.stem), None)
                if label == 0 and mask is not None:
                    warnings.warn(f"{mask}: ignored: a defect-free image's pixels are all good, whatever its mask says",
                                  AnomalyWarning, stacklevel=2)
                    mask = None
                if has_masks and label == 1 and mask is None:
                    raise AnomalyError(f"{image}: defective image has no mask "
                                       f"(expected ground_truth/{defect}/{image.stem}_mask.png)")
                test.append(Sample(image, _relpath(image, root), label, defect, mask))
    if masks:
        (defect, stem), mask = sorted(masks.items())[0]
        raise AnomalyError(f"{mask}: mask has no image (expected test/{defect}/{stem}.<ext>)")
    return Dataset(root=root, train=train, test=test, has_masks=has_masks)


def validation_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split defect-free training images into (train, validation), seeded and reproducible.

    The original toolkit took the first 10 % of sorted names, which puts a biased block
    (often one acquisition session) into validation; a seeded permutation does not.

    Returns:
        (train, validation), each in sorted order; validation holds round(fraction * N) images,
        at least one while at least two images exist.
    """
    n = len(samples)
    n_val = min(max(int(round(fraction * n)), 1 if fraction > 0 else 0), n - 1) if n > 1 else 0
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:n_val].tolist())
    train = [s for i, s in enumerate(samples) if i not in val_idx]
    val = [s for i, s in enumerate(samples) if i in val_idx]
    return train, val


def finetune_split(samples: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """Pick a seeded subset of test images, stratified by defect type, for finetuning.

    Every defect type keeps its share; the subset holds ceil(fraction * N) images like
    scikit-learn's train_test_split with a float test_size, and at least one good and one
    defective image whenever both exist.

    Returns:
        The chosen samples in dataset order.
    """
    if not samples or fraction <= 0:
        return []
    from sklearn.model_selection import train_test_split

    n_pick = max(math.ceil(fraction * len(samples)), 2)
    strata = [s.defect_type for s in samples]
    index = np.arange(len(samples))
    try:
        _, picked = train_test_split(index, test_size=n_pick, random_state=seed, stratify=strata)
    except ValueError:
        # Too few images in some defect type to stratify by it: stratify by good/defective.
        labels = [s.label for s in samples]
        stratify = labels if min(labels.count(0), labels.count(1)) >= 2 else None
        _, picked = train_test_split(index, test_size=n_pick, random_state=seed, stratify=stratify)
    picked = set(int(i) for i in picked)
    # Stratifying a small subset can round a rare class down to zero; a pair cannot be
    # chosen without both classes, so swap one image of the larger class for a missing one.
    rng = np.random.default_rng(seed)
    for label in (0, 1):
        have = [i for i in picked if samples[i].label == label]
        pool = [i for i, s in enumerate(samples) if s.label == label and i not in picked]
        if not have and pool:
            donors = sorted(i for i in picked if samples[i].label != label)
            picked.discard(donors[int(rng.integers(len(donors)))])
            picked.add(pool[int(rng.integers(len(pool)))])
    return [s for i, s in enumerate(samples) if i in picked]


def find_folder_dataset(root: str | Path, normal_dir: str, abnormal_dir: str | None = None,
                        mask_dir: str | None = None, normal_test_split: float = 0.2, seed: int = 0) -> Dataset:
    """Index a folder of good images and one of defective images (anomalib's `Folder` layout).

    Args:
        root: the folder holding the others (they may also be absolute paths).
        normal_dir: the defect-free images.
        abnormal_dir: the defective images (none: no test set but the held-out good images).
        mask_dir: masks of the defective images, named `<stem>.<ext>` or `<stem>_mask.<ext>`.
        normal_test_split: the share of the good images held out (seeded) as test/good.
        seed: seeds that split.

    Returns:
        A Dataset whose sample paths are relative to `root`.

    Raises:
        AnomalyError: a folder is missing or empty, or a defective image has no mask.
    """
    root = Path(os.path.abspath(Path(root).expanduser()))

    def folder(name: str, option: str) -> Path:
        path = root / name
        if not path.is_dir():
            raise AnomalyError(f"{path}: folder does not exist", option)
        if not path.resolve().is_relative_to(root.resolve()):
            raise AnomalyError(f"{path}: expected a folder inside {root}", option)
        return path

    if not 0 <= normal_test_split < 1:
        raise AnomalyError(f"expected a fraction in [0, 1), got {normal_test_split}", "normal_test_split")
    normal = _images_in(folder(normal_dir, "normal_dir"))
    if not normal:
        raise AnomalyError(f"{root / normal_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})", "normal_dir")
    n_test = int(round(normal_test_split * len(normal)))
    held = set(np.random.default_rng(seed).permutation(len(normal))[:n_test].tolist())
    train = [Sample(p, _relpath(p, root), 0, GOOD) for i, p in enumerate(normal) if i not in held]
    test = [Sample(p, _relpath(p, root), 0, GOOD) for i, p in enumerate(normal) if i in held]
    masks: dict[str, Path] = {}
    if mask_dir:
        for mask in _images_in(folder(mask_dir, "mask_dir")):
            masks[mask.stem[:-5] if mask.stem.endswith("_mask") else mask.stem] = mask
    if abnormal_dir:
        defect = Path(abnormal_dir).name
        for image in _images_in(folder(abnormal_dir, "abnormal_dir")):
            mask = masks.get(image.stem)
            if mask_dir and mask is None:
                raise AnomalyError(f"{image}: defective image has no mask (expected {root / mask_dir}/"
                                   f"{image.stem}_mask.png or {image.stem}.png)", "mask_dir")
            test.append(Sample(image, _relpath(image, root), 1, defect, mask))
    return Dataset(root=root, train=train, test=test, has_masks=bool(mask_dir))


def load_dataset(root: str | Path, normal_dir: str = "", abnormal_dir: str = "", mask_dir: str = "",
                 normal_test_split: float = 0.2, seed: int = 0) -> Dataset:
    """A dataset folder: MVTec layout, or the folder layout when `normal_dir` is given.

    Args:
        root: the category folder (MVTec) or the folder holding the others (folder layout).
        normal_dir, abnormal_dir, mask_dir, normal_test_split, seed: the folder layout
            (`find_folder_dataset`); empty `normal_dir` for MVTec layout.

    Returns:
        The Dataset.
    """
    if normal_dir:
        return find_folder_dataset(root, normal_dir, abnormal_dir or None, mask_dir or None, normal_test_split, seed)
    return find_dataset(root)


# A benchmark root holds categories up to this many folder levels down (e.g. data/mvtec_ad/bottle).
MAX_DEPTH = 2


def _is_category(folder: Path) -> bool:
    return (folder / "train" / "good").is_dir()


def find_categories(path: str | Path) -> list[Path]:
    """The dataset categories (folders holding train/good) in a folder.

    Args:
        path: a category folder itself, or a root holding categories in sub-folders up to
            two levels deep (e.g. `data/` holding `mvtec_ad/bottle/`).

    Returns:
        `[path]` when `path` is a category; otherwise the categories below it, sorted (a
        category's own sub-folders are not searched).

    Raises:
        AnomalyError: the path does not exist, is not a folder, or holds no category.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise AnomalyError(f"{path}: dataset folder does not exist")
    if not path.is_dir():
        raise AnomalyError(f"{path}: expected a dataset folder, got a file")
    if _is_category(path):
        return [path]
    found: list[Path] = []
    level = [path]
    for _ in range(MAX_DEPTH):
        below = []
        for folder in level:
            # Hidden folders are temporary or tool folders (.tmp-*, .git), never categories.
            for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                (found if _is_category(sub) else below).append(sub)
        level = below
    if not found:
        raise AnomalyError(f"{path}: no dataset category found (expected train/good in it or in "
                           f"sub-folders up to {MAX_DEPTH} levels deep)")
    return sorted(found)
