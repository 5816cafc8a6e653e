"""The three console scripts chained through a model directory, and their answers to bad input."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from anomaly.cli import finetune as finetune_cli
from anomaly.cli import test as test_cli
from anomaly.cli import train as train_cli
from anomaly.cli.common import run
from tests.conftest import train_args


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finetuned(trained, tmp_path_factory) -> Path:
    model_dir = tmp_path_factory.mktemp("ft") / "model"
    shutil.copytree(trained, model_dir)
    (model_file,) = model_dir.glob("*.keras")
    # The original toolkit's finetune: ssim maps, no smoothing or normalisation, semi-supervised.
    assert finetune_cli.main(["-p", str(model_file), "--mode", "semi", "-m", "ssim", "--smooth", "0",
                              "--no-normalize", "-q"]) == 0
    return model_dir


def test_train_writes_model_directory(trained):
    files = {p.name for p in trained.iterdir()}
    assert {"config.yaml", "history.csv", "plots", "checkpoint"} <= files
    assert len(list(trained.glob("mvtecCAE_b8_e*.keras"))) == 1
    rows = list(csv.DictReader((trained / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"loss", "val_loss", "ssim", "val_ssim", "lr"} <= set(rows[0])
    assert (trained / "plots" / "loss_plot.png").stat().st_size > 0
    # <output>/<dataset>/<category>/<architecture>/<loss>/<timestamp>
    assert trained.parent.name == "ssim" and trained.parent.parent.name == "mvtecCAE"


def test_finetune_writes_pair_and_subset(finetuned, demo_root):
    result = json.loads((finetuned / "finetune" / "ssim_float64" / "finetune.json").read_text())
    assert result["min_area"] in range(5, 1005, 5)
    assert result["threshold"] >= 0.1
    assert len(result["candidates"]) == 200
    used = result["finetune_images"]
    assert len(used) >= 2 and all((demo_root / p).is_file() for p in used)
    assert (finetuned / "finetune" / "ssim_float64" / "finetune_plot.png").exists()


def test_test_writes_contract_files(finetuned, demo_root, capsys):
    assert test_cli.main(["-p", str(finetuned), "--save", "-q"]) == 0
    out = finetuned / "test" / "ssim_float64"
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro_0.3", "tpr", "tnr", "balanced_accuracy", "f1",
                "n_images", "n_excluded_finetune", "min_area", "threshold", "method", "dtype",
                "seconds", "images_per_second"):
        assert key in metrics, key
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert list(rows[0]) == ["image", "label", "defect_type", "score", "predicted", "used_for_finetune"]
    n_test = len(list((demo_root / "test").rglob("*.png")))
    assert len(rows) == n_test
    used = sum(r["used_for_finetune"] == "true" for r in rows)
    assert used == metrics["n_excluded_finetune"] > 0
    assert metrics["n_images"] == n_test - used
    for r in rows:
        assert r["label"] == ("0" if r["defect_type"] == "good" else "1")
        amap = np.load(out / "maps" / f"{r['image']}.npy")
        assert amap.shape == (64, 64) and amap.dtype == np.float32
        assert (out / "images" / Path(*Path(r["image"]).parts[1:]).with_suffix(".png")).exists()
    assert "balanced_accuracy" in capsys.readouterr().out


def test_finetune_on_synthetic_defects_records_them_and_test_shows_the_best_pair(trained, tmp_path, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(trained, model_dir)
    assert finetune_cli.main(["-p", str(model_dir), "--mode", "synthetic", "-q"]) == 0
    assert "synthetic defects" in capsys.readouterr().out
    (folder,) = (model_dir / "finetune").iterdir()
    params = json.loads((folder / "finetune.json").read_text())
    assert params["mode"] == "synthetic" and params["finetune_images"] == []  # no test image used
    synthetic = params["synthetic"]
    assert synthetic["seed"] == params["seed"]
    assert set(synthetic["tpr_by_kind"]) == {"cutpaste", "cutpaste-polygon", "scar", "displaced", "blob", "crack",
                                             "texture"}
    assert params["score_name"] == "balanced_accuracy" and 0 <= params["tpr"] <= 1 and 0 <= params["tnr"] <= 1
    assert (folder / "synthetic_defects.png").stat().st_size > 0
    # The same seed makes the same synthetic set, so the same pair.
    again = tmp_path / "again"
    shutil.copytree(trained, again)
    assert finetune_cli.main(["-p", str(again), "--mode", "synthetic", "-q"]) == 0
    (other,) = (again / "finetune").iterdir()
    assert {k: v for k, v in json.loads((other / "finetune.json").read_text()).items() if k != "model_file"} == \
        {k: v for k, v in params.items() if k != "model_file"}
    assert test_cli.main(["-p", str(model_dir), "-q"]) == 0
    metrics = json.loads((model_dir / "test" / folder.name / "metrics.json").read_text())
    assert metrics["mode"] == "synthetic"
    assert metrics["balanced_accuracy"] <= metrics["balanced_accuracy_best"] <= 1.0


def test_test_rerun_replaces_only_its_folder(finetuned):
    assert test_cli.main(["-p", str(finetuned), "-q"]) == 0
    before = _snapshot(finetuned / "finetune")
    assert test_cli.main(["-p", str(finetuned), "-q"]) == 0
    out = finetuned / "test" / "ssim_float64"
    assert not (out / "maps").exists()  # the new run without --save replaced the whole folder
    assert _snapshot(finetuned / "finetune") == before
    assert not [p for p in (finetuned / "test").iterdir() if p.name.startswith(".")]


def _expect_error(capsys, main, argv, *needles):
    code = run(main, argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, (needle, err)


def test_bad_paths_exit_2_with_one_line(capsys, tmp_path, trained):
    _expect_error(capsys, train_cli.main, ["-d", str(tmp_path / "nope"), "-q"], "nope", "does not exist")
    (tmp_path / "empty").mkdir()
    _expect_error(capsys, train_cli.main, ["-d", str(tmp_path / "empty"), "-q"], "empty")
    (tmp_path / "notrain" / "test").mkdir(parents=True)
    _expect_error(capsys, train_cli.main, ["-d", str(tmp_path / "notrain"), "-q"], "train/good")
    _expect_error(capsys, finetune_cli.main, ["-p", str(tmp_path / "missing.keras")], "missing.keras")
    (tmp_path / "notes.txt").write_text("not a model")
    _expect_error(capsys, finetune_cli.main, ["-p", str(tmp_path / "notes.txt")], "notes.txt", "model file")
    fake = tmp_path / "fake"
    shutil.copytree(trained, fake, ignore=shutil.ignore_patterns("*.keras"))
    (fake / "model.keras").write_bytes(b"garbage")
    _expect_error(capsys, finetune_cli.main, ["-p", str(fake / "model.keras")], "model.keras", "cannot load")


def test_unknown_choices_exit_2(capsys, demo_root, tmp_path, trained):
    for flag, value, needle in (("-a", "fooCAE", "--architecture"), ("-l", "huber", "--loss"),
                                ("-c", "cmyk", "--color")):
        _expect_error(capsys, train_cli.main, train_args(demo_root, tmp_path / "out", flag, value), needle, value)
    assert not (tmp_path / "out").exists()
    _expect_error(capsys, finetune_cli.main, ["-p", str(trained), "-m", "l3"], "--method")
    _expect_error(capsys, finetune_cli.main, ["-p", str(trained), "-t", "int4"], "--dtype")


def test_finetune_before_train_and_test_before_finetune(capsys, tmp_path, trained):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(trained, unfinished, ignore=shutil.ignore_patterns("*.keras", "finetune", "test"))
    _expect_error(capsys, finetune_cli.main, ["-p", str(unfinished)], "no model file", "--resume")
    fresh = tmp_path / "fresh"
    shutil.copytree(trained, fresh, ignore=shutil.ignore_patterns("finetune", "test"))
    before = _snapshot(fresh)
    _expect_error(capsys, test_cli.main, ["-p", str(fresh)], "anomaly-finetune")
    assert _snapshot(fresh) == before


@pytest.mark.parametrize("streamed", [False, True])
def test_bad_image_is_named_and_nothing_is_written(capsys, demo_root, tmp_path, monkeypatch, streamed):
    if streamed:  # a set too large for memory is read by the detector, after its folder is made
        monkeypatch.setattr("anomaly.data.io.IN_MEMORY_BYTES", 0)
    data = tmp_path / "data"
    shutil.copytree(demo_root, data)
    bad = data / "train" / "good" / "005.png"
    bad.write_bytes(bad.read_bytes()[:200])
    _expect_error(capsys, train_cli.main, train_args(data, tmp_path / "out"), "005.png")
    assert not (tmp_path / "out").exists()


def test_console_script_exit_code_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "from anomaly.cli.train import entry; entry()",
                           "-d", str(tmp_path / "missing")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


# The commands' chain is the same for every autoencoder; what differs, the network (built, fitted, saved
# and loaded again by Detector.load, as anomaly-finetune does), is checked for each of them by
# test_detector_contract. inceptionCAE and resnetCAE, whose big graphs made this test 26 s and 14 s on 2 cores,
# run there only; mvtecCAE runs these commands in the session's `trained` model.
@pytest.mark.parametrize("architecture", ["baselineCAE", "skipCAE"])
def test_autoencoder_architectures_train_finetune_and_test(architecture, demo_root, tmp_path):
    extra = ["-a", architecture, "-e", "1"] + (["--inspect"] if architecture == "skipCAE" else [])
    assert train_cli.main(train_args(demo_root, tmp_path, *extra)) == 0
    (model_file,) = tmp_path.rglob("*.keras")
    assert model_file.name.startswith(f"{architecture}_b8_e")
    assert finetune_cli.main(["-p", str(model_file), "-m", "l2", "-t", "uint8", "-q"]) == 0
    assert test_cli.main(["-p", str(model_file.parent), "-q"]) == 0
    metrics = json.loads((model_file.parent / "test" / "l2_uint8" / "metrics.json").read_text())
    assert metrics["method"] == "l2" and metrics["dtype"] == "uint8"
    if architecture == "skipCAE":
        assert len(list((model_file.parent / "inspection" / "val").glob("*_inspection.png"))) >= 1
        assert len(list((model_file.parent / "inspection" / "test").glob("*_inspection.png"))) >= 1


def test_pixel_gaussian_baseline_runs_the_same_pipeline(demo_root, tmp_path, capsys):
    assert train_cli.main(train_args(demo_root, tmp_path, "-a", "pixel-gaussian")) == 0
    (model_file,) = tmp_path.rglob("pixel-gaussian.npz")
    assert model_file.parent.parent.name == "none" and (model_file.parent / "config.yaml").exists()
    assert finetune_cli.main(["-p", str(model_file), "-q"]) == 0
    assert (model_file.parent / "finetune" / "zscore_float64" / "finetune.json").exists()
    assert test_cli.main(["-p", str(model_file.parent), "--save", "-q"]) == 0
    metrics = json.loads((model_file.parent / "test" / "zscore_float64" / "metrics.json").read_text())
    assert metrics["method"] == "zscore" and 0.0 <= metrics["image_auroc"] <= 1.0
    _expect_error(capsys, finetune_cli.main, ["-p", str(model_file), "-m", "ssim"], "--method", "zscore")


def test_normal_only_finetune_uses_no_test_image(trained, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(trained, model_dir)
    assert finetune_cli.main(["-p", str(model_dir), "--mode", "normal-only", "-m", "l2", "-q"]) == 0
    result = json.loads((model_dir / "finetune" / "l2_float64" / "finetune.json").read_text())
    assert result["mode"] == "normal-only" and result["finetune_images"] == []
    assert result["target_fpr"] == 0.05
    assert test_cli.main(["-p", str(model_dir), "-m", "l2", "-q"]) == 0
    metrics = json.loads((model_dir / "test" / "l2_float64" / "metrics.json").read_text())
    assert metrics["n_excluded_finetune"] == 0 and metrics["mode"] == "normal-only"


def test_smoothing_and_score_sigma_are_recorded_and_used(trained, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(trained, model_dir)
    assert finetune_cli.main(["-p", str(model_dir), "-m", "ssim", "--smooth", "2", "--score-sigma", "0", "-q"]) == 0
    assert test_cli.main(["-p", str(model_dir), "--save", "-q"]) == 0
    out = model_dir / "test" / "ssim_float64"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["smooth"] == 2.0 and metrics["score_sigma"] == 0.0
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    for r in rows[:3]:  # with score sigma 0 the score is the maximum of the saved (smoothed) map
        assert float(r["score"]) == pytest.approx(float(np.load(out / "maps" / f"{r['image']}.npy").max()), rel=1e-5)
    assert finetune_cli.main(["-p", str(model_dir), "-m", "ssim", "--score", "area", "-q"]) == 0
    assert test_cli.main(["-p", str(model_dir), "-q"]) == 0
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["image_score"] == "area"
    for r in rows:  # an image is predicted defective exactly when its largest region reaches min_area
        assert (float(r["score"]) >= metrics["min_area"]) == (r["predicted"] == "1")


def test_normalized_maps_are_saved_and_reused_by_test(trained, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(trained, model_dir)
    assert finetune_cli.main(["-p", str(model_dir), "-m", "l2", "--normalize", "--smooth", "2", "-q"]) == 0
    ft = model_dir / "finetune" / "l2_float64"
    assert json.loads((ft / "finetune.json").read_text())["normalize"] is True
    assert (ft / "map_stats.npz").exists()
    assert test_cli.main(["-p", str(model_dir), "-m", "l2", "--save", "-q"]) == 0
    out = model_dir / "test" / "l2_float64"
    assert json.loads((out / "metrics.json").read_text())["normalize"] is True
    amap = np.load(next((out / "maps").rglob("*.npy")))
    assert amap.min() < 0  # z-scores, not raw squared errors


@pytest.mark.parametrize("architecture", ["mvtecCAE", "padim"])
def test_non_square_inputs_run_the_whole_pipeline(architecture, demo_root, tmp_path, monkeypatch):
    """--input-width: long parts keep their shape; maps, saved arrays and metrics are H x W."""
    monkeypatch.setenv("ANOMALY_CACHE_DIR", str(tmp_path / "cache"))
    assert train_cli.main(train_args(demo_root, tmp_path, "-a", architecture, "--input-size", "96",
                                     "--input-width", "64", "-e", "1")) == 0
    (model_dir,) = {p.parent for p in tmp_path.rglob("config.yaml")}
    assert finetune_cli.main(["-p", str(model_dir), "-q"]) == 0
    assert test_cli.main(["-p", str(model_dir), "--save", "-q"]) == 0
    (metrics_file,) = model_dir.glob("test/*/metrics.json")
    assert 0.0 <= json.loads(metrics_file.read_text())["pixel_auroc"] <= 1.0
    assert np.load(next((model_dir / "test").rglob("*.npy"))).shape == (96, 64)


def test_help_texts_state_the_defaults_the_code_uses():
    from anomaly.cli import finetune as finetune_cli
    from anomaly.cli import test as test_cli
    from anomaly.detectors import detector_class, list_detectors

    parser = finetune_cli.build_parser()
    parser.format_help()  # the defaults are listed when help is shown
    helps = {a.dest: " ".join(a.help.split()) for a in parser._actions if a.help}
    for name in list_detectors():
        defaults = detector_class(name).finetune_defaults
        method_groups = dict(part.split(" for ") for part in helps["method"][len("the map (default: "):-1].split("; "))
        assert name in method_groups[defaults["method"]].split(", ")
        normalize = "on" if defaults.get("normalize") else "off"
        assert name in helps["normalize"].split(f"{normalize} for ")[1].split(";")[0].split(")")[0].split(", ")
    assert "off for mvtecCAE" in helps["normalize"]  # the autoencoders' maps are not z-scored by default
    test_parser = test_cli.build_parser()
    test_parser.format_help()
    (test_method,) = [a.help for a in test_parser._actions if a.dest == "method"]
    assert all(m in test_method for name in list_detectors() for m in detector_class(name).methods)


def test_commands_print_no_tensorflow_start_up_noise(demo_root, tmp_path):
    """A subprocess, as a user runs it: TensorFlow's C++ lines are silenced, the device is named once."""
    import os
    import subprocess
    import sys

    code = "import sys; from anomaly.cli.train import entry; sys.argv = ['anomaly-train'] + sys.argv[1:]; entry()"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", code, "-d", str(demo_root), "-a", "pixel-gaussian", "--input-size",
                          "32", "-o", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert "absl" not in out.stderr and "I0000" not in out.stderr and "cuInit" not in out.stderr, out.stderr
    assert out.stdout.count("running on ") == 1


@pytest.mark.parametrize("architecture, error", [("patchcore", "dataset folder does not exist"),
                                                 ("PatchCor", "did you mean patchcore?")])
def test_a_wrong_path_or_detector_is_reported_before_tensorflow_loads(tmp_path, architecture, error):
    import subprocess
    import sys

    code = ("import sys\nfrom anomaly.cli.common import run\nfrom anomaly.cli.train import main\n"
            "code = run(main, ['-d', sys.argv[1], '-a', sys.argv[2]])\n"
            "print('tensorflow loaded' if 'tensorflow' in sys.modules else 'tensorflow not loaded')\n"
            "sys.exit(code)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "nowhere"), architecture], capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 2 and error in out.stderr
    assert out.stdout.strip() == "tensorflow not loaded"


def test_the_names_read_from_source_are_the_registry():
    from anomaly.detectors import declared_names, list_detectors

    assert sorted(declared_names()) == sorted(list_detectors())


def test_long_steps_show_progress_in_a_log(trained, demo_root, tmp_path, capsys):
    """Not a terminal (pytest captures stdout): each step prints its label and one finished line
    with the count and the rate; -q prints neither."""
    model_dir = shutil.copytree(trained, tmp_path / "model")
    assert finetune_cli.main(["-p", str(model_dir)]) == 0
    out = capsys.readouterr().out
    n_val = len(yaml.safe_load((model_dir / "config.yaml").read_text())["split"]["validation"])
    assert f"maps of the validation images: {n_val} images" in out
    assert f"{n_val}/{n_val}" in out and "/image" in out
    assert test_cli.main(["-p", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "testing 10 images" in out and "10/10" in out  # 4 good + 3 x 2 defective
    assert test_cli.main(["-p", str(model_dir), "-q"]) == 0
    assert "/image" not in capsys.readouterr().out


def test_patchcore_says_what_its_fit_holds_and_shows_the_bank_selection(demo_root, tmp_path, capsys):
    from anomaly.cli import train as train_cli

    # 128 px: the stride-8 grid of a few images still holds more patches than the 1,000-patch bank
    argv = ["-d", str(demo_root), "-o", str(tmp_path), "--input-size", "128", "-a", "patchcore", "--weights", "random"]
    assert train_cli.main(argv) == 0
    out = capsys.readouterr().out
    plan = next(line for line in out.splitlines() if line.startswith("memory bank: 1,000 of "))
    assert "chosen from all patches at once" in plan  # a few images: the exact coreset
    assert "choosing the memory bank: 1,000 of " in out and "1000/1000" in out and "/patch" in out
