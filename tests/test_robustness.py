"""Faults and hostile input: bad flags and files, killed runs, permissions, reproducibility."""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from anomaly import modeldir
from anomaly.arrays import load_npz
from anomaly.cli import finetune as finetune_cli
from anomaly.cli import test as test_cli
from anomaly.cli import train as train_cli
from anomaly.cli.common import run
from anomaly.data.dataset import find_dataset
from anomaly.errors import AnomalyWarning
from tests.conftest import train_args


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def _predictions(model_dir: Path) -> list[dict]:
    (path,) = model_dir.glob("test/*/predictions.csv")
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_random_backbone_models_score_the_same_on_every_test_run(patchcore_dir, tmp_path):
    # The session's patchcore, trained with --weights random and finetuned; a copy, without test results.
    model_dir = shutil.copytree(patchcore_dir, tmp_path / "model")
    shutil.rmtree(model_dir / "test", ignore_errors=True)
    assert test_cli.main(["-p", str(model_dir), "-q"]) == 0
    first = _predictions(model_dir)
    assert test_cli.main(["-p", str(model_dir), "-q"]) == 0
    assert [r["score"] for r in _predictions(model_dir)] == [r["score"] for r in first]


def test_model_directory_stays_inside_output_dir_with_a_relative_data_path(demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(demo_root / "train" / "good")
    out = tmp_path / "out" / "a" / "b"
    assert train_cli.main(["-d", "../..", "-a", "pixel-gaussian", "-o", str(out), "--input-size", "64", "-q"]) == 0
    (config,) = tmp_path.rglob("config.yaml")
    assert config.resolve().is_relative_to(out.resolve())
    assert config.parent.relative_to(out).parts[:2] == (demo_root.parent.name, demo_root.name)


def test_new_model_dir_refuses_names_that_leave_the_output_dir(tmp_path):
    with pytest.raises(Exception, match="inside"):
        modeldir.new_model_dir(tmp_path / "out", "../..", "mvtecCAE", "ssim")
    assert not (tmp_path / "out").exists()


def test_mask_of_a_good_test_image_is_ignored_with_a_warning(demo_root, tmp_path):
    root = shutil.copytree(demo_root, tmp_path / "brick")
    good = sorted((root / "test" / "good").iterdir())[0]
    (root / "ground_truth" / "good").mkdir()
    shutil.copy(next((root / "ground_truth").rglob("*_mask.png")),
                root / "ground_truth" / "good" / f"{good.stem}_mask.png")
    with pytest.warns(AnomalyWarning, match="ignored"):
        ds = find_dataset(root)
    (sample,) = [s for s in ds.test if s.relpath == f"test/good/{good.name}"]
    assert sample.label == 0 and sample.mask_path is None


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_results_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        modeldir.write_text(tmp_path / "a.txt", "x")
        with modeldir.replace_folder(tmp_path / "results") as folder:
            modeldir.write_json(folder / "metrics.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "results").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "results" / "metrics.json").stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_bad_output_dir_is_one_line_before_any_work(demo_root, tmp_path, capsys, where, monkeypatch):
    blocker = tmp_path / "taken"
    blocker.write_text("a user's file")
    out = blocker if where == "file" else blocker / "models"

    def no_reading(*args, **kwargs):
        raise AssertionError("images were read before -o was checked")

    monkeypatch.setattr("anomaly.data.io.read_images", no_reading)
    monkeypatch.setattr("anomaly.data.io.read_image", no_reading)
    assert run(train_cli.main, train_args(demo_root, out, "-a", "pixel-gaussian")) == 2
    assert "-o" in _one_line_error(capsys)
    assert blocker.read_text() == "a user's file"


@pytest.mark.parametrize("option, value", [("map_sigma", ".nan"), ("coreset_ratio", ".nan"), ("rotation", ".inf"),
                                           ("lr", "-.inf")])
def test_non_finite_numbers_in_a_config_file_are_refused(demo_root, tmp_path, capsys, option, value):
    config = tmp_path / "c.yaml"
    config.write_text(f"{option}: {value}\n")
    assert run(train_cli.main, train_args(demo_root, tmp_path / "out", "-a", "patchcore", "--config",
                                          str(config))) == 2
    assert option in _one_line_error(capsys) and not (tmp_path / "out").exists()


def test_non_finite_flags_are_refused(demo_root, tmp_path, capsys):
    assert run(train_cli.main, train_args(demo_root, tmp_path / "out", "--coreset-ratio", "nan", "-a",
                                          "patchcore")) == 2
    assert "coreset_ratio" in _one_line_error(capsys)
    for flag in ("--smooth", "--score-sigma"):
        assert run(finetune_cli.main, ["-p", str(tmp_path), flag, "nan"]) == 2
        assert flag in _one_line_error(capsys)


def test_saved_config_with_nan_is_refused(trained, tmp_path, capsys):
    model_dir = shutil.copytree(trained, tmp_path / "model")
    config = model_dir / "config.yaml"
    config.write_text(config.read_text().replace("rotation: 5.0", "rotation: .nan"))
    assert run(finetune_cli.main, ["-p", str(model_dir), "-q"]) == 2
    assert "config.yaml: option 'rotation' expects a finite number" in _one_line_error(capsys)


def test_stale_temporaries_of_dead_runs_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    test_dir = tmp_path / "test"
    stale = test_dir / f".ssim_float64.tmp-{dead.pid}-abc"
    stale_file = test_dir / f".metrics.json.tmp-{dead.pid}-xyz"
    live = test_dir / f".ssim_float64.tmp-{os.getppid()}-def"  # a run still going
    for folder in (stale, live):
        folder.mkdir(parents=True)
    stale_file.write_text("{")
    with modeldir.replace_folder(test_dir / "ssim_float64") as folder:
        (folder / "x").write_text("done")
    modeldir.write_text(test_dir / "metrics.json", "{}")
    assert not stale.exists() and not stale_file.exists() and live.exists()
    assert sorted(p.name for p in test_dir.iterdir()) == sorted([live.name, "ssim_float64", "metrics.json"])


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_benchmark_worker_dies_with_its_parent(tmp_path):
    child_code = ("import os, sys, time; from anomaly.benchmark.worker import die_with_parent; "
                  "die_with_parent(os.getppid()); print(os.getpid(), flush=True); time.sleep(60)")
    parent_code = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child_code!r}]); "
                   "time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    child_pid = int(parent.stdout.readline())
    assert _alive(child_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(child_pid)
    if alive:
        os.kill(child_pid, signal.SIGKILL)
    assert not alive


def test_truncated_keras_file_is_named_corrupt_not_missing(trained, tmp_path, capsys):
    model_dir = shutil.copytree(trained, tmp_path / "model")
    (model_file,) = model_dir.glob("*.keras")
    model_file.write_bytes(model_file.read_bytes()[:1000])
    assert run(test_cli.main, ["-p", str(model_file)]) == 2
    err = _one_line_error(capsys)
    assert "truncated or corrupt" in err and "not found" not in err.lower()


def test_train_help_lists_every_detector():
    from anomaly.detectors import list_detectors

    parser = train_cli.build_parser()
    parser.format_help()  # the detectors are listed when help is shown
    (action,) = [a for a in parser._actions if a.dest == "architecture"]
    assert all(name in action.help for name in list_detectors()) and "cutpaste" in action.help


def _npz_with_header(path: Path, header_shape: tuple, data: bytes) -> None:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": header_shape})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("bank.npy", buf.getvalue() + data)


def test_npz_files_are_checked_before_anything_is_allocated(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, bank=np.arange(6, dtype=np.float32).reshape(2, 3), grid=np.array([4, 4]))
    with load_npz(good) as data:
        assert data.files == ["bank", "grid"] and data["bank"].tolist() == [[0, 1, 2], [3, 4, 5]]
    huge = tmp_path / "huge.npz"
    _npz_with_header(huge, (10 ** 6, 10 ** 6), b"\0" * 16)  # declares 4 TB in 16 bytes
    with pytest.raises(ValueError, match="declares"):
        load_npz(huge)
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickles"):
        load_npz(objects)
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        buf = io.BytesIO()
        np.save(buf, np.zeros(2 ** 24, np.float32))
        z.writestr("x.npy", buf.getvalue())
    with pytest.raises(ValueError, match="inflates"):
        load_npz(bomb)


def test_corrupt_detector_file_is_one_line(demo_root, tmp_path, capsys):
    assert train_cli.main(train_args(demo_root, tmp_path, "-a", "pixel-gaussian")) == 0
    (model_file,) = tmp_path.rglob("*.npz")
    _npz_with_header(model_file, (10 ** 6, 10 ** 6), b"\0" * 16)
    assert run(finetune_cli.main, ["-p", str(model_file), "-q"]) == 2
    assert "declares" in _one_line_error(capsys)
