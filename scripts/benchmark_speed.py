"""Speed of training and testing the autoencoders on a real dataset, with machine facts.

Measures, per architecture and setting:
- seconds per training epoch (the mean of the epochs after the first, which pays for tracing),
  with the real input pipeline (cached images, augmentation, prefetch) and batch size 8;
- test images per second end to end: reading and resizing the test images, reconstruction,
  residual maps and connected components, after one warm-up pass.
The machine facts name the CPU, whether it has AVX-512 (avx512f) and AVX2, and whether TensorFlow's
oneDNN kernels are on (TF_ENABLE_ONEDNN_OPTS as set, and TensorFlow's own answer).

Example:
    python scripts/benchmark_speed.py --data ../shared/data/mvtec_ad/bottle \
        --architectures mvtecCAE baselineCAE --settings float32 mixed_bfloat16+xla --out docs/benchmarks
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from datetime import date
from pathlib import Path


def bench(data: Path, architecture: str, setting: str, epochs: int, batch: int) -> dict:
    import keras

    from anomaly.config import load_train_config
    from anomaly.data.dataset import find_dataset
    from anomaly.data.io import read_images
    from anomaly.data.pipeline import Augmentation, evaluation_dataset, steps_per_epoch, training_dataset
    from anomaly.detectors import detector_class
    from anomaly.detectors.autoencoder import set_seed
    from anomaly.losses import get_loss, get_metric
    from anomaly.postprocessing import classify
    from anomaly.schedule import make_optimizer
    from anomaly.train import load_split

    precision = "mixed_bfloat16" if "bfloat16" in setting else "float32"
    xla = "xla" in setting
    keras.mixed_precision.set_global_policy("float32")
    config = load_train_config({"data_dir": str(data), "architecture": architecture, "precision": precision,
                                "jit_compile": xla, "batch_size": batch, "lr": 1e-3})
    set_seed(0)
    dataset = find_dataset(data)
    _, _, train_x, val_x = load_split(dataset, config)
    detector = detector_class(architecture).from_train_config(config)
    model = detector.model
    model.compile(optimizer=make_optimizer(1e-3), loss=get_loss(detector.loss),
                  metrics=[get_metric(config.color_mode, config.input_size)], jit_compile=xla)
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    aug = Augmentation(detector.rotation, detector.shift, detector.brightness)
    model.fit(training_dataset(train_x, batch, 0, aug, 0, epochs), epochs=epochs,
              steps_per_epoch=steps_per_epoch(len(train_x), batch), shuffle=False,
              validation_data=evaluation_dataset(val_x, batch), callbacks=[Timer()], verbose=0)

    paths = [s.path for s in dataset.test]
    size = (config.input_size,) * 2

    def run_test() -> float:
        start = time.perf_counter()
        images = read_images(paths, config.color_mode, size)
        maps = detector.anomaly_maps(images, "ssim", "float64")
        classify(maps, 0.5, 50)
        return time.perf_counter() - start

    run_test()
    test_seconds = min(run_test() for _ in range(3))
    return {"architecture": architecture, "setting": setting, "params": model.count_params(),
            "train_images": len(train_x), "batch": batch,
            "first_epoch_s": round(times[0], 2),
            "seconds_per_epoch": round(sum(times[1:]) / max(len(times) - 1, 1), 2),
            "test_images": len(paths), "test_images_per_second": round(len(paths) / test_seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/mvtec_ad/bottle")
    p.add_argument("--architectures", nargs="+",
                   default=["mvtecCAE", "baselineCAE", "inceptionCAE", "resnetCAE", "skipCAE"])
    p.add_argument("--settings", nargs="+", default=["float32"],
                   help="float32, mixed_bfloat16, float32+xla, mixed_bfloat16+xla")
    p.add_argument("--epochs", type=int, default=3, help="epochs timed per run (the first is reported apart)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", default="docs/benchmarks", help="folder for the CSV and JSON results")
    args = p.parse_args()

    from anomaly.benchmark import machine_facts

    facts = machine_facts()  # with AVX-512 and oneDNN, which explain most speed differences between x86 machines
    print(json.dumps(facts))
    rows = []
    for architecture in args.architectures:
        for setting in args.settings:
            row = bench(Path(args.data), architecture, setting, args.epochs, args.batch)
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Runs with oneDNN on and off (TF_ENABLE_ONEDNN_OPTS) on the same day must not overwrite each other.
    onednn = {True: "-onednn-on", False: "-onednn-off"}.get(facts.get("onednn"), "")
    stem = out / f"{date.today().isoformat()}-speed-{Path(args.data).name}{onednn}"
    with open(f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    Path(f"{stem}.json").write_text(json.dumps({"machine": facts, "data": args.data, "rows": rows}, indent=2))
    print(f"saved {stem}.csv and {stem}.json")


if __name__ == "__main__":
    main()
