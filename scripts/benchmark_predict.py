"""Peak memory and speed of `anomaly-predict` as the number of images grows.

The first N images of a folder (hard links, no extra disk) are judged by one `anomaly-predict`
process per size, one after another; its peak resident memory is the kernel's figure for that
process (`os.wait4`), its rate the images/s it prints. Memory should not grow with N: rows are
written as each batch is judged and nothing else is kept.

Example (the figures in docs/scale.md; the images are benchmark_scale.py's augmented copies):
    python scripts/benchmark_predict.py -p <finetuned model> -i /tmp/scale/data/n5000/train/good \
        --sizes 200 5000 -o /tmp/predict-bench
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", "--path", required=True, help="a finetuned model")
    parser.add_argument("-i", "--images", required=True, type=Path, help="a folder of images")
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 5000])
    parser.add_argument("-o", "--out", required=True, type=Path, help="work folder")
    args = parser.parse_args()

    from anomaly.benchmark.machine import machine_facts
    from anomaly.data.io import is_image_file

    files = sorted(p for p in args.images.iterdir() if is_image_file(p))
    results = []
    for n in args.sizes:
        if n > len(files):
            raise SystemExit(f"{args.images}: {len(files)} images, fewer than {n}")
        folder = args.out / f"inputs-{n}"
        if not folder.is_dir():
            folder.mkdir(parents=True)
            for f in files[:n]:
                os.link(f, folder / f.name)
        out = args.out / f"predict-{n}"
        command = [str(Path(sys.executable).with_name("anomaly-predict")), "-p", args.path, str(folder),
                   "-o", str(out), "-q"]
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        output = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        rate = re.search(r"\(([\d.]+) images/s\)", output)
        row = {"images": n, "exit": os.waitstatus_to_exitcode(status), "peak_rss_gib": usage.ru_maxrss / 2 ** 20,
               "images_per_second": float(rate.group(1)) if rate else None, "wall_seconds": wall}
        print(json.dumps(row), flush=True)
        results.append(row)
    (args.out / "results.json").write_text(json.dumps({"runs": results, "machine": machine_facts()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
