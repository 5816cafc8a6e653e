"""anomaly-predict: new, unlabelled images judged by a finetuned model into predictions.csv."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import anomaly
from anomaly import modeldir
from anomaly.api import Model
from anomaly.cli import finetune as finetune_cli
from anomaly.cli import predict as predict_cli
from anomaly.cli.common import run
from anomaly.predict import FIELDS


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(out: Path, name: str = "predictions.csv") -> list[dict]:
    text = (out / name).read_text()
    if name == "predictions.csv":
        assert text.splitlines()[0] == ",".join(FIELDS)
    return list(csv.DictReader(io.StringIO(text)))


def _predict(*argv: str) -> int:
    return run(predict_cli.main, [*argv, "-q"])


@pytest.fixture(scope="module")
def model_dir(trained, tmp_path_factory) -> Path:
    """A finetuned copy of the session's trained model (the shared one is not finetuned)."""
    assert not modeldir.finetune_results(trained)
    path = tmp_path_factory.mktemp("predict-model") / "model"
    shutil.copytree(trained, path)
    assert finetune_cli.main(["-p", str(path), "-q"]) == 0
    assert modeldir.finetune_results(path)
    return path


@pytest.fixture(scope="module")
def model(model_dir) -> Model:
    return anomaly.load(model_dir)


@pytest.fixture
def images(demo_root, tmp_path) -> Path:
    """The demo test images (good/ and three defect folders), a nested good/sub/ and a text file."""
    root = shutil.copytree(demo_root / "test", tmp_path / "images")
    (root / "good" / "sub").mkdir()
    shutil.copy(root / "good" / "000.png", root / "good" / "sub" / "extra.png")
    (root / "good" / "notes.txt").write_text("not an image\n")
    return root


@pytest.fixture
def clean_model_dir(model_dir):
    """The model directory with no predict/ folder left by an earlier test; removed again after."""
    shutil.rmtree(model_dir / "predict", ignore_errors=True)
    yield model_dir
    shutil.rmtree(model_dir / "predict", ignore_errors=True)


def _all_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.png"))


def test_folder_file_and_pattern_judge_each_image_once_as_the_api_does(model_dir, model, images, tmp_path, capsys):
    out = tmp_path / "out"
    pattern = str(images / "*" / "00[01].png")  # good/000, good/001 again (through the folder), and the defects
    single = images / "blob" / "000.png"  # also matched by the pattern
    assert _predict("-p", str(model_dir), str(images / "good"), str(single), pattern, "-o", str(out)) == 0
    rows = _rows(out)
    names = [r["image"] for r in rows]
    expected = sorted({*map(str, (images / "good").rglob("*.png")), str(single),
                       *(str(p) for p in images.glob("*/00[01].png"))})
    assert len(expected) == 11  # 4 good + good/sub/extra + 2 x 3 defects; notes.txt is skipped
    assert len(names) == len(set(names)) and sorted(names) == expected
    assert f"{len(expected)} images judged" in capsys.readouterr().out
    assert not (out / "errors.csv").exists()

    pred = model.predict(names)
    assert [Path(p) for p in pred.images] == [Path(n) for n in names]
    np.testing.assert_allclose([float(r["score"]) for r in rows], pred.scores, rtol=1e-5, atol=1e-12)
    assert [int(r["is_anomalous"]) for r in rows] == [int(a) for a in pred.is_anomalous]
    assert [int(r["anomalous_area_px"]) for r in rows] == [int(m.sum()) for m in pred.masks]
    pp = model.postprocessor
    assert all(float(r["threshold"]) == pytest.approx(pp.threshold, rel=1e-5) for r in rows)
    assert {int(r["min_area"]) for r in rows} == {pp.min_area}

    record = json.loads((out / "predict.json").read_text())
    assert record["finished"] is True and record["images"] == record["judged"] == 11 and record["failed"] == 0
    assert record["inputs"] == [str(images / "good"), str(single), pattern]
    assert not (model_dir / "predict").exists()  # -o given: nothing in the model directory


def test_threshold_and_min_area_apply_to_this_run_only(model_dir, model, images, tmp_path):
    paths = [str(p) for p in _all_images(images)]
    maps = model.predict(paths).maps
    lo, hi = float(maps.min()), float(maps.max())
    h, w = model.detector.input_shape[:2]
    before = _snapshot(model_dir)

    # Below every pixel, with min area the whole picture: every map is one full-size region.
    low = tmp_path / "low"
    assert _predict("-p", str(model_dir), str(images), "-o", str(low), "--threshold", repr(lo - 1.0),
                    "--min-area", str(h * w)) == 0
    rows = _rows(low)
    assert len(rows) == len(paths)
    assert all(r["is_anomalous"] == "1" and int(r["anomalous_area_px"]) == h * w for r in rows)
    assert all(float(r["threshold"]) == pytest.approx(lo - 1.0, rel=1e-5) for r in rows)
    assert {r["min_area"] for r in rows} == {str(h * w)}
    # One pixel more than the picture holds: no region is large enough.
    bigger = tmp_path / "bigger"
    assert _predict("-p", str(model_dir), str(images), "-o", str(bigger), "--threshold", repr(lo - 1.0),
                    "--min-area", str(h * w + 1)) == 0
    assert all(r["is_anomalous"] == "0" and r["anomalous_area_px"] == "0" for r in _rows(bigger))
    # Above every pixel: nothing is anomalous even with min area 1.
    high = tmp_path / "high"
    assert _predict("-p", str(model_dir), str(images), "-o", str(high), "--threshold", repr(hi + 1.0),
                    "--min-area", "1") == 0
    assert all(r["is_anomalous"] == "0" and r["anomalous_area_px"] == "0" for r in _rows(high))

    # In between: the same decisions and areas as the API with that rule.
    t, a = float(np.quantile(maps, 0.98)), 3
    mid = tmp_path / "mid"
    assert _predict("-p", str(model_dir), str(images), "-o", str(mid), "--threshold", repr(t),
                    "--min-area", str(a)) == 0
    rows = _rows(mid)
    pred = model.predict([r["image"] for r in rows], threshold=t, min_area=a)
    flagged = [int(r["is_anomalous"]) for r in rows]
    assert flagged == [int(x) for x in pred.is_anomalous] and 0 < sum(flagged) < len(rows)
    assert [int(r["anomalous_area_px"]) for r in rows] == [int(m.sum()) for m in pred.masks]
    assert {r["min_area"] for r in rows} == {str(a)}
    record = json.loads((mid / "predict.json").read_text())
    assert record["threshold"] == pytest.approx(t) and record["min_area"] == a
    assert record["finetuned_threshold"] == model.postprocessor.threshold

    assert _snapshot(model_dir) == before  # finetune results (and everything else) untouched
    assert anomaly.load(model_dir).postprocessor.threshold == model.postprocessor.threshold


def test_unreadable_image_is_listed_in_errors_csv_and_exits_1(model_dir, images, tmp_path, capsys):
    bad = images / "patch" / "broken.png"
    bad.write_text("this is text, not a PNG\n")
    out = tmp_path / "out"
    assert _predict("-p", str(model_dir), str(images), "-o", str(out)) == 1
    assert "1 images could not be read" in capsys.readouterr().err
    good = [str(p) for p in _all_images(images) if p != bad]
    assert sorted(r["image"] for r in _rows(out)) == good
    errors = _rows(out, "errors.csv")
    assert [e["image"] for e in errors] == [str(bad)]
    assert errors[0]["reason"].startswith("cannot read image")
    record = json.loads((out / "predict.json").read_text())
    assert record["finished"] is True and record["failed"] == 1 and record["judged"] == len(good)

    # Named directly, a file is taken whatever its extension, and fails the same way.
    other = tmp_path / "readme.txt"
    other.write_text("hello\n")
    out2 = tmp_path / "out2"
    assert _predict("-p", str(model_dir), str(other), str(images / "good" / "000.png"), "-o", str(out2)) == 1
    assert [e["image"] for e in _rows(out2, "errors.csv")] == [str(other)]
    assert [r["image"] for r in _rows(out2)] == [str(images / "good" / "000.png")]


def _drop_last_rows(out: Path, n: int) -> list[str]:
    path = out / "predictions.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-n]))
    return [line.split(",")[0] for line in lines[-n:]]


def test_the_same_command_continues_an_interrupted_run_in_its_out_folder(model_dir, images, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["-p", str(model_dir), str(images), "-o", str(out), "-b", "4"]
    assert _predict(*argv) == 0
    first = _rows(out)
    dropped = _drop_last_rows(out, 3)
    capsys.readouterr()
    assert _predict(*argv) == 0
    printed = capsys.readouterr().out
    assert "3 images judged" in printed and f"{len(first) - 3} already in predictions.csv" in printed
    rows = _rows(out)
    assert [r["image"] for r in rows[-3:]] == dropped
    assert sorted(r["image"] for r in rows) == sorted(r["image"] for r in first)  # each once
    assert rows == first  # the same rows again
    assert _predict(*argv) == 0  # a finished run: nothing left to judge
    assert "0 images judged" in capsys.readouterr().out and _rows(out) == first

    # A run on a subset first, then on the whole folder: only the rest is judged.
    out2 = tmp_path / "out2"
    subset = str(images / "good" / "*.png")
    assert _predict("-p", str(model_dir), subset, "-o", str(out2)) == 0
    n_subset = len(_rows(out2))
    assert n_subset == 4
    capsys.readouterr()
    assert _predict("-p", str(model_dir), str(images), "-o", str(out2)) == 0
    printed = capsys.readouterr().out
    assert f"{len(first) - 4} images judged" in printed and "4 already in predictions.csv" in printed
    names = [r["image"] for r in _rows(out2)]
    assert len(names) == len(set(names)) == len(first)


def test_the_same_command_continues_the_latest_unfinished_default_folder(clean_model_dir, images, capsys):
    argv = ["-p", str(clean_model_dir), str(images)]
    assert _predict(*argv) == 0
    (out,) = (clean_model_dir / "predict").iterdir()
    first = _rows(out)
    assert len(first) == len(_all_images(images))
    record = json.loads((out / "predict.json").read_text())
    (out / "predict.json").write_text(json.dumps({**record, "finished": False}))
    dropped = _drop_last_rows(out, 2)
    capsys.readouterr()
    assert _predict(*argv) == 0
    printed = capsys.readouterr().out
    assert "2 images judged" in printed and f"{len(first) - 2} already in predictions.csv" in printed
    assert [p.name for p in (clean_model_dir / "predict").iterdir()] == [out.name]  # no new folder
    rows = _rows(out)
    assert [r["image"] for r in rows[-2:]] == dropped and rows == first
    assert json.loads((out / "predict.json").read_text())["finished"] is True


def test_an_interrupted_run_exits_130_and_is_continued_by_the_same_command(clean_model_dir, images, monkeypatch,
                                                                          capsys):
    calls = []
    real = Model.predict_batches

    def interrupt_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Model, "predict_batches", interrupt_second_batch)
    argv = ["-p", str(clean_model_dir), str(images), "-b", "4"]
    assert _predict(*argv) == 130
    assert "run the same command again" in capsys.readouterr().err
    (out,) = (clean_model_dir / "predict").iterdir()
    assert len(_rows(out)) == 4  # the first batch's rows were flushed
    assert json.loads((out / "predict.json").read_text())["finished"] is False

    monkeypatch.setattr(Model, "predict_batches", real)
    n = len(_all_images(images))
    assert _predict(*argv) == 0
    assert f"{n - 4} images judged" in capsys.readouterr().out
    assert [p.name for p in (clean_model_dir / "predict").iterdir()] == [out.name]
    names = [r["image"] for r in _rows(out)]
    assert len(names) == len(set(names)) == n
    assert json.loads((out / "predict.json").read_text())["finished"] is True


@pytest.mark.parametrize("flags", [["--threshold", "12345.5"], ["--min-area", "777"]])
def test_another_rule_into_the_same_out_folder_is_refused(model_dir, images, tmp_path, capsys, flags):
    out = tmp_path / "out"
    assert _predict("-p", str(model_dir), str(images / "good"), "-o", str(out)) == 0
    before = _snapshot(out)
    capsys.readouterr()
    assert _predict("-p", str(model_dir), str(images), "-o", str(out), *flags) == 2
    err = _one_line_error(capsys)
    assert "another -o folder" in err
    assert _snapshot(out) == before


def _bad_inputs(case: str, model_dir: Path, unfinetuned: Path, images: Path, tmp_path: Path) -> list[str]:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True, exist_ok=True)
    (empty / "sub" / "notes.txt").write_text("no images here\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return {
        "pattern matches nothing": ["-p", str(model_dir), str(images / "*.jpg")],
        "missing path": ["-p", str(model_dir), str(tmp_path / "missing.png")],
        "missing among good": ["-p", str(model_dir), str(images / "good"), str(tmp_path / "missing")],
        "folder without images": ["-p", str(model_dir), str(empty)],
        "unfinetuned model": ["-p", str(unfinetuned), str(images)],
        "out under a file": ["-p", str(model_dir), str(images), "-o", str(a_file / "out")],
        "out is a file": ["-p", str(model_dir), str(images), "-o", str(a_file)],
        "nan threshold": ["-p", str(model_dir), str(images), "--threshold", "nan"],
        "negative min area": ["-p", str(model_dir), str(images), "--min-area", "-1"],
        "zero batch size": ["-p", str(model_dir), str(images), "-b", "0"],
        "missing model": ["-p", str(tmp_path / "no-model"), str(images)],
    }[case]


@pytest.fixture(scope="module")
def unfinetuned(trained, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("unfinetuned") / "model"
    shutil.copytree(trained, path)
    shutil.rmtree(path / "finetune", ignore_errors=True)
    assert not modeldir.finetune_results(path)
    return path


@pytest.mark.parametrize("case", ["pattern matches nothing", "missing path", "missing among good",
                                  "folder without images", "unfinetuned model", "out under a file",
                                  "out is a file", "nan threshold", "negative min area", "zero batch size",
                                  "missing model"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, clean_model_dir, unfinetuned, images, tmp_path,
                                                         capsys):
    argv = _bad_inputs(case, clean_model_dir, unfinetuned, images, tmp_path)
    folders = (clean_model_dir, unfinetuned, tmp_path)
    before = {p: (_snapshot(p), sorted(p.rglob("*"))) for p in folders}
    assert _predict(*argv) == 2
    _one_line_error(capsys)
    assert not (clean_model_dir / "predict").exists() and not (unfinetuned / "predict").exists()
    assert {p: (_snapshot(p), sorted(p.rglob("*"))) for p in folders} == before  # not even an empty folder


def test_save_writes_pictures_and_raw_maps_under_their_relative_paths(model_dir, model, images, tmp_path):
    outside = {p for p in tmp_path.rglob("*") if p.is_file()}
    model_before = _snapshot(model_dir)
    out = tmp_path / "out"
    assert _predict("-p", str(model_dir), str(images), "-o", str(out), "--save") == 0
    paths = _all_images(images)
    rels = [p.relative_to(images) for p in paths]
    assert Path("good/sub/extra.png") in rels  # the nested folder keeps its subfolder
    h, w = model.detector.input_shape[:2]
    pred = model.predict([str(p) for p in paths])
    for rel, raw_map in zip(rels, pred.maps):
        picture = out / "images" / rel.with_suffix(".png")
        assert picture.is_file() and picture.stat().st_size > 0, picture
        saved = np.load(out / "maps" / rel.with_suffix(".npy"))
        assert saved.shape == (h, w) and saved.dtype == np.float32
        np.testing.assert_allclose(saved, raw_map, rtol=1e-5, atol=1e-6)
    written = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    assert written == {Path("predictions.csv"), Path("predict.json"),
                       *(Path("images") / r.with_suffix(".png") for r in rels),
                       *(Path("maps") / r.with_suffix(".npy") for r in rels)}
    new_outside = {p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(out)} - outside
    assert not new_outside
    assert _snapshot(model_dir) == model_before

    # One file named alone: its picture lies at the top of images/.
    one = tmp_path / "one"
    assert _predict("-p", str(model_dir), str(images / "good" / "sub" / "extra.png"), "-o", str(one), "--save") == 0
    assert (one / "images" / "extra.png").is_file() and (one / "maps" / "extra.npy").is_file()


# Edge cases found while these tests were written (each was a bug, now fixed).


def test_the_same_command_continues_a_run_whose_threshold_has_more_than_6_digits(model_dir, images, tmp_path,
                                                                                  capsys):
    argv = ["-p", str(model_dir), str(images / "good"), "-o", str(tmp_path / "out"), "--threshold", "1.2345678"]
    assert _predict(*argv) == 0
    capsys.readouterr()
    assert _predict(*argv) == 0, capsys.readouterr().err


def test_the_same_image_named_relative_and_absolute_is_judged_once(model_dir, images, tmp_path, monkeypatch):
    monkeypatch.chdir(images)
    out = tmp_path / "out"
    assert _predict("-p", str(model_dir), "good/000.png", str(images / "good" / "000.png"), "-o", str(out)) == 0
    assert len(_rows(out)) == 1


def test_two_default_runs_in_the_same_second_get_two_folders(clean_model_dir, images, monkeypatch):
    import datetime as dt

    import anomaly.predict

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2030, 1, 2, 3, 4, 5)

    monkeypatch.setattr(anomaly.predict, "datetime", Frozen)
    assert _predict("-p", str(clean_model_dir), str(images / "good")) == 0
    assert _predict("-p", str(clean_model_dir), str(images / "blob")) == 0
    runs = sorted((clean_model_dir / "predict").iterdir())
    assert len(runs) == 2
    assert len(_rows(runs[0])) == 5 and len(_rows(runs[1])) == 2


def test_save_keeps_images_that_differ_only_by_extension_apart(model_dir, images, tmp_path):
    from PIL import Image

    folder = tmp_path / "pair"
    folder.mkdir()
    shutil.copy(images / "good" / "000.png", folder / "a.png")
    Image.open(images / "blob" / "000.png").convert("RGB").save(folder / "a.jpg")
    out = tmp_path / "out"
    assert _predict("-p", str(model_dir), str(folder), "-o", str(out), "--save") == 0
    assert len(list((out / "maps").rglob("*.npy"))) == 2
    assert len(list((out / "images").rglob("*.png"))) == 2


def test_a_predictions_file_cut_mid_row_is_continued_or_refused_in_one_line(model_dir, images, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["-p", str(model_dir), str(images), "-o", str(out)]
    assert _predict(*argv) == 0
    path = out / "predictions.csv"
    path.write_text(path.read_text()[:-20])
    capsys.readouterr()
    code = _predict(*argv)
    if code == 2:
        _one_line_error(capsys)
    else:
        assert code == 0
        rows = _rows(out)
        assert all(None not in r.values() and len(r) == len(FIELDS) for r in rows)
        assert sorted(r["image"] for r in rows) == [str(p) for p in _all_images(images)]


def test_min_area_0_does_not_flag_an_image_without_anomalous_pixels(model_dir, images, tmp_path, capsys):
    out = tmp_path / "out"
    code = _predict("-p", str(model_dir), str(images / "good"), "-o", str(out), "--threshold", "1e9",
                    "--min-area", "0")
    if code == 2:  # refusing min area 0 would do as well
        _one_line_error(capsys)
        assert not out.exists()
    else:
        assert code == 0
        assert all(r["anomalous_area_px"] == "0" and r["is_anomalous"] == "0" for r in _rows(out))
