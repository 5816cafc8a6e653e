"""--cluster: benchmark grids and batch prediction on a real local Ray cluster give the rows the
local path gives; a failed run is tried once more, then recorded."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from anomaly import modeldir
from anomaly.cli import benchmark as benchmark_cli
from anomaly.cli import finetune as finetune_cli
from anomaly.cli import predict as predict_cli
from anomaly.cli.common import run

ray = pytest.importorskip("ray", reason="the [cluster] extra (Ray) is not installed: pip install -e '.[cluster]'")

# Columns that measure the run (time, memory) or name its timestamped folder, not its outcome.
MEASURED = {"run_seconds", "fit_seconds", "test_images_per_second", "peak_memory_mb", "model_dir"}


def _csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def model_dir(trained, tmp_path_factory) -> Path:
    """A finetuned copy of the session's trained mvtecCAE."""
    path = tmp_path_factory.mktemp("cluster-model") / "model"
    shutil.copytree(trained, path)
    assert finetune_cli.main(["-p", str(path), "-q"]) == 0
    assert modeldir.finetune_results(path)
    return path


def test_predict_on_ray_writes_the_local_rows_errors_and_pictures(model_dir, demo_root, tmp_path):
    images = shutil.copytree(demo_root / "test", tmp_path / "images")
    (images / "good" / "broken.png").write_bytes(b"not a png")  # an error row, not a stopped run
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert run(predict_cli.main, ["-p", str(model_dir), str(images), "-o", str(local), "-b", "4", "-q",
                                  "--save"]) == 1
    # --cluster local starts a Ray cluster on this machine for the run and stops it after.
    assert run(predict_cli.main, ["-p", str(model_dir), str(images), "-o", str(on_ray), "-b", "4", "-q",
                                  "--save", "--cluster", "local", "--workers", "2"]) == 1
    assert not ray.is_initialized()
    rows = (on_ray / "predictions.csv").read_text()
    assert rows == (local / "predictions.csv").read_text()  # same images, order, scores and decisions
    assert len(rows.splitlines()) == 1 + len(list(images.rglob("*.png"))) - 1
    assert (on_ray / "errors.csv").read_text() == (local / "errors.csv").read_text()
    pictures = sorted(p.relative_to(on_ray) for p in on_ray.rglob("*") if p.suffix in (".png", ".npy"))
    assert pictures == sorted(p.relative_to(local) for p in local.rglob("*") if p.suffix in (".png", ".npy"))
    assert len(pictures) == 2 * (len(rows.splitlines()) - 1)


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster (2 CPUs, loopback) for the tests below; `--cluster local` joins it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_grid_on_ray_records_the_rows_of_the_local_grid(cluster, demo_root, tmp_path, capsys):
    flags = ["-d", str(demo_root), "--input-size", "64", "-a", "pixel-gaussian", "-q"]
    assert run(benchmark_cli.main, [*flags, "-o", str(tmp_path / "local"), "--seeds", "1"]) == 0
    # Two runs at once, one per CPU of the cluster.
    assert run(benchmark_cli.main, [*flags, "-o", str(tmp_path / "ray"), "--seeds", "0", "1", "--cluster", "local",
                                    "--cpus-per-run", "1"]) == 0
    (local,), on_ray = _csv(tmp_path / "local" / "results.csv"), _csv(tmp_path / "ray" / "results.csv")
    assert [r["seed"] for r in on_ray] == ["0", "1"] and all(r["status"] == "ok" for r in on_ray)
    assert {k: v for k, v in on_ray[1].items() if k not in MEASURED} == \
           {k: v for k, v in local.items() if k not in MEASURED}
    for r in on_ray:
        assert (tmp_path / "ray" / r["model_dir"] / "test").is_dir()
        assert (tmp_path / "ray" / "plots" / f"{r['dataset']}_{r['category']}_pixel-gaussian_none_s{r['seed']}"
                / "roc.png").is_file()
    capsys.readouterr()
    # Re-running skips the finished runs, as the local path does.
    assert run(benchmark_cli.main, [*flags[:-1], "-o", str(tmp_path / "ray"), "--seeds", "0", "1",
                                    "--cluster", "local"]) == 0
    assert capsys.readouterr().out.count("skipped (done in results.csv)") == 2


def test_a_failed_run_is_tried_once_more_then_recorded_and_the_grid_goes_on(cluster, demo_root, tmp_path):
    from anomaly.benchmark import plan_grid, resolve_settings
    from anomaly.benchmark.cluster import Resources, run_on_ray

    runs = plan_grid([demo_root], ["pixel-gaussian"], ["ssim"], [0, 1, 2], ["efficientnet_lite0"])
    settings = resolve_settings(runs, None, 64, None, "synthetic", None, None, None, None, None)
    attempts = tmp_path / "attempts"
    attempts.mkdir()

    def flaky(run, cell, output_dir):
        """Sent by value to the Ray workers: seed 0's task dies every time, seed 1's run fails once."""
        mark = attempts / f"{run.seed}-{len(list(attempts.glob(f'{run.seed}-*')))}"
        mark.write_text(str(cell["threads"]))
        if run.seed == 0:
            raise RuntimeError("worker lost")
        if mark.name == "1-0":
            return {"status": "error", "error": "out of memory"}
        return {"status": "ok", "error": "", "image_auroc": 0.5}

    events = [(r.seed, result["status"], attempt)
              for r, result, _, attempt in run_on_ray(runs, settings, tmp_path, Resources(1.0), "local", flaky)]
    assert sorted(events) == [(0, "error", 1), (0, "error", 2), (1, "error", 1), (1, "ok", 2), (2, "ok", 1)]
    assert sorted(p.name for p in attempts.iterdir()) == ["0-0", "0-1", "1-0", "1-1", "2-0"]
    assert {p.read_text() for p in attempts.iterdir()} == {"1"}  # TensorFlow threads = the CPUs asked for


@pytest.mark.parametrize(("argv", "needle"), [
    (["--cluster", "tcp://x"], "--cluster: expected one of local, auto, ray://HOST:PORT, got 'tcp://x'"),
    (["--cpus-per-run", "2"], "--cpus-per-run: needs --cluster (a run's resources are asked of Ray)"),
    (["--cluster", "local", "--cpus-per-run", "0"], "--cpus-per-run: expected a positive number, got 0"),
    (["--cluster", "local", "--gpus-per-run", "-0.5"], "--gpus-per-run: expected a non-negative number, got -0.5"),
])
def test_bad_cluster_flags_are_one_line_exit_2_before_anything_is_written(argv, needle, demo_root, tmp_path,
                                                                          capsys):
    out = tmp_path / "out"
    assert run(benchmark_cli.main, ["-d", str(demo_root), "-a", "pixel-gaussian", "-o", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {needle}" and not out.exists()


def test_predict_workers_need_the_cluster_flag(model_dir, demo_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(predict_cli.main, ["-p", str(model_dir), str(demo_root / "test"), "-o", str(out),
                                  "--workers", "2"]) == 2
    assert capsys.readouterr().err.strip() == "error: --workers: needs --cluster (the Ray workers to judge with)"
    assert not out.exists()
