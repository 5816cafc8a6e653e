"""anomaly-benchmark: a small grid end to end, resuming, failed runs, categories and bad names."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from anomaly import benchmark
from anomaly.benchmark import machine as benchmark_machine
from anomaly.benchmark import runner
from anomaly.cli import benchmark as benchmark_cli
from anomaly.cli.common import run
from anomaly.errors import AnomalyError

LEADING = ["dataset", "category", "detector", "variant", "seed", "image_auroc", "pixel_auroc", "aupro_0.3",
           "balanced_accuracy", "f1", "fit_seconds", "test_images_per_second", "peak_memory_mb", "model_dir"]


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    """Flags for a fast grid on the 64 px demo data."""
    return ["-d", str(data), "--input-size", "64", "-e", "1", "--lr", "1e-3", "-o", str(out), *extra]


def _rows(out: Path) -> list[dict]:
    with (out / "results.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def grid(demo_root, tmp_path_factory) -> tuple[Path, list[str]]:
    """A grid of two real runs (mvtecCAE ssim, pixel-gaussian), each in its worker process."""
    out = tmp_path_factory.mktemp("bench") / "out"
    argv = _args(demo_root, out, "-a", "mvtecCAE", "pixel-gaussian", "-l", "ssim", "--seeds", "0",
                 "--max-minutes", "30")
    assert run(benchmark_cli.main, argv) == 0
    return out, argv


def test_grid_writes_results_machine_and_plots(grid, demo_root):
    out, _ = grid
    with (out / "results.csv").open(newline="") as f:
        header = next(csv.reader(f))
    assert header[:len(LEADING)] == LEADING
    rows = _rows(out)
    assert [(r["detector"], r["variant"]) for r in rows] == [("mvtecCAE", "ssim"), ("pixel-gaussian", "none")]
    for r in rows:
        assert r["status"] == "ok", r["error"]
        assert (r["dataset"], r["category"], r["seed"]) == (demo_root.parent.name, demo_root.name, "0")
        for key in ("image_auroc", "pixel_auroc", "aupro_0.3"):
            assert 0.0 <= float(r[key]) <= 1.0, key
        assert float(r["peak_memory_mb"]) > 0 and float(r["test_images_per_second"]) > 0
        assert (out / r["model_dir"] / "test").is_dir()  # relative to the output folder
        plots = out / "plots" / f"{r['dataset']}_{r['category']}_{r['detector']}_{r['variant']}_s0"
        for name in ("roc.png", "pro.png", "hist.png", "examples.png"):
            assert (plots / name).stat().st_size > 0, plots / name
    assert rows[0]["method"] == "mssim" and rows[1]["method"] == "zscore"  # each detector's default map
    assert rows[0]["max_minutes"] == "30" and rows[1]["max_minutes"] == ""  # a budget for training only
    md = (out / "results.md").read_text()
    assert "| mvtecCAE | ssim | 0 |" in md and "| pixel-gaussian | none | 0 |" in md
    machine = json.loads((out / "machine.json").read_text())
    for key in ("cpu", "cores", "memory_gib", "tensorflow", "gpus", "python", "command", "date",
                "avx512", "avx2", "onednn"):  # the CPU facts of anomaly.machine, on every benchmark
        assert key in machine, key
    assert machine["command"].startswith("anomaly-benchmark -d ")


def test_rerun_skips_runs_done(grid, monkeypatch, capsys):
    out, argv = grid
    before = _rows(out)

    def no_worker(args, log_path):
        raise AssertionError(f"a worker was started for {args['detector']}")

    monkeypatch.setattr(runner, "_start_worker", no_worker)
    start = time.perf_counter()
    assert run(benchmark_cli.main, argv) == 0
    assert time.perf_counter() - start < 60
    assert capsys.readouterr().out.count("skipped") == 2
    assert _rows(out) == before


def test_failed_run_is_recorded_and_retried(demo_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    started = []

    def fake_worker(args, log_path):
        started.append(args["detector"])
        if args["detector"] == "mvtecCAE":
            log_path.write_text("Traceback ...\nRuntimeError: out of memory\n")
            return 1  # a crash: no result file
        Path(args["result_file"]).write_text(json.dumps(
            {"status": "ok", "error": "", "model_dir": str(out / "models" / "m"), "method": "zscore",
             "image_auroc": 0.5, "pixel_auroc": 0.5, "aupro_0.3": 0.25, "balanced_accuracy": 0.5, "f1": 0.0,
             "fit_seconds": 0.1, "test_images_per_second": 10.0, "peak_memory_mb": 100.0}))
        return 0

    monkeypatch.setattr(runner, "_start_worker", fake_worker)
    monkeypatch.setattr(benchmark_machine, "machine_facts", lambda: {"cpu": "test", "cores": 1, "gpus": []})
    assert run(benchmark_cli.main, _args(demo_root, out)) == 1
    rows = {r["detector"]: r for r in _rows(out)}
    assert rows["mvtecCAE"]["status"] == "error"
    assert "code 1" in rows["mvtecCAE"]["error"] and "out of memory" in rows["mvtecCAE"]["error"]
    assert rows["pixel-gaussian"]["status"] == "ok" and rows["pixel-gaussian"]["model_dir"] == "models/m"
    assert "## Errors" in (out / "results.md").read_text()
    started.clear()
    run(benchmark_cli.main, _args(demo_root, out))
    assert started == ["mvtecCAE"]  # the ok run is kept, the failed one is tried again


def test_find_categories(tmp_path, demo_root):
    assert benchmark.find_categories(demo_root) == [demo_root]
    root = tmp_path / "root"
    for category in ("mvtec_ad/zipper", "mvtec_ad/bottle", "single", "a/b/too_deep", ".hidden/x"):
        (root / category / "train" / "good").mkdir(parents=True)
    (root / "other" / "test").mkdir(parents=True)
    assert benchmark.find_categories(root) == [root / "mvtec_ad" / "bottle", root / "mvtec_ad" / "zipper",
                                               root / "single"]
    with pytest.raises(AnomalyError, match="no dataset category"):
        benchmark.find_categories(root / "other")
    with pytest.raises(AnomalyError, match="does not exist"):
        benchmark.find_categories(root / "missing")


def test_grid_has_one_variant_for_pixel_gaussian(demo_root):
    runs = benchmark.plan_grid([demo_root], ["mvtecCAE", "pixel-gaussian"], ["ssim", "l2"], [0, 1])
    assert [(r.detector, r.variant, r.seed) for r in runs] == [
        ("mvtecCAE", "ssim", 0), ("mvtecCAE", "ssim", 1), ("mvtecCAE", "l2", 0), ("mvtecCAE", "l2", 1),
        ("pixel-gaussian", "none", 0), ("pixel-gaussian", "none", 1)]


def test_feature_detectors_vary_by_backbone(demo_root):
    runs = benchmark.plan_grid([demo_root], ["patchcore", "knn"], ["ssim"], [0],
                               backbones=["efficientnet_lite0", "mobilenet_v2"])
    assert [(r.detector, r.variant) for r in runs] == [
        ("patchcore", "efficientnet_lite0"), ("patchcore", "mobilenet_v2"),
        ("knn", "efficientnet_lite0"), ("knn", "mobilenet_v2")]
    settings = benchmark.resolve_settings(runs, None, None, None, "normal-only")
    assert settings[("knn", "mobilenet_v2")]["overrides"]["backbone"] == "mobilenet_v2"
    assert settings[("patchcore", "efficientnet_lite0")]["epochs"] is None  # fitted in one pass


@pytest.mark.parametrize("flag, value, needle", [("-a", "fooCAE", "--architectures"), ("-l", "huber", "--losses"),
                                                 ("--mode", "supervised", "--mode"),
                                                 ("--backbones", "vgg", "--backbones")])
def test_unknown_names_exit_2_before_anything_is_written(flag, value, needle, demo_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(benchmark_cli.main, _args(demo_root, out, flag, value)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err and value in err, err
    assert not out.exists()


def test_non_square_inputs_reach_every_run_and_the_size_column(demo_root):
    runs = benchmark.plan_grid([demo_root], ["padim", "pixel-gaussian"], ["ssim"], [0])
    settings = benchmark.resolve_settings(runs, None, 640, None, "normal-only", input_width=128)
    for setting in settings.values():
        assert setting["overrides"]["input_width"] == 128 and setting["input_size"] == "640x128"
    square = benchmark.resolve_settings(runs, None, 128, None, "normal-only")
    assert square[("padim", "efficientnet_lite0")]["input_size"] == 128
    with pytest.raises(AnomalyError, match="input_width: cutpaste"):
        benchmark.resolve_settings(benchmark.plan_grid([demo_root], ["cutpaste"], ["ssim"], [0]), None, 256, None,
                                   "normal-only", input_width=128)


def test_epochs_apply_to_the_detectors_whose_class_trains_epochs(demo_root, monkeypatch):
    from anomaly.detectors import detector_class

    runs = benchmark.plan_grid([demo_root], ["mvtecCAE", "feature-ae", "pixel-gaussian", "patchcore"], ["ssim"], [0])
    settings = benchmark.resolve_settings(runs, 3, None, None, "normal-only")
    epochs = {detector: s["epochs"] for (detector, _), s in settings.items()}
    assert epochs == {"mvtecCAE": 3, "feature-ae": 3, "pixel-gaussian": None, "patchcore": None}
    # The class decides, not a list in the benchmark.
    monkeypatch.setattr(detector_class("patchcore"), "trains_epochs", True, raising=False)
    assert benchmark.trains_epochs("patchcore")
    settings = benchmark.resolve_settings(runs, 3, None, None, "normal-only")
    assert settings[("patchcore", "efficientnet_lite0")]["epochs"] == 3
