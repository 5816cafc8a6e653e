"""Images/s of a model exported by `anomaly-export` against the package, in the same run.

For each finetuned model: the package judges the image files as `anomaly-predict` does
(`Model.predict_batches` on paths: decoding, resizing, maps, decisions), then the same images
already decoded to a uint8 array; then each exported format judges that array through its own
runtime (TensorFlow, the TFLite interpreter, onnxruntime). Every path runs in batches of
`--batch-size`, one warm-up batch first, one path at a time; the largest score difference from
the package is printed beside each rate. Export itself is timed too.

Example (the figures in docs/export.md):
    python scripts/benchmark_export.py -p MODEL_DIR [MODEL_DIR ...] \
        -i ../shared/data/mvtec_ad/bottle/test -o /tmp/export-bench
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np


def _rate(fn, images, batch_size: int) -> tuple[float, np.ndarray]:
    """Images/s of `fn` (batch -> scores) over `images` after one warm-up batch, and the scores."""
    fn(images[:batch_size])
    start = time.perf_counter()
    scores = np.concatenate([fn(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    return len(images) / (time.perf_counter() - start), scores


def _runner(fmt: str, folder: Path):
    import tensorflow as tf

    if fmt == "saved_model":
        serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
        return lambda batch: serve(images=tf.constant(batch))["score"].numpy()
    if fmt == "tflite":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runner = tf.lite.Interpreter(str(folder / "model.tflite"), num_threads=None).get_signature_runner(
                "serving_default")
        return lambda batch: runner(images=batch)["score"]
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return lambda batch: session.run(["score"], {"images": batch})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", "--paths", nargs="+", required=True, help="finetuned model directories")
    parser.add_argument("-i", "--images", required=True, type=Path, help="a folder of images (searched recursively)")
    parser.add_argument("-o", "--out", required=True, type=Path, help="work folder (exports and results.json)")
    parser.add_argument("-b", "--batch-size", type=int, default=32)
    parser.add_argument("--formats", nargs="+", default=["saved_model", "tflite", "onnx"])
    args = parser.parse_args()

    from PIL import Image

    import anomaly
    from anomaly.benchmark.machine import machine_facts
    from anomaly.data.io import is_image_file
    from anomaly.deploy.export import export

    files = sorted(p for p in args.images.rglob("*") if is_image_file(p))
    rows = []
    for path in args.paths:
        model = anomaly.load(path)
        # As the camera gives them: the graph turns colour grey for a grey model, as the package does.
        raw = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        name = model.detector.name

        def from_files(batch_paths, model=model):
            return next(model.predict_batches([str(p) for p in batch_paths], batch_size=len(batch_paths))).scores

        def from_array(batch, model=model):
            return next(model.predict_batches(batch, batch_size=len(batch))).scores

        rate, reference = _rate(from_files, files, args.batch_size)
        rows.append({"detector": name, "path": "anomaly-predict (files)", "images_per_second": rate})
        rate, _ = _rate(from_array, raw, args.batch_size)
        rows.append({"detector": name, "path": "package (uint8 array)", "images_per_second": rate})
        for fmt in args.formats:
            start = time.perf_counter()
            folder = export(model, fmt, args.out / f"{name}-{fmt}-{int(time.time())}", image_size=raw.shape[1:3],
                            channels=3)
            seconds = time.perf_counter() - start
            rate, scores = _rate(_runner(fmt, folder), raw, args.batch_size)
            diff = float(np.max(np.abs(scores - reference) / np.maximum(np.abs(reference), 1e-12)))
            rows.append({"detector": name, "path": fmt, "images_per_second": rate, "export_seconds": seconds,
                         "max_relative_score_difference": diff})
        for row in rows[-2 - len(args.formats):]:
            print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"images": len(files), "image_size": list(raw.shape[1:]),
                                                       "batch_size": args.batch_size, "runs": rows,
                                                       "machine": machine_facts()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
