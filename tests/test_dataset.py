"""Tests for anomaly.data.dataset: indexing MVTec-layout folders and seeded splits."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly.data.dataset import Sample, find_dataset, finetune_split, validation_split
from anomaly.errors import AnomalyError


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png_bytes()


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PNG)
    return path


def make_tree(root: Path, n_train: int = 3, test: dict[str, int] | None = None,
              masks: bool = True) -> Path:
    """An MVTec-layout category folder with tiny PNGs."""
    test = {"good": 2, "crack": 2, "hole": 1} if test is None else test
    for i in range(n_train):
        touch(root / "train" / "good" / f"{i:03d}.png")
    for defect, n in test.items():
        for i in range(n):
            touch(root / "test" / defect / f"{i:03d}.png")
            if masks and defect != "good":
                touch(root / "ground_truth" / defect / f"{i:03d}_mask.png")
    return root


def assert_one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> None:
    msg = str(exc.value)
    assert str(path) in msg
    assert "\n" not in msg


# --------------------------------------------------------------------------- find_dataset


def test_find_dataset_indexes_train_and_test(tmp_path):
    root = make_tree(tmp_path / "mvtec" / "bottle")
    ds = find_dataset(root)
    assert ds.root == root
    assert ds.name == "mvtec/bottle"
    assert ds.has_masks
    assert [s.relpath for s in ds.train] == ["train/good/000.png", "train/good/001.png", "train/good/002.png"]
    assert all(s.label == 0 and s.defect_type == "good" and s.mask_path is None for s in ds.train)
    assert [s.relpath for s in ds.test] == [
        "test/crack/000.png", "test/crack/001.png", "test/good/000.png", "test/good/001.png",
        "test/hole/000.png"]
    assert [s.label for s in ds.test] == [1, 1, 0, 0, 1]
    assert [s.defect_type for s in ds.test] == ["crack", "crack", "good", "good", "hole"]
    for s in ds.test:
        assert s.path == root / s.relpath
        assert s.path.is_file()


def test_find_dataset_pairs_masks_by_stem(tmp_path):
    root = make_tree(tmp_path / "cat")
    ds = find_dataset(root)
    by_rel = {s.relpath: s for s in ds.test}
    assert by_rel["test/crack/001.png"].mask_path == root / "ground_truth" / "crack" / "001_mask.png"
    assert by_rel["test/hole/000.png"].mask_path == root / "ground_truth" / "hole" / "000_mask.png"
    assert by_rel["test/good/000.png"].mask_path is None


def test_find_dataset_without_ground_truth(tmp_path):
    root = make_tree(tmp_path / "cat", masks=False)
    ds = find_dataset(root)
    assert not ds.has_masks
    assert len(ds.test) == 5
    assert all(s.mask_path is None for s in ds.test)
    assert sum(s.label for s in ds.test) == 3


def test_find_dataset_without_test_folder(tmp_path):
    root = make_tree(tmp_path / "cat", test={})
    ds = find_dataset(root)
    assert len(ds.train) == 3 and ds.test == []
    with pytest.raises(AnomalyError) as exc:
        ds.require_test()
    assert_one_line_naming(exc, root / "test")


def test_find_dataset_ignores_non_images_and_hidden_files(tmp_path):
    root = make_tree(tmp_path / "cat")
    (root / "train" / "good" / "notes.txt").write_text("x")
    touch(root / "train" / "good" / ".hidden.png")
    (root / "train" / "good" / "sub").mkdir()
    touch(root / "train" / "good" / "UPPER.PNG")
    ds = find_dataset(root)
    assert [s.path.name for s in ds.train] == ["000.png", "001.png", "002.png", "UPPER.PNG"]


def test_find_dataset_accepts_str_path(tmp_path):
    root = make_tree(tmp_path / "cat")
    assert len(find_dataset(str(root)).train) == 3


def test_missing_folder(tmp_path):
    with pytest.raises(AnomalyError) as exc:
        find_dataset(tmp_path / "nope")
    assert_one_line_naming(exc, tmp_path / "nope")


def test_file_instead_of_folder(tmp_path):
    f = tmp_path / "file.png"
    touch(f)
    with pytest.raises(AnomalyError) as exc:
        find_dataset(f)
    assert_one_line_naming(exc, f)


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnomalyError) as exc:
        find_dataset(tmp_path / "empty")
    assert_one_line_naming(exc, tmp_path / "empty")


def test_no_train_good(tmp_path):
    root = tmp_path / "cat"
    touch(root / "test" / "good" / "000.png")
    (root / "train" / "bad").mkdir(parents=True)
    with pytest.raises(AnomalyError) as exc:
        find_dataset(root)
    assert_one_line_naming(exc, root)
    assert "train/good" in str(exc.value)


def test_train_good_without_images(tmp_path):
    root = tmp_path / "cat"
    good = root / "train" / "good"
    good.mkdir(parents=True)
    (good / "readme.txt").write_text("no images here")
    with pytest.raises(AnomalyError) as exc:
        find_dataset(root)
    assert_one_line_naming(exc, good)


def test_defect_image_without_mask(tmp_path):
    root = make_tree(tmp_path / "cat")
    (root / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(AnomalyError) as exc:
        find_dataset(root)
    assert_one_line_naming(exc, root / "test" / "crack" / "001.png")


def test_mask_without_image(tmp_path):
    root = make_tree(tmp_path / "cat")
    orphan = touch(root / "ground_truth" / "hole" / "007_mask.png")
    with pytest.raises(AnomalyError) as exc:
        find_dataset(root)
    assert_one_line_naming(exc, orphan)


# --------------------------------------------------------------------------- validation_split


def samples(n: int, folder: str = "train/good") -> list[Sample]:
    return [Sample(Path(f"/d/{folder}/{i:03d}.png"), f"{folder}/{i:03d}.png", 0, "good") for i in range(n)]


def test_validation_split_is_seeded():
    s = samples(40)
    assert validation_split(s, 0.1, 7) == validation_split(s, 0.1, 7)
    assert validation_split(s, 0.1, 7)[1] != validation_split(s, 0.1, 8)[1]


def test_validation_split_is_not_the_first_block():
    s = samples(40)
    _, val = validation_split(s, 0.1, 42)
    assert val != s[:4]


@pytest.mark.parametrize("n, n_val", [(2, 1), (3, 1), (7, 1), (10, 1), (14, 1), (16, 2), (37, 4), (100, 10)])
def test_validation_split_sizes_and_partition(n, n_val):
    s = samples(n)
    train, val = validation_split(s, 0.1, 3)
    assert len(val) == n_val
    assert len(train) == n - n_val
    assert set(train).isdisjoint(val)
    assert set(train) | set(val) == set(s)
    # both keep dataset order
    assert train == [x for x in s if x in set(train)]
    assert val == [x for x in s if x in set(val)]


def test_validation_split_of_one_image_keeps_it_for_training():
    s = samples(1)
    assert validation_split(s, 0.1, 0) == (s, [])


# --------------------------------------------------------------------------- finetune_split


def labelled_samples(spec: dict[str, int]) -> list[Sample]:
    out = []
    for defect, n in spec.items():
        for i in range(n):
            rel = f"test/{defect}/{i:03d}.png"
            out.append(Sample(Path("/d") / rel, rel, 0 if defect == "good" else 1, defect))
    return out


def test_finetune_split_is_seeded():
    s = labelled_samples({"good": 20, "crack": 20, "hole": 20})
    assert finetune_split(s, 0.1, 1) == finetune_split(s, 0.1, 1)
    assert {x.relpath for x in finetune_split(s, 0.1, 1)} != {x.relpath for x in finetune_split(s, 0.1, 2)}


@pytest.mark.parametrize("n, n_pick", [(5, 2), (12, 2), (21, 3), (25, 3), (60, 6), (100, 10)])
def test_finetune_split_size(n, n_pick):
    s = labelled_samples({"good": n // 2, "crack": n - n // 2})
    picked = finetune_split(s, 0.1, 0)
    assert len(picked) == n_pick
    assert len(set(picked)) == n_pick
    assert picked == [x for x in s if x in set(picked)]  # dataset order


def test_finetune_split_is_stratified_by_defect_type():
    s = labelled_samples({"good": 40, "crack": 30, "hole": 20, "scratch": 10})
    for seed in range(3):
        counts = Counter(x.defect_type for x in finetune_split(s, 0.1, seed))
        assert counts == {"good": 4, "crack": 3, "hole": 2, "scratch": 1}


def test_finetune_split_has_good_and_defective_images():
    s = labelled_samples({"good": 8, "crack": 9, "hole": 9, "scratch": 9})
    for seed in range(5):
        labels = {x.label for x in finetune_split(s, 0.1, seed)}
        assert labels == {0, 1}


def test_finetune_split_falls_back_when_a_defect_type_is_tiny():
    # "hole" has one image: too few to stratify by type, the split still works
    s = labelled_samples({"good": 10, "crack": 10, "hole": 1})
    for seed in range(5):
        picked = finetune_split(s, 0.1, seed)
        assert len(picked) == 3
        assert {x.label for x in picked} == {0, 1}


@pytest.mark.parametrize("spec", [{"good": 20, "crack": 3}, {"good": 10, "crack": 1},
                                  {"good": 3, "crack": 20}])
def test_finetune_split_keeps_both_classes_when_imbalanced(spec):
    s = labelled_samples(spec)
    for seed in range(5):
        assert {x.label for x in finetune_split(s, 0.1, seed)} == {0, 1}, seed


def test_finetune_split_empty_or_zero_fraction():
    assert finetune_split([], 0.1, 0) == []
    assert finetune_split(labelled_samples({"good": 5, "crack": 5}), 0.0, 0) == []


def _folder_layout(demo_root, root):
    """good/ (every good image), bad/ (every defective one, renamed unique) and masks/."""
    import shutil

    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()
    (root / "masks").mkdir()
    for i, image in enumerate(sorted((demo_root / "train" / "good").glob("*.png"))):
        shutil.copy(image, root / "good" / f"train_{i:03d}.png")
    for defect in sorted(d.name for d in (demo_root / "test").iterdir() if d.name != "good"):
        for image in sorted((demo_root / "test" / defect).glob("*.png")):
            shutil.copy(image, root / "bad" / f"{defect}_{image.name}")
            shutil.copy(demo_root / "ground_truth" / defect / f"{image.stem}_mask.png",
                        root / "masks" / f"{defect}_{image.stem}_mask.png")
    return root


def test_folder_layout_splits_good_images_seeded_and_pairs_masks(demo_root, tmp_path):
    from anomaly.data.dataset import load_dataset

    root = _folder_layout(demo_root, tmp_path / "line1")
    a = load_dataset(root, "good", "bad", "masks", normal_test_split=0.25, seed=3)
    b = load_dataset(root, "good", "bad", "masks", normal_test_split=0.25, seed=3)
    assert [s.relpath for s in a.train] == [s.relpath for s in b.train]
    good_test = [s for s in a.test if s.label == 0]
    assert len(good_test) == 4 and len(a.train) == 12 and a.has_masks
    assert not {s.relpath for s in a.train} & {s.relpath for s in good_test}
    bad = [s for s in a.test if s.label == 1]
    assert len(bad) == 6 and all(s.mask_path.name == f"{Path(s.relpath).stem}_mask.png" for s in bad)
    (root / "masks" / "blob_000_mask.png").unlink()
    with pytest.raises(AnomalyError, match="has no mask"):
        load_dataset(root, "good", "bad", "masks")
    with pytest.raises(AnomalyError, match="normal_dir"):
        load_dataset(root, "nope")


def test_folder_layout_trains_finetunes_and_tests_from_the_command_line(demo_root, tmp_path):
    from anomaly.cli import finetune as finetune_cli
    from anomaly.cli import test as test_cli
    from anomaly.cli import train as train_cli
    from tests.conftest import train_args

    root = _folder_layout(demo_root, tmp_path / "line1")
    args = train_args(root, tmp_path / "models", "-a", "pixel-gaussian", "--normal-dir", "good", "--abnormal-dir",
                      "bad", "--mask-dir", "masks")
    assert train_cli.main(args) == 0
    (model_dir,) = [p.parent for p in (tmp_path / "models").rglob("config.yaml")]
    assert finetune_cli.main(["-p", str(model_dir), "-q"]) == 0
    assert test_cli.main(["-p", str(model_dir), "-q"]) == 0
    (metrics,) = model_dir.glob("test/*/metrics.json")
    import json

    m = json.loads(metrics.read_text())
    assert m["n_good"] == 3 and m["n_defective"] == 6 and m["pixel_auroc"] is not None
