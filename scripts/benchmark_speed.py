"""Speed of training and testing detectors on a real dataset, on this machine's CPU or GPU, with machine facts.

Measures, per detector and setting:
- training: for the autoencoders, seconds per epoch (the mean of the epochs after the first,
  which pays for tracing) with the real input pipeline (cached images, augmentation, prefetch);
  for CutPaste, its whole fit (pretext training and densities) divided by its epochs; for the
  feature detectors (PatchCore, PaDiM), the whole fit, which is one pass over the images;
- test images per second end to end: reading and resizing the test images, the anomaly maps and
  connected components, after one warm-up pass (the best of 3).
Settings are the training options `precision` (float32, mixed_float16 for GPUs, mixed_bfloat16
for CPUs with AMX/AVX512-BF16) and XLA (`+xla`: `jit_compile`); a detector without an option
is measured once, in float32. The machine facts name the CPU (AVX-512, oneDNN) and the GPUs.

Examples:
    python scripts/benchmark_speed.py --data ../shared/data/mvtec_ad/bottle \
        --detectors mvtecCAE patchcore padim cutpaste --settings float32 mixed_float16 float32+xla \
        mixed_float16+xla --out docs/benchmarks
    python scripts/benchmark_speed.py --input-size 64 --epochs 2   # a quick check that it runs
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from datetime import date
from pathlib import Path


def _setting(setting: str) -> tuple[str, bool]:
    return setting.split("+")[0], "xla" in setting.split("+")[1:]


def _config(data: Path, detector: str, setting: str, epochs: int, batch: int, input_size: int | None, out: str):
    from anomaly.config import load_train_config
    from anomaly.detectors import detector_class

    precision, xla = _setting(setting)
    names = set(detector_class(detector)._param_names())
    overrides = {"data_dir": str(data), "architecture": detector, "batch_size": batch, "output_dir": out,
                 "epochs": epochs}
    if "precision" in names:
        overrides["precision"] = precision
    if "jit_compile" in names:
        overrides["jit_compile"] = xla
    if "lr" in names:
        overrides["lr"] = 1e-3  # a fixed rate: the range test is not what is timed
    if input_size:
        overrides["input_size"] = input_size
    return load_train_config(overrides)


def _autoencoder_epochs(config, epochs: int) -> list[float]:
    """Seconds of each training epoch of an autoencoder, on the real input pipeline."""
    import keras

    from anomaly.data.dataset import find_dataset
    from anomaly.data.pipeline import Augmentation, evaluation_dataset, steps_per_epoch, training_dataset
    from anomaly.detectors import detector_class
    from anomaly.detectors.autoencoder import set_seed
    from anomaly.losses import get_loss, get_metric
    from anomaly.schedule import make_optimizer
    from anomaly.train import load_split

    set_seed(0)
    _, _, train_x, val_x = load_split(find_dataset(config.data_dir), config)
    detector = detector_class(config.architecture).from_train_config(config)
    if config.precision != "float32":
        keras.mixed_precision.set_global_policy(config.precision)
    model = detector.model
    model.compile(optimizer=make_optimizer(1e-3), loss=get_loss(detector.loss),
                  metrics=[get_metric(config.color_mode, config.input_size)], jit_compile=config.jit_compile)
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    aug = Augmentation(detector.rotation, detector.shift, detector.brightness)
    batch = config.batch_size
    model.fit(training_dataset(train_x, batch, 0, aug, 0, epochs), epochs=epochs,
              steps_per_epoch=steps_per_epoch(len(train_x), batch), shuffle=False,
              validation_data=evaluation_dataset(val_x, batch), callbacks=[Timer()], verbose=0)
    return times


def bench(data: Path, detector: str, setting: str, epochs: int, batch: int, input_size: int | None) -> dict:
    import keras

    from anomaly.data.dataset import find_dataset
    from anomaly.data.io import read_images
    from anomaly.detectors import is_autoencoder
    from anomaly.detectors.base import Detector
    from anomaly.postprocessing import classify
    from anomaly.train import train

    keras.mixed_precision.set_global_policy("float32")
    row = {"detector": detector, "setting": setting}
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as out:
        config = _config(data, detector, setting, epochs, batch, input_size, out)
        if is_autoencoder(detector):
            times = _autoencoder_epochs(config, epochs)
            row.update(first_epoch_s=round(times[0], 2),
                       train_seconds_per_epoch=round(sum(times[1:]) / max(len(times) - 1, 1), 2))
        keras.mixed_precision.set_global_policy("float32")
        outcome = train(config, progress=False)  # the real fit, timed by the detector itself
        fitted = Detector.load(outcome.model_dir, outcome.model_file)
        row["fit_s"] = round(outcome.fit.seconds, 2)
        trained_epochs = sum(fitted.epochs) if detector == "cutpaste" else None
        if trained_epochs:
            row["train_seconds_per_epoch"] = round(outcome.fit.seconds / trained_epochs, 2)
        keras.mixed_precision.set_global_policy("float32")
        dataset = find_dataset(data)
        paths = [s.path for s in dataset.test]
        method = fitted.methods[0]

        def run_test() -> float:
            start = time.perf_counter()
            images = read_images(paths, config.color_mode, config.image_size)
            classify(fitted.anomaly_maps(images, method, "float64"), 0.5, 50)
            return time.perf_counter() - start

        run_test()
        seconds = min(run_test() for _ in range(3))
    row.update(train_images=len(dataset.train), input_size=config.input_size, batch=config.batch_size,
               test_images=len(paths), test_images_per_second=round(len(paths) / seconds, 1))
    return row


def _settings_for(detector: str, settings: list[str]) -> list[str]:
    """The settings a detector has options for; the others would measure the same thing again."""
    from anomaly.detectors import detector_class

    names = set(detector_class(detector)._param_names())
    kept = [s for s in settings if ("precision" in names or _setting(s)[0] == "float32")
            and ("jit_compile" in names or not _setting(s)[1])]
    return kept or ["float32"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/mvtec_ad/bottle")
    p.add_argument("--detectors", "--architectures", nargs="+", default=["mvtecCAE", "patchcore", "padim", "cutpaste"])
    p.add_argument("--settings", nargs="+", default=["float32"],
                   help="float32, mixed_float16, mixed_bfloat16, each optionally +xla (e.g. mixed_float16+xla)")
    p.add_argument("--epochs", type=int, default=3, help="epochs timed per run (the first is reported apart)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--input-size", type=int, help="image size (default: each detector's configuration)")
    p.add_argument("--out", default="docs/benchmarks", help="folder for the CSV and JSON results")
    args = p.parse_args()

    from anomaly.benchmark import machine_facts

    facts = machine_facts()  # with AVX-512 and oneDNN, which explain most speed differences between x86 machines
    print(json.dumps(facts))
    rows = []
    for detector in args.detectors:
        for setting in _settings_for(detector, args.settings):
            row = bench(Path(args.data), detector, setting, args.epochs, args.batch, args.input_size)
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Runs with oneDNN on and off (TF_ENABLE_ONEDNN_OPTS) on the same day must not overwrite each other.
    onednn = {True: "-onednn-on", False: "-onednn-off"}.get(facts.get("onednn"), "")
    stem = out / f"{date.today().isoformat()}-speed-{Path(args.data).name}{onednn}"
    with open(f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    Path(f"{stem}.json").write_text(json.dumps({"machine": facts, "data": args.data, "rows": rows}, indent=2))
    print(f"saved {stem}.csv and {stem}.json")


if __name__ == "__main__":
    main()
