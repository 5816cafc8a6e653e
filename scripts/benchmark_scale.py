"""Peak memory and fit time of `anomaly-train` as the training set grows (200, 1,000, 5,000 images).

The training sets are seeded, augmented copies of a real dataset's defect-free training images
(flips, quarter turns, brightness and a small shift), written once as PNGs in MVTec layout; a
smaller set is the first images of the largest (hard links, no extra disk). Each (detector, size)
is one `anomaly-train` process, run one after another so the timings are comparable; its peak
resident memory is the kernel's figure for that process (`os.wait4`), its fit time the
`fit_seconds` of the model directory's detector.json.

Example (the figures in docs/scale.md):
    python scripts/benchmark_scale.py -d ../shared/data/mvtec_ad/bottle --sizes 200 1000 5000 \
        -a patchcore padim -o /tmp/scale
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FIELDS = ["detector", "images", "status", "peak_rss_gib", "fit_seconds", "fit_ms_per_image", "wall_seconds",
          "bank_size", "plan"]


def augmented_copies(source: Path, n: int, seed: int = 0, size: int = 256):
    """Yield `n` seeded variations (uint8 arrays) of the images in `source`, cycling through them."""
    from PIL import Image

    paths = sorted(p for p in source.iterdir() if p.suffix.lower() in (".png", ".jpg", ".bmp", ".tif", ".tiff"))
    if not paths:
        raise SystemExit(f"{source}: no images")
    rng = np.random.default_rng(seed)
    for i in range(n):
        with Image.open(paths[i % len(paths)]) as img:
            x = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), np.float32)
        x = np.rot90(x, int(rng.integers(4)))
        if rng.random() < 0.5:
            x = x[:, ::-1]
        dy, dx = rng.integers(-8, 9, size=2)
        x = np.roll(x, (int(dy), int(dx)), axis=(0, 1))
        yield np.clip(x * rng.uniform(0.9, 1.1), 0, 255).astype(np.uint8)


def make_sets(data: Path, sizes: list[int], out: Path) -> dict[int, Path]:
    """MVTec-layout folders out/n<size> for each size: train/good copies and the source's test set."""
    from PIL import Image

    largest = out / f"n{max(sizes)}"
    good = largest / "train" / "good"
    if not (good.is_dir() and len(list(good.iterdir())) == max(sizes)):
        good.mkdir(parents=True, exist_ok=True)
        for i, x in enumerate(augmented_copies(data / "train" / "good", max(sizes))):
            Image.fromarray(x).save(good / f"{i:05d}.png")
    folders = {}
    for n in sizes:
        root = out / f"n{n}"
        train = root / "train" / "good"
        if root != largest and not train.is_dir():
            train.mkdir(parents=True)
            for i in range(n):
                os.link(good / f"{i:05d}.png", train / f"{i:05d}.png")
        test = root / "test"
        if not test.exists():
            test.symlink_to((data / "test").resolve(), target_is_directory=True)
        if (data / "ground_truth").is_dir() and not (root / "ground_truth").exists():
            (root / "ground_truth").symlink_to((data / "ground_truth").resolve(), target_is_directory=True)
        folders[n] = root
    return folders


def run_one(command: list[str], log: Path) -> tuple[int, float, float]:
    """(exit code, peak RSS in GiB, wall seconds) of one process."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 2 ** 20, time.perf_counter() - start  # ru_maxrss is KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", "--data", required=True, type=Path, help="a dataset in MVTec layout")
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000, 5000])
    parser.add_argument("-a", "--architectures", nargs="+", default=["patchcore", "padim", "fre", "knn"])
    parser.add_argument("-o", "--out", type=Path, required=True, help="work folder (datasets, models, results)")
    parser.add_argument("--train-args", default="", help="more anomaly-train options, e.g. '-e 2'")
    args = parser.parse_args()

    from anomaly.benchmark.machine import machine_facts
    from anomaly.modeldir import SUMMARY_FILE

    args.out.mkdir(parents=True, exist_ok=True)
    folders = make_sets(args.data, args.sizes, args.out / "data")
    (args.out / "machine.json").write_text(json.dumps(machine_facts(), indent=2) + "\n")
    results = args.out / "results.csv"
    done = {(r["detector"], r["images"]) for r in csv.DictReader(open(results))} if results.exists() else set()
    train = str(Path(sys.executable).with_name("anomaly-train"))
    for detector in args.architectures:
        for n in args.sizes:
            if (detector, str(n)) in done:
                continue
            models = args.out / "models" / f"{detector}-{n}"
            command = [train, "-d", str(folders[n]), "-a", detector, "-o", str(models), "--seed", "0",
                       *args.train_args.split()]
            log = args.out / f"{detector}-{n}.log"
            code, rss, wall = run_one(command, log)
            summary = next(models.rglob(SUMMARY_FILE), None)
            facts = json.loads(summary.read_text()) if summary and code == 0 else {}
            plan = next((line.strip() for line in log.read_text().splitlines()
                         if line.startswith(("memory bank:", "per-position", "training features:"))), "")
            row = {"detector": detector, "images": n, "status": "ok" if code == 0 else f"exit {code}",
                   "peak_rss_gib": f"{rss:.2f}", "fit_seconds": f"{facts.get('fit_seconds', float('nan')):.1f}",
                   "fit_ms_per_image": f"{1000 * facts.get('fit_seconds', float('nan')) / n:.1f}",
                   "wall_seconds": f"{wall:.1f}", "bank_size": facts.get("bank_size", ""), "plan": plan}
            print(" | ".join(f"{k} {row[k]}" for k in FIELDS[:8]), flush=True)
            new = not results.exists()
            with open(results, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=FIELDS)
                if new:
                    writer.writeheader()
                writer.writerow(row)


if __name__ == "__main__":
    main()
