"""The package installs whole: the YAML defaults ship in the wheel and are read from the installed copy."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from anomaly import config as config_module
from anomaly.config import load_train_config
from anomaly.errors import AnomalyError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
# What a wheel is built from; everything else in the checkout stays out of the copy.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "anomaly", "configs")


def test_the_repository_ships_the_defaults_files():
    assert {"default.yaml", "demo.yaml", "patchcore.yaml"} <= set(SHIPPED)


def test_defaults_are_read_from_the_package_resource():
    """The install in use (editable in a checkout) reads the repository's configs/ folder."""
    for name in SHIPPED:
        resource = config_module.CONFIG_DIR / name
        assert resource.is_file(), f"{resource}: missing; reinstall (pip install -e .)"
        assert resource.read_text() == (REPO / "configs" / name).read_text(), name


def test_every_detector_with_a_backbone_has_a_defaults_file():
    """load_train_config requires these files; the other detectors have none and may lack one."""
    from anomaly.detectors import list_detectors, uses_backbone

    missing = [n for n in list_detectors() if uses_backbone(n) and f"{n}.yaml" not in SHIPPED]
    assert not missing


@pytest.mark.parametrize("present", [False, True], ids=["no-folder", "empty-folder"])
def test_a_missing_default_yaml_is_an_error_not_a_fallback(tmp_path, monkeypatch, present):
    configs = tmp_path / "configs"
    if present:
        configs.mkdir()
    monkeypatch.setattr(config_module, "CONFIG_DIR", configs)
    with pytest.raises(AnomalyError) as exc:
        load_train_config({"data_dir": "x"})
    msg = str(exc.value)
    assert "\n" not in msg and str(configs / "default.yaml") in msg and "reinstall" in msg


def test_a_detector_with_a_backbone_needs_its_own_defaults_file(tmp_path, monkeypatch):
    (tmp_path / "default.yaml").write_text("")
    monkeypatch.setattr(config_module, "CONFIG_DIR", tmp_path)
    with pytest.raises(AnomalyError, match="patchcore.yaml: missing.*reinstall"):
        load_train_config({"data_dir": "x", "architecture": "patchcore"})
    # The autoencoders and the pixel baseline have none: default.yaml alone is complete.
    assert load_train_config({"data_dir": "x", "architecture": "mvtecCAE"}).color_mode == "grayscale"
    (tmp_path / "patchcore.yaml").write_text("color_mode: rgb\n")
    assert load_train_config({"data_dir": "x", "architecture": "patchcore"}).color_mode == "rgb"


# A fresh interpreter that imports `anomaly` from the installed wheel, prints where from, then
# runs anomaly-train with the given arguments (exit status as the entry point's). The checkout's
# editable install (a meta path finder) would supply whatever the wheel lacks: it is taken out.
_TRAIN = """
import json, sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
import anomaly, anomaly.config
from anomaly.cli import train
from anomaly.cli.common import run
print(json.dumps({"anomaly": anomaly.__file__, "configs": str(anomaly.config.CONFIG_DIR)}), flush=True)
sys.exit(run(train.main, sys.argv[1:]))
"""


def _run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`_TRAIN` with `site` first on sys.path and neither the checkout nor its folders on it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONPATH=str(site), PYTHONNOUSERSITE="1", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-c", _TRAIN, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_wheel_ships_the_yaml_defaults_and_trains_from_them(tmp_path, demo_root):
    setuptools = importlib.metadata.version("setuptools")
    assert int(setuptools.split(".")[0]) >= 77, f"setuptools {setuptools}: pip install -e '.[test]'"
    # Build from a copy, so that no build/ or egg-info folder of the checkout leaks into the wheel.
    src = tmp_path / "src"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
                    str(src)], check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("anomaly-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"anomaly/configs/{n}" for n in SHIPPED} <= names
    assert not [n for n in names if n.startswith("configs/")]  # no top-level package "configs"
    packages = {p.relative_to(REPO).as_posix() for p in (REPO / "anomaly").rglob("__init__.py")}
    assert packages - names == set()  # every package under anomaly/

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "-q", "--no-deps", "--no-compile", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    work = tmp_path / "work"
    work.mkdir()
    out = work / "models"
    args = ("-d", str(demo_root), "-a", "patchcore", "--weights", "random", "--input-size", "64", "-o", str(out),
            "-q")
    done = _run_installed(site, work, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    where = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
    assert Path(where["anomaly"]).is_relative_to(site), where  # not the checkout's (editable) copy
    assert Path(where["configs"]).resolve() == (site / "anomaly" / "configs").resolve(), where
    (saved,) = out.rglob("config.yaml")
    saved = yaml.safe_load(saved.read_text())
    assert (saved["architecture"], saved["color_mode"]) == ("patchcore", "rgb")  # patchcore.yaml, not default.yaml

    # The bug this guards against: an install without the YAML files trained on the wrong defaults.
    shutil.rmtree(site / "anomaly" / "configs")
    done = _run_installed(site, work, *args)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "default.yaml: missing" in done.stderr and "reinstall" in done.stderr, done.stderr[-3000:]
