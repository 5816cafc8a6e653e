"""The Python API: `anomaly.load(...).predict(...)`, the detector classes, and models that travel."""

from __future__ import annotations

import csv
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import anomaly
from anomaly.cli import finetune as finetune_cli
from anomaly.cli import test as test_cli
from anomaly.cli import train as train_cli
from anomaly.cli.common import run
from tests.conftest import train_args

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(patchcore_dir, demo_root, tmp_path, monkeypatch, capsys):
    text = README.read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    readme_model = re.search(r'anomaly\.load\("([^"]+)"\)', code).group(1)
    code = code.replace(readme_model, str(patchcore_dir)).replace('"demo_data/brick', f'"{demo_root}')
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README's example
    result, maps = namespace["result"], namespace["maps"]
    assert result.scores.shape == (2,) and result.is_anomalous.dtype == bool
    assert result.maps.shape == result.masks.shape == (2, 64, 64)
    assert maps.shape == (2, 256, 256)
    reloaded = anomaly.Detector.load(tmp_path / "my_patchcore")
    np.testing.assert_array_equal(reloaded.anomaly_maps(namespace["images"][:2]), maps)


def test_predict_gives_the_scores_and_decisions_of_anomaly_test(patchcore_dir, demo_root):
    assert test_cli.main(["-p", str(patchcore_dir), "-q"]) == 0
    (predictions,) = patchcore_dir.glob("test/*/predictions.csv")
    rows = list(csv.DictReader(io.StringIO(predictions.read_text())))
    model = anomaly.load(patchcore_dir)
    result = model.predict([demo_root / r["image"] for r in rows])
    np.testing.assert_allclose(result.scores, [float(r["score"]) for r in rows], rtol=1e-5)
    assert result.is_anomalous.astype(int).tolist() == [int(r["predicted"]) for r in rows]
    # An array of uint8 images of another size gives decisions too, and batches agree with one call.
    images = (np.random.default_rng(0).random((3, 80, 80, 3)) * 255).astype(np.uint8)
    whole = model.predict(images)
    batches = list(model.predict_batches(images, batch_size=2))
    np.testing.assert_allclose(np.concatenate([b.scores for b in batches]), whole.scores, rtol=1e-6)
    strict = model.predict(images, threshold=-1.0, min_area=1)
    assert strict.is_anomalous.all() and strict.threshold == -1.0


def test_every_detector_class_is_exported():
    for name in ("PatchCore", "PaDiM", "FRE", "FRETiedAE", "KNN", "KMeans", "FeatureAE", "CutPaste",
                 "PixelGaussian", "MvtecCAE", "BaselineCAE", "InceptionCAE", "ResnetCAE", "SkipCAE"):
        cls = getattr(anomaly, name)
        assert issubclass(cls, anomaly.Detector) and cls.name in anomaly.list_detectors()


def test_a_model_whose_data_moved_still_loads_predicts_and_tests_with_d(patchcore_dir, demo_root, tmp_path, capsys):
    model_dir = shutil.copytree(patchcore_dir, tmp_path / "model")
    config = model_dir / "config.yaml"
    gone = tmp_path / "gone"
    config.write_text(config.read_text().replace(str(demo_root), str(gone)))
    image = next((demo_root / "test" / "good").iterdir())
    assert anomaly.load(model_dir).predict([image]).scores.shape == (1,)
    assert run(test_cli.main, ["-p", str(model_dir), "-q"]) == 2
    err = capsys.readouterr().err
    assert str(gone) in err and "-d" in err and "\n" not in err.strip()
    assert test_cli.main(["-p", str(model_dir), "-d", str(demo_root), "-q"]) == 0
    assert finetune_cli.main(["-p", str(model_dir), "-d", str(demo_root), "-q"]) == 0


def test_load_needs_a_finetuned_model(demo_root, tmp_path):
    assert train_cli.main(train_args(demo_root, tmp_path, "-a", "pixel-gaussian")) == 0
    (model_dir,) = [p.parent for p in tmp_path.rglob("config.yaml")]
    with pytest.raises(anomaly.AnomalyError, match="not finetuned"):
        anomaly.load(model_dir)


def test_a_model_directory_from_before_detector_yaml_still_loads(patchcore_dir, demo_root, tmp_path):
    old = shutil.copytree(patchcore_dir, tmp_path / "old")
    (old / "detector.yaml").unlink()  # as main wrote model directories before the detector contract
    images = sorted((demo_root / "test" / "good").iterdir())[:2]
    np.testing.assert_array_equal(anomaly.load(old).predict(images).scores,
                                  anomaly.load(patchcore_dir).predict(images).scores)
