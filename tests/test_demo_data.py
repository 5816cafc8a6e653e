"""Tests for anomaly.data.demo: the offline MVTec-AD-style demo dataset."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly.data import demo
from anomaly.data.demo import BORDER, DEFECTS, MIN_CONTRAST, TEXTURES, apply_defect, local_ring, make_demo_dataset
from anomaly.errors import AnomalyError

SMALL = dict(n_train=6, n_test_good=3, n_test_defect=4, size=64)


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L", path
        return np.array(im)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def default_dataset(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"))


def test_layout_and_counts(default_dataset):
    root = default_dataset
    assert root.name == "brick"
    assert sorted(p.name for p in root.iterdir()) == ["demo.json", "ground_truth", "test", "train"]
    assert sorted(p.name for p in (root / "train").iterdir()) == ["good"]
    assert sorted(p.name for p in (root / "test").iterdir()) == sorted(["good", *DEFECTS])
    assert sorted(p.name for p in (root / "ground_truth").iterdir()) == sorted(DEFECTS)

    train = sorted((root / "train" / "good").iterdir())
    assert [p.name for p in train] == [f"{i:03d}.png" for i in range(60)]
    assert len(list((root / "test" / "good").iterdir())) == 12
    for d in DEFECTS:
        assert [p.name for p in sorted((root / "test" / d).iterdir())] == [f"{i:03d}.png" for i in range(8)]
        assert [p.name for p in sorted((root / "ground_truth" / d).iterdir())] == [
            f"{i:03d}_mask.png" for i in range(8)
        ]
    for p in [*train, *(root / "test" / "good").iterdir()]:
        img = _read(p)
        assert img.shape == (128, 128) and img.dtype == np.uint8
        assert img.std() > 5  # a texture, not a flat image

    params = json.loads((root / "demo.json").read_text())
    assert params["texture"] == "brick" and params["seed"] == 0 and params["size"] == 128


def test_masks_are_exact_sized_inside_border_and_visible(default_dataset):
    root = default_dataset
    assert not (root / "ground_truth" / "good").exists()  # good test images have no masks
    for d in DEFECTS:
        for img_path in sorted((root / "test" / d).iterdir()):
            img = _read(img_path)
            raw = _read(root / "ground_truth" / d / f"{img_path.stem}_mask.png")
            assert raw.shape == img.shape == (128, 128)
            assert set(np.unique(raw)) <= {0, 255}
            mask = raw == 255
            assert mask.any(), img_path
            inner = np.zeros_like(mask)
            inner[BORDER:-BORDER, BORDER:-BORDER] = True
            assert not (mask & ~inner).any(), f"{img_path}: defect within {BORDER} px of the border"
            # pixels around the defect are untouched background: the defect stands out from them
            ring = local_ring(mask)
            contrast = abs(img[mask].mean() - img[ring].mean())
            assert contrast >= MIN_CONTRAST, (img_path, contrast)


def test_mask_sizes_match_defect_kinds(default_dataset):
    root = default_dataset
    for d in DEFECTS:
        for p in sorted((root / "ground_truth" / d).iterdir()):
            mask = _read(p) == 255
            rows, cols = np.nonzero(mask)
            h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
            if d == "patch":  # a full rectangle, 10-25 % of the side
                assert mask.sum() == h * w
                assert 0.10 * 128 - 1 <= h <= 0.25 * 128 + 1 and 0.10 * 128 - 1 <= w <= 0.25 * 128 + 1
            elif d == "blob":  # an ellipse with radii 4-12 % of the side
                assert 2 * 0.04 * 128 - 2 <= max(h, w) <= 2 * 0.12 * 128 + 2
            else:  # a thin curve: long, but covers little area
                assert max(h, w) >= 0.2 * 128 / np.sqrt(2) - 1
                assert mask.sum() < 0.35 * h * w + 5 * max(h, w)


@pytest.mark.parametrize("texture", TEXTURES)
def test_apply_defect_changes_exactly_the_mask(texture):
    source = demo._load_texture(texture)
    other = demo._load_texture(demo._PATCH_SOURCE[texture])
    for seed in range(8):
        rng = np.random.default_rng(seed)
        clean = demo._panel(source, rng, 128)
        for kind in DEFECTS:
            img, mask = apply_defect(clean, kind, rng, patch_source=other)
            assert img.dtype == np.uint8 and mask.dtype == bool and img.shape == mask.shape == clean.shape
            np.testing.assert_array_equal(img != clean, mask)
            assert mask.any()
            ring = local_ring(mask)
            assert abs(img[mask].mean() - clean[ring].mean()) >= MIN_CONTRAST
    with pytest.raises(ValueError):
        apply_defect(clean, "crack", rng)


def test_all_textures_build(tmp_path):
    for texture in TEXTURES:
        out = make_demo_dataset(tmp_path, texture=texture, **SMALL)
        assert out == tmp_path / texture
        assert len(list((out / "test" / "patch").iterdir())) == 4
        assert _read(out / "train" / "good" / "000.png").shape == (64, 64)


def test_deterministic(tmp_path):
    a = make_demo_dataset(tmp_path / "a", seed=3, **SMALL)
    b = make_demo_dataset(tmp_path / "b", seed=3, **SMALL)
    fa, fb = _files(a), _files(b)
    assert len(fa) == 6 + 3 + 2 * 3 * 4 + 1
    assert fa == fb

    c = make_demo_dataset(tmp_path / "c", seed=4, **SMALL)
    fc = _files(c)
    assert fc.keys() == fa.keys()
    pngs = [k for k in fa if k.endswith(".png") and "ground_truth" not in k]
    assert sum(fa[k] != fc[k] for k in pngs) >= len(pngs) - 1


def test_existing_folder_not_overwritten(tmp_path):
    target = tmp_path / "brick"
    target.mkdir()
    (target / "mine.txt").write_text("keep me")
    with pytest.raises(AnomalyError) as info:
        make_demo_dataset(tmp_path, **SMALL)
    message = str(info.value)
    assert str(target) in message and "\n" not in message
    assert (target / "mine.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brick"]  # no temp folder left

    out = make_demo_dataset(tmp_path, overwrite=True, **SMALL)
    assert out == target and not (target / "mine.txt").exists()
    assert (target / "demo.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brick"]


def test_other_parameters_need_overwrite(tmp_path):
    make_demo_dataset(tmp_path, seed=1, **SMALL)
    with pytest.raises(AnomalyError, match="brick"):
        make_demo_dataset(tmp_path, seed=2, **SMALL)
    before = _files(tmp_path / "brick")
    make_demo_dataset(tmp_path, seed=2, overwrite=True, **SMALL)
    after = _files(tmp_path / "brick")
    assert after != before
    assert after == _files(make_demo_dataset(tmp_path / "fresh", seed=2, **SMALL))


def test_reuse_same_parameters(tmp_path, monkeypatch):
    out = make_demo_dataset(tmp_path, **SMALL)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt a dataset that was already there")

    monkeypatch.setattr(demo, "_build", fail)
    assert make_demo_dataset(tmp_path, **SMALL) == out
    assert make_demo_dataset(str(tmp_path), **SMALL) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps


def test_empty_target_folder_is_filled(tmp_path):
    (tmp_path / "brick").mkdir()
    out = make_demo_dataset(tmp_path, **SMALL)
    assert (out / "demo.json").exists()


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_save = demo._save_png

    def flaky_save(path, image):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        real_save(path, image)

    monkeypatch.setattr(demo, "_save_png", flaky_save)
    with pytest.raises(KeyboardInterrupt):
        make_demo_dataset(tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs",
    [dict(texture="marble"), dict(n_train=0), dict(size=8), dict(seed=-1), dict(n_test_defect=1.5), dict(size=True)],
)
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(AnomalyError):
        make_demo_dataset(tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_clean_images_are_the_panel_registered_within_the_jitter_and_brightness():
    # a dark source with one bright pixel at the panel's centre: it shows up within JITTER of the
    # crop's centre, at the centre's brightness scaled by at most BRIGHTNESS
    source = np.full((512, 512), 100, dtype=np.uint8)
    centre = (demo.PANEL[0] + demo.CROP // 2, demo.PANEL[1] + demo.CROP // 2)
    source[centre] = 200
    rng = np.random.default_rng(0)
    shifts = set()
    for _ in range(60):
        crop = demo._panel(source, rng, demo.CROP)  # at source scale: no resizing
        (r,), (c,) = np.nonzero(crop == crop.max())
        shift = (demo.CROP // 2 - r, demo.CROP // 2 - c)
        assert max(map(abs, shift)) <= demo.JITTER
        shifts.add(shift)
        factor = crop.max() / 200
        assert 1 - demo.BRIGHTNESS - 0.01 <= factor <= 1 + demo.BRIGHTNESS + 0.01
        assert abs(int(crop[0, 0]) - 100 * factor) <= 1
    assert len(shifts) > 10  # the jitter does vary


def test_overwrite_rebuilds_a_damaged_dataset(tmp_path):
    out = make_demo_dataset(tmp_path, **SMALL)
    first = _files(out)
    (out / "train" / "good" / "000.png").write_bytes(b"not a png")
    assert make_demo_dataset(tmp_path, **SMALL) == out  # same parameters and counts: reused as is
    assert make_demo_dataset(tmp_path, overwrite=True, **SMALL) == out
    assert _files(out) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brick"]
