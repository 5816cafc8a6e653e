"""Speed of `anomaly-test` with and without `--save` (maps and per-image pictures), with machine facts.

Tests one finetuned model twice in one process, first without `--save`, then with it, and reports
the whole call's wall time and images per second for each, and the rate of the saving alone (the
difference). The model's directory gets its test/ folder rewritten, as `anomaly-test` would.

Run it against another checkout of the package (e.g. an older commit in a git worktree) with
PYTHONPATH=<that checkout> to compare the two in the same conditions.

Example:
    python scripts/benchmark_test_save.py -p saved_models/.../patchcore/efficientnet_lite0/<timestamp> \
        --out docs/benchmarks/2026-12-02-test-save.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", "--path", required=True, help="a finetuned model (file or directory)")
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args()

    from anomaly.benchmark.machine import machine_facts
    from anomaly.evaluate import evaluate

    evaluate(args.path, save=False, progress=False)  # warm-up: loading and tracing happen once
    times = {}
    for save in (False, True):
        start = time.perf_counter()
        results = evaluate(args.path, save=save, progress=False)
        times[save] = time.perf_counter() - start
    n = results[0]["n_images"]
    figures = {"n_images": n, "seconds": times[False], "images_per_second": n / times[False],
               "seconds_save": times[True], "images_per_second_save": n / times[True],
               "saving_images_per_second": n / max(times[True] - times[False], 1e-9),
               "machine": machine_facts()}
    print(f"{n} images: {figures['images_per_second']:.1f} images/s without --save, "
          f"{figures['images_per_second_save']:.1f} with it (saving alone {figures['saving_images_per_second']:.1f}/s)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
