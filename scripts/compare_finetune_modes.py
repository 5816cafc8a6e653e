"""Normal-only against synthetic finetuning, on the same trained models, beside the test-set optimum.

Each detector is trained once per dataset with `anomaly-train` at its defaults (plus any
`--train-args`), then finetuned normal-only and tested, then finetuned on synthetic defects and
tested again. Both decisions are compared on the real test images: TPR, TNR and balanced
accuracy at the chosen pair, and `balanced_accuracy_best`, the best any pair reaches on that test
set (a diagnostic only: nothing is chosen on the test set). One detector at a time.

Example (the figures in docs/results.md):
    python scripts/compare_finetune_modes.py -d ../shared/data/mvtec_ad/bottle \
        ../shared/data/kolektorsdd/kolektorsdd ../shared/data/aws_l4v_cookie/cookie \
        -a patchcore padim fre knn kmeans pixel-gaussian feature-ae mvtecCAE -o /tmp/modes
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

FIELDS = ("dataset", "detector", "mode", "min_area", "threshold", "tpr", "tnr", "balanced_accuracy",
          "balanced_accuracy_best", "image_auroc", "finetune_seconds", "model_dir")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", "--datasets", nargs="+", required=True, type=Path)
    parser.add_argument("-a", "--detectors", nargs="+", required=True)
    parser.add_argument("-o", "--out", required=True, type=Path)
    parser.add_argument("--train-args", default="", help="extra anomaly-train flags for every run, e.g. '-e 20'")
    parser.add_argument("--cae-minutes", type=float, default=3.0, help="--max-minutes for the autoencoders")
    args = parser.parse_args()

    from anomaly.benchmark.machine import machine_facts
    from anomaly.detectors import is_autoencoder
    from anomaly.evaluate import evaluate
    from anomaly.finetune import finetune

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for data in args.datasets:
        for detector in args.detectors:
            models = args.out / "models" / data.name / detector
            if not list(models.rglob("detector.yaml")):
                extra = ["--max-minutes", str(args.cae_minutes)] if is_autoencoder(detector) else []
                command = [str(Path(sys.executable).with_name("anomaly-train")), "-d", str(data), "-a", detector,
                           "-o", str(models), "-q", *extra, *args.train_args.split()]
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            (model_dir,) = [p.parent for p in models.rglob("detector.yaml")]
            for mode in ("normal-only", "synthetic"):
                start = time.perf_counter()
                chosen = finetune(model_dir, mode=mode, progress=False)
                seconds = time.perf_counter() - start
                (metrics,) = evaluate(model_dir, method=chosen["method"], dtype=chosen["dtype"], progress=False)
                row = {"dataset": data.name, "detector": detector, "mode": mode, "min_area": chosen["min_area"],
                       "threshold": chosen["threshold"], "finetune_seconds": seconds, "model_dir": str(model_dir),
                       **{k: metrics[k] for k in ("tpr", "tnr", "balanced_accuracy", "balanced_accuracy_best",
                                                  "image_auroc")}}
                if mode == "synthetic":
                    row["tpr_by_kind"] = chosen["synthetic"]["tpr_by_kind"]
                print(json.dumps(row), flush=True)
                rows.append(row)
            with (args.out / "results.csv").open("w", newline="") as f:
                writer = csv.DictWriter(f, FIELDS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
    (args.out / "results.json").write_text(json.dumps({"runs": rows, "machine": machine_facts()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
