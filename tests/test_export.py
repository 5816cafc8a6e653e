"""anomaly-export: one graph per finetuned model whose scores, maps and decisions are the package's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from scipy import ndimage

import anomaly
from anomaly import modeldir
from anomaly.api import Model
from anomaly.cli import export as export_cli
from anomaly.cli import finetune as finetune_cli
from anomaly.cli.common import run
from anomaly.data.io import conform, read_images
from anomaly.deploy import graph
from anomaly.deploy.export import FILES, FORMATS, RECORD_FILE, export
from anomaly.detectors import detector_class, list_detectors
from anomaly.errors import AnomalyError
from anomaly.postprocessing import PostProcessor, largest_region_areas, segment, smooth_maps
from tests.conftest import SHARED_DATA

BOTTLE = SHARED_DATA / "mvtec_ad" / "bottle"
SHAPE = (64, 64, 3)
_STRUCTURE = np.zeros((3, 3, 3), bool)
_STRUCTURE[1] = True


def _export(*argv: str) -> int:
    return run(export_cli.main, list(argv))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# ---------------------------------------------------------------- the graph's operations


def _areas_scipy(binary: np.ndarray) -> np.ndarray:
    labels, _ = ndimage.label(binary, structure=_STRUCTURE)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return counts[labels]


def _spiral(size: int) -> np.ndarray:
    """One 1-pixel-wide spiral corridor: the longest path a region of that size can have."""
    out = np.zeros((size, size), bool)
    top, left, bottom, right = 0, 0, size - 1, size - 1
    while top <= bottom and left <= right:
        out[top, left:right + 1] = True
        out[top:bottom + 1, right] = True
        out[bottom, left:right + 1] = True
        out[top + 2:bottom + 1, left] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
        if top <= bottom:
            out[top - 1, left] = True  # the link into the next ring
    return out


@pytest.mark.parametrize("reducer", graph.REDUCERS)
def test_component_areas_are_scipys_8_connected_regions(reducer):
    rng = np.random.default_rng(0)
    blobs = ndimage.gaussian_filter(rng.random((3, 48, 40)), (0, 2, 2)) > 0.5
    diagonal = np.eye(48, 40, dtype=bool)[None]  # one region through corners only (8-connectivity)
    spiral = _spiral(40)[None, :, :40]
    for binary in (blobs, diagonal, np.pad(spiral, ((0, 0), (0, 8), (0, 0))), np.zeros((2, 48, 40), bool)):
        got = graph.component_areas(tf.constant(binary), reducer).numpy()
        np.testing.assert_array_equal(got, _areas_scipy(binary))
    maps = rng.random((4, 48, 40)).astype(np.float32)
    largest = graph.component_areas(tf.constant(maps > 0.6), reducer).numpy().max(axis=(1, 2))
    np.testing.assert_array_equal(largest, largest_region_areas(maps, 0.6))


@pytest.mark.parametrize(("size", "channels", "shape"), [
    ((300, 220), 3, (64, 48, 3)), ((40, 30), 1, (64, 48, 1)), ((64, 48), 3, (64, 48, 3)),  # down, up, as is
    ((300, 220), 3, (64, 48, 1)), ((64, 48), 1, (64, 48, 3)), ((50, 60), 4, (64, 48, 3))])  # RGB->grey, grey->RGB, RGBA
def test_the_graphs_preprocessing_is_the_packages_reading(size, channels, shape):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, *size, channels), dtype=np.uint8)
    expected = np.stack([conform(image, shape) for image in images])
    np.testing.assert_allclose(graph.preprocess(tf.constant(images), shape).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("reducer", graph.REDUCERS)
def test_regions_of_a_least_area_are_the_packages_segmentation(reducer):
    maps = ndimage.gaussian_filter(np.random.default_rng(5).random((5, 40, 48)), (0, 2, 2)).astype(np.float32)
    maps[1] = 0.0  # no pixel over the threshold
    for least in (1, 30, 400, 10_000):  # 10,000: no image can hold such a region
        got = graph.regions_at_least(tf.constant(maps > 0.5), tf.constant(float(least)), reducer).numpy()
        np.testing.assert_array_equal(got, segment(maps, 0.5, least))


def test_the_graphs_smoothing_is_the_packages():
    maps = np.random.default_rng(2).random((2, 40, 56)).astype(np.float32)
    for sigma in (0.0, 1.5, 4.0):
        np.testing.assert_allclose(graph.smooth(tf.constant(maps), sigma).numpy(), smooth_maps(maps, sigma),
                                   atol=1e-6)


# ---------------------------------------------------------------- score parity on bottle

# Every detector but those that differ from another only in training: the four mvtecCAE variants
# (their networks; checked by hand, docs/export.md) and fre-tae (FRE's maps, its PCA learned by Keras).
PARITY = [name for name in list_detectors() if name not in ("baselineCAE", "inceptionCAE", "resnetCAE", "skipCAE",
                                                            "fre-tae")]
# A rule passed at run time, checked in every format for a detector of each kind of map.
OVERRIDE = ("mvtecCAE", "patchcore", "knn")
# Post-processing options that exercise the graph's other branches (defaults elsewhere).
OPTIONS = {"pixel-gaussian": {"smooth": 2.0, "normalize": True}, "padim": {"image_score": "area"},
           "fre": {"image_score": "max", "score_sigma": 2.0}}


@pytest.fixture(scope="module")
def bottle():
    """12 + 8 training images at 64 px, and 14 test images as uint8 at their 256 px (good and defective)."""
    if not BOTTLE.is_dir():
        pytest.skip("../shared/data is absent")
    train = sorted((BOTTLE / "train" / "good").glob("*.png"))[:20]
    test = sorted(BOTTLE.glob("test/*/*.png"))[::6]
    raw = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in test])
    return read_images(train, "rgb", SHAPE[:2]), test, raw


@pytest.fixture(scope="module")
def fitted(bottle, tmp_path_factory):
    """A small finetuned model per detector, made once."""
    images, _, _ = bottle
    cache: dict[str, Model] = {}

    def make(name: str) -> Model:
        if name not in cache:
            cls = detector_class(name)
            params = {"input_shape": SHAPE}
            if cls.uses_backbone:
                params["weights"] = "imagenet"  # random weights make distances ill-conditioned in float32
            if cls.trains_epochs:
                params["epochs"] = (1, 1) if name == "cutpaste" else 1
            if cls.family == "autoencoder":
                params["lr"] = 1e-3  # no range test
            try:
                detector = cls(**params).fit(images[:12], images[12:])
            except AnomalyError as exc:
                pytest.skip(f"cannot build {name} here: {exc}")
            pp = PostProcessor.for_detector(detector, **OPTIONS.get(name, {}))
            pp.fit_stats(detector.anomaly_maps(images[:12], pp.method, pp.dtype))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # 8 validation images: the rate is coarse, not wrong
                pp.fit(detector.anomaly_maps(images[12:], pp.method, pp.dtype))
            cache[name] = Model(detector, pp, tmp_path_factory.mktemp(name))
        return cache[name]

    return make


def _run_exported(folder: Path, fmt: str, images: np.ndarray, rule: tuple[float, int] | None = None) -> dict:
    """The exported graph's outputs, run by its own runtime (`rule`: threshold and min area to pass)."""
    if fmt == "saved_model":
        loaded = tf.saved_model.load(str(folder))
        if rule is None:
            out = loaded.signatures["serving_default"](images=tf.constant(images))
        else:
            out = loaded.signatures["decide"](images=tf.constant(images), threshold=tf.constant(rule[0], tf.float32),
                                              min_area=tf.constant(rule[1], tf.int32))
        return {k: v.numpy() for k, v in out.items()}
    if fmt == "tflite":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation in favour of ai-edge-litert
            interpreter = tf.lite.Interpreter(str(folder / FILES["tflite"]))
        if rule is None:
            return interpreter.get_signature_runner("serving_default")(images=images)
        return interpreter.get_signature_runner("decide")(images=images, threshold=np.float32(rule[0]),
                                                          min_area=np.int32(rule[1]))
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(folder / FILES["onnx"]))
    feed = {"images": images} if rule is None else {"images": images, "threshold": np.array(rule[0], np.float32),
                                                    "min_area": np.array(rule[1], np.int32)}
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


@pytest.mark.shared
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", PARITY)
def test_exported_scores_maps_and_decisions_equal_the_packages(name, fmt, bottle, fitted, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("tf2onnx")
    model = fitted(name)
    _, paths, raw = bottle
    expected = model.predict(paths)  # read and resized by the package from the 256 px files
    folder = export(model, fmt, tmp_path / "out", image_size=raw.shape[1:3])
    got = _run_exported(folder, fmt, raw)
    scale = np.abs(expected.scores).max()
    np.testing.assert_allclose(got["score"], expected.scores, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(got["map"], expected.maps, rtol=1e-4, atol=1e-4 * np.abs(expected.maps).max())
    np.testing.assert_array_equal(got["is_anomalous"], expected.is_anomalous)
    record = json.loads((folder / RECORD_FILE).read_text())
    assert (record["detector"], record["threshold"], record["min_area"]) == (
        name, model.postprocessor.threshold, model.postprocessor.min_area)
    assert np.array_equal(got["anomalous_area"], expected.masks.sum(axis=(1, 2)))
    if name not in OVERRIDE:
        return
    # Another rule, passed at run time: the package's decisions under the same override.
    # Midway between two map values: a threshold on a value itself would let float rounding decide.
    values = np.unique(expected.maps)
    i = int(0.9 * (len(values) - 1))
    threshold = float(values[i] + values[i + 1]) / 2
    override = model.predict(paths, threshold=threshold, min_area=20)
    got = _run_exported(folder, fmt, raw, (threshold, 20))
    np.testing.assert_array_equal(got["is_anomalous"], override.is_anomalous)
    assert np.mean(got["mask"] == override.masks) > 0.999  # pixels on the threshold itself may round either way
    # A rule no image meets: the batch has no image to label.
    got = _run_exported(folder, fmt, raw, (float(expected.maps.max()) + 1.0, 1))
    assert not got["is_anomalous"].any() and not got["mask"].any() and not got["anomalous_area"].any()


# ---------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def finetuned(trained, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export-model") / "model"
    shutil.copytree(trained, path)
    assert finetune_cli.main(["-p", str(path), "-q"]) == 0
    return path


def test_anomaly_export_writes_a_saved_model_that_runs_without_the_package(finetuned, tmp_path, capsys):
    assert _export("-p", str(finetuned), "-f", "saved_model", "--image-size", "80", "72") == 0
    folder = finetuned / "export" / "saved_model"
    assert capsys.readouterr().out.strip() == f"saved: {folder}"
    assert [p.name for p in folder.parent.iterdir()] == ["saved_model"]  # no temporary left
    channels = anomaly.load(finetuned).detector.input_shape[-1]
    images = np.random.default_rng(3).integers(0, 256, (3, 80, 72, channels), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    # The README's lines, in a Python that cannot import anomaly.
    script = ("import sys; sys.modules['anomaly'] = None\n"
              "import json, numpy as np, tensorflow as tf\n"
              f"model = tf.saved_model.load({str(folder)!r})\n"
              f"images = tf.constant(np.load({str(tmp_path / 'images.npy')!r}))\n"
              "out = model.signatures['serving_default'](images=images)\n"
              "print(json.dumps([out['score'].numpy().tolist(), out['is_anomalous'].numpy().tolist()]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    scores, decisions = json.loads(done.stdout.strip().splitlines()[-1])
    expected = anomaly.load(finetuned).predict(images)
    np.testing.assert_allclose(scores, expected.scores, rtol=1e-4)
    assert decisions == expected.is_anomalous.tolist()
    # A second export of the format goes to a new folder: the first is kept.
    assert _export("-p", str(finetuned), "-f", "saved_model") == 0
    assert (finetuned / "export" / "saved_model_1" / RECORD_FILE).is_file()
    assert json.loads((folder / RECORD_FILE).read_text())["images"]["shape"] == [None, 80, 72, channels]
    # Images of another shape are refused, not reshaped into other images.
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        tf.saved_model.load(str(folder)).signatures["serving_default"](
            images=tf.zeros((3, 80, 72, 4 - channels), tf.uint8))


def test_a_model_without_finetuning_is_refused_and_nothing_is_written(trained, capsys):
    assert not modeldir.finetune_results(trained)
    assert _export("-p", str(trained), "-f", "saved_model") == 2
    assert "not finetuned" in _one_line_error(capsys)
    assert not (trained / "export").exists()


def test_an_output_folder_with_files_is_refused_and_kept(finetuned, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert _export("-p", str(finetuned), "-f", "tflite", "-o", str(out)) == 2
    assert "-o/--out" in _one_line_error(capsys)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert _export("-p", str(finetuned), "-f", "tflite", "--image-size", "0", "64") == 2
    assert "--image-size" in _one_line_error(capsys)


def test_a_map_that_cannot_be_exported_names_why():
    detector = detector_class("cutpaste")(input_shape=SHAPE, weights="random")
    with pytest.raises(AnomalyError, match="gradcam maps cannot be exported"):
        detector.map_function("gradcam", "float64")
    with pytest.raises(AnomalyError, match="unknown format 'pt'"):
        export(None, "pt")


def test_a_format_that_cannot_take_a_model_says_why_and_writes_nothing(tmp_path):
    # baselineCAE's upsampling leaves its convolutions without static shapes, which TFLite's need.
    detector = detector_class("baselineCAE")(input_shape=SHAPE)
    detector.model  # noqa: B018 - built untrained: the conversion is what is tested
    pp = PostProcessor.for_detector(detector, threshold=0.5, min_area=10)
    model = Model(detector, pp, tmp_path)
    with pytest.raises(AnomalyError, match=r"^format: TFLite cannot convert this model: 'tf.Conv2D' op is "
                                           r"neither .* \(a fixed --batch-size, e.g. 1, gives it"):
        export(model, "tflite", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    # With a fixed batch of one image it converts, and judges as the package does.
    folder = export(model, "tflite", tmp_path / "out", batch_size=1)
    image = np.random.default_rng(4).integers(0, 256, (1, *SHAPE), dtype=np.uint8)
    got = _run_exported(folder, "tflite", image)
    np.testing.assert_allclose(got["score"], model.predict(image).scores, rtol=1e-4)
    assert json.loads((folder / RECORD_FILE).read_text())["images"]["shape"] == [1, *SHAPE]
