"""A finetuned model as one self-contained graph: SavedModel, TFLite or ONNX.

The graph takes a uint8 (N, H, W, C) batch at the camera's size and does what `anomaly-predict`
does: the package's resize, the detector's maps, smoothing and normalisation, the image score,
and the decision. Two entry points (SavedModel signatures, TFLite signature runners):

- `serving_default(images)`: decides with the finetuned threshold and min area;
- `decide(images, threshold, min_area)`: with a threshold and min area of the caller's.

The ONNX model has the three inputs of `decide`; `threshold` and `min_area` hold the finetuned
values as defaults (initialisers), so a caller may leave them out.

Outputs, for every image: `score` (N,) float32, `map` (N, h, w) float32 at the model's input
size after post-processing, `mask` (N, h, w) bool (the regions of at least min_area pixels over
the threshold), `is_anomalous` (N,) bool and `anomalous_area` (N,) int32 (the mask's pixels, as
predictions.csv's anomalous_area_px).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import tensorflow as tf

from anomaly import modeldir
from anomaly.deploy import graph
from anomaly.errors import AnomalyError

FORMATS = ("saved_model", "tflite", "onnx")
RECORD_FILE = "export.json"
FILES = {"tflite": "model.tflite", "onnx": "model.onnx"}  # the saved_model format is a folder
OUTPUTS = ("score", "map", "mask", "is_anomalous", "anomalous_area")
ONNX_OPSET = 18  # ScatterND's max reduction


class ServingModule(tf.Module):
    """A finetuned `anomaly.api.Model` as a TensorFlow module with `serve` and `decide`.

    Args:
        model: the model (its detector and post-processing).
        image_size: (H, W) of the images the graph takes; the model's input size by default.
        reducer: how regions are labelled (`anomaly.deploy.graph.REDUCERS`), by the target format.
        batch_size: a fixed number of images per call (None: any).
        channels: the images' channels (1 grey, 3 RGB, 4 RGBA; default the model's), converted in
            the graph as the package converts them, e.g. RGB to grey with its own luma weights.
    """

    def __init__(self, model, image_size: tuple[int, int] | None = None, reducer: str = "segment",
                 batch_size: int | None = None, channels: int | None = None):
        super().__init__(name="anomaly")
        detector, pp = model.detector, model.postprocessor
        self.input_shape = tuple(detector.input_shape)
        self.image_size = tuple(image_size or self.input_shape[:2])
        self.threshold, self.min_area = float(pp.threshold), int(pp.min_area)
        self.batch_size = batch_size
        self.image_shape = (*self.image_size, channels or self.input_shape[-1])
        self._pp, self._reducer = pp, reducer
        self._maps = detector.map_function(pp.method, pp.dtype)
        self._own_scores = detector.score_function() if pp.image_score == "detector" else None
        images = tf.TensorSpec((batch_size, *self.image_shape), tf.uint8, name="images")

        # TFLite names a signature after its Python function: these two names are the ones it keeps.
        def serving_default(images):
            return self._decide(images, tf.constant(self.threshold, tf.float32), tf.constant(self.min_area, tf.int32))

        def decide(images, threshold, min_area):
            return self._decide(images, threshold, min_area)

        self.serve = tf.function(serving_default, input_signature=[images])
        self.decide = tf.function(decide, input_signature=[
            images, tf.TensorSpec((), tf.float32, name="threshold"), tf.TensorSpec((), tf.int32, name="min_area")])
        # The networks' weights, tracked so that tf.saved_model.save writes them.
        self.captured_variables = list(self.serve.get_concrete_function().variables)

    def _decide(self, images, threshold, min_area):
        pp = self._pp
        # A loaded SavedModel's signature does not check shapes: another size or channel count would be
        # reshaped into other images. (TFLite drops this check and its runners accept any shape; onnxruntime
        # checks the declared one.)
        images = tf.ensure_shape(images, (self.batch_size, *self.image_shape))
        x = graph.preprocess(images, self.input_shape)
        maps = graph.smooth(tf.cast(self._maps(x), tf.float32), pp.smooth)
        if pp.normalize:
            maps = (maps - tf.constant(pp.stats.mean)) / tf.constant(pp.stats.std)
        least = tf.cast(tf.maximum(min_area, 1), tf.float32)  # a region has at least one pixel
        mask = graph.regions_at_least(maps > threshold, least, self._reducer)
        if pp.image_score == "area":  # as the package: the area at the finetuned threshold
            score = tf.reduce_max(graph.component_areas(maps > pp.threshold, self._reducer), axis=[1, 2])
        elif pp.image_score == "mean":
            score = tf.reduce_mean(maps, axis=[1, 2])
        elif pp.image_score == "detector":
            score = tf.cast(self._own_scores(x), tf.float32)
        else:
            score = tf.reduce_max(graph.smooth(maps, pp.score_sigma), axis=[1, 2])
        return {"score": score, "map": maps, "mask": mask, "is_anomalous": tf.reduce_any(mask, axis=[1, 2]),
                "anomalous_area": tf.reduce_sum(tf.cast(mask, tf.int32), axis=[1, 2])}


def default_output(model_dir: Path, fmt: str) -> Path:
    """A new `<model dir>/export/<format>` (with `_1`, `_2`, ... when that one exists)."""
    return modeldir.unused_folder(Path(model_dir) / "export" / fmt)


def export(model, fmt: str, out: str | Path | None = None, image_size: tuple[int, int] | None = None,
           batch_size: int | None = None, channels: int | None = None) -> Path:
    """Write the model as one graph in `fmt`; returns the folder written.

    Args:
        model: a finetuned `anomaly.api.Model` (`anomaly.load`).
        fmt: one of `FORMATS`.
        out: the folder to create (it must not exist, or be empty); default `default_output`.
        image_size: (H, W) of the images the graph will take (default: the model's input size).
        batch_size: a fixed number of images per call (default: any). A fixed batch gives a converter
            static shapes everywhere, which TFLite needs for some networks (baselineCAE, inceptionCAE).
        channels: the channels of the images the graph will take: 1, 3 or 4 (default: the model's).
            A grey model judging RGB photographs should take them as RGB: the graph turns them grey
            as the package does, where a grey uint8 image made elsewhere is rounded differently.

    Raises:
        AnomalyError: an unknown format, a detector or map that cannot be exported, a converter
            that is not installed, or an output folder that holds files. Nothing is written then.
    """
    if fmt not in FORMATS:
        raise AnomalyError(f"unknown format '{fmt}': expected one of {', '.join(FORMATS)}", "format")
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
        raise AnomalyError(f"expected a height and a width >= 1, got {image_size}", "image_size")
    if channels is not None and channels not in (1, 3, 4):
        raise AnomalyError(f"expected 1 (grey), 3 (RGB) or 4 (RGBA), got {channels}", "channels")
    if batch_size is not None and batch_size < 1:
        raise AnomalyError(f"expected a positive number of images, got {batch_size}", "batch_size")
    if fmt == "onnx":
        _onnx_modules()  # a missing converter is reported before any work
    if out is None and model.directory is None:
        raise AnomalyError("the model has no directory to export into: name an output folder", "out")
    out = Path(out) if out is not None else default_output(model.directory, fmt)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AnomalyError(f"{out} already exists and is not an empty folder; name a new one", "out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AnomalyError(f"cannot write {out} ({exc.strerror or exc})", "out") from None
    with modeldir.replace_folder(out) as staging:  # written whole under a temporary name, or not at all
        module = ServingModule(model, image_size, "scatter" if fmt == "onnx" else "segment", batch_size,
                               channels)
        _WRITERS[fmt](module, staging)
        _write_record(staging, module, model, fmt)
    return out


def _write_saved_model(module: ServingModule, folder: Path) -> None:
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve, "decide": module.decide})


def _write_tflite(module: ServingModule, folder: Path) -> None:
    # From the functions rather than a SavedModel: given both signatures, from_saved_model kept only the first.
    functions = [module.serve.get_concrete_function(), module.decide.get_concrete_function()]
    converter = tf.lite.TFLiteConverter.from_concrete_functions(functions, module)
    try:
        flatbuffer = converter.convert()
    except Exception as exc:  # noqa: BLE001 - the converter raises many kinds; the message is what matters
        hint = "" if module.batch_size else " (a fixed --batch-size, e.g. 1, gives it the static shapes it may need)"
        raise AnomalyError(f"TFLite cannot convert this model: {_first_line(exc)}{hint}", "format") from None
    (folder / FILES["tflite"]).write_bytes(flatbuffer)


def _write_onnx(module: ServingModule, folder: Path) -> None:
    onnx, tf2onnx = _onnx_modules()
    spec = module.decide.input_signature
    try:
        proto, _ = tf2onnx.convert.from_function(module.decide, input_signature=spec, opset=ONNX_OPSET)
    except Exception as exc:  # noqa: BLE001 - as above
        raise AnomalyError(f"tf2onnx cannot convert this model: {_first_line(exc)}", "format") from None
    # An initialiser named like an input is that input's default (ONNX IR >= 4): callers may omit them.
    defaults = {"threshold": np.array(module.threshold, np.float32), "min_area": np.array(module.min_area, np.int32)}
    for graph_input in proto.graph.input:
        name = graph_input.name.split(":")[0]
        if name in defaults:
            proto.graph.initializer.append(onnx.numpy_helper.from_array(defaults[name], graph_input.name))
    onnx.save(proto, str(folder / FILES["onnx"]))


_WRITERS = {"saved_model": _write_saved_model, "tflite": _write_tflite, "onnx": _write_onnx}


def _onnx_modules():
    try:
        import onnx
        import tf2onnx
    except ImportError as exc:
        raise AnomalyError(f"the onnx format needs tf2onnx and onnx ({exc}); install them with "
                           "pip install -e '.[export]'", "format") from None
    return onnx, tf2onnx


def _first_line(exc: Exception) -> str:
    """The converter's own reason: its first "error: ..." line (MLIR prefixes it with a source location)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = next((line[line.index("error: ") + 7:] for line in lines if "error: " in line), lines[0] if lines else "")
    return reason[:300] or type(exc).__name__


def _write_record(folder: Path, module: ServingModule, model, fmt: str) -> None:
    from anomaly import __version__

    pp, detector = model.postprocessor, model.detector
    modeldir.write_json(folder / RECORD_FILE, {
        "format": fmt, "file": FILES.get(fmt, "."),
        "model": str(Path(model.directory).resolve()) if model.directory is not None else None,
        "detector": detector.name, "method": pp.method, "dtype": pp.dtype, "image_score": pp.image_score,
        "images": {"dtype": "uint8", "shape": [module.batch_size, *module.image_shape]},
        "input_shape": list(module.input_shape), "threshold": module.threshold, "min_area": module.min_area,
        "outputs": list(OUTPUTS), "signatures": ["serving_default", "decide"] if fmt != "onnx" else ["main"],
        "anomaly_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
