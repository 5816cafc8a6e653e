"""Does the ranking on synthetic defects agree with the ranking on real defects?

For each dataset and detector, a model trained with `anomaly-train` at its defaults (trained here
when `OUT/models/<dataset>/<detector>` holds none, so the models of
`scripts/compare_finetune_modes.py -o OUT` are reused) is scored as `anomaly-train -a auto`
scores its candidates (`anomaly.selection.score_model`: validation images and their synthetic
defects), and on the real test set (image AUROC and AUPRO@0.3 of `anomaly-test`, finetuned at the
default mode when not yet tested). Per dataset: Spearman's rho between the two rankings (over the
auto candidates and over every detector given), the candidate `choose` picks, and its gap to the
best candidate on the real test set.

Example (the figures in docs/results.md):
    python scripts/compare_selection.py -d ../shared/data/mvtec_ad/bottle \
        ../shared/data/kolektorsdd/kolektorsdd ../shared/data/aws_l4v_cookie/cookie \
        -a padim fre patchcore mvtecCAE knn kmeans pixel-gaussian feature-ae -o /tmp/modes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def _rho(scored: dict, real: dict, names: list[str]) -> float | None:
    """Spearman's rho between the synthetic and the real image AUROCs of `names`."""
    from scipy.stats import spearmanr

    value = spearmanr([scored[n].image_auroc for n in names], [real[n] for n in names]).statistic
    return None if value != value else float(value)  # NaN when one ranking is all ties


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", "--datasets", nargs="+", required=True, type=Path)
    parser.add_argument("-a", "--detectors", nargs="+", required=True)
    parser.add_argument("-o", "--out", required=True, type=Path)
    parser.add_argument("--candidates", nargs="+", help="the detectors auto chooses among (default: "
                        "anomaly.selection.CANDIDATES, plus mvtecCAE when given in -a)")
    parser.add_argument("--cae-minutes", type=float, default=3.0, help="--max-minutes for the autoencoders")
    args = parser.parse_args()

    from anomaly.benchmark.machine import machine_facts
    from anomaly.detectors import is_autoencoder
    from anomaly.evaluate import evaluate
    from anomaly.finetune import finetune
    from anomaly.selection import AUTOENCODER, CANDIDATES, choose, score_model

    candidates = args.candidates or [*CANDIDATES, *([AUTOENCODER] if AUTOENCODER in args.detectors else [])]
    rows, summary = [], []
    for data in args.datasets:
        scored = {}
        for detector in args.detectors:
            models = args.out / "models" / data.name / detector
            if not list(models.rglob("detector.yaml")):
                extra = ["--max-minutes", str(args.cae_minutes)] if is_autoencoder(detector) else []
                command = [str(Path(sys.executable).with_name("anomaly-train")), "-d", str(data), "-a", detector,
                           "-o", str(models), "-q", *extra]
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            (model_dir,) = [p.parent for p in models.rglob("detector.yaml")]
            tested = sorted(model_dir.glob("test/*/metrics.json"))
            if tested:
                metrics = json.loads(tested[0].read_text())
            else:
                chosen = finetune(model_dir, progress=False)
                (metrics,) = evaluate(model_dir, method=chosen["method"], dtype=chosen["dtype"], progress=False)
            score = score_model(model_dir)
            scored[detector] = score
            row = {"dataset": data.name, "detector": detector, "synthetic_image_auroc": score.image_auroc,
                   "synthetic_aupro": score.aupro, "synthetic_auroc_by_kind": score.auroc_by_kind,
                   "test_image_auroc": metrics["image_auroc"], "test_aupro": metrics.get("aupro_0.3"),
                   "n_validation": score.n_validation, "n_synthetic": score.n_synthetic,
                   "score_seconds": score.score_seconds}
            print(json.dumps(row), flush=True)
            rows.append(row)
        mine = [r for r in rows if r["dataset"] == data.name]
        real = {r["detector"]: r["test_image_auroc"] for r in mine}
        present = [c for c in candidates if c in scored]
        pick = present[choose([scored[c] for c in present])]
        best = max(present, key=lambda c: real[c])
        summary.append({"dataset": data.name, "candidates": present, "chosen": pick,
                        "chosen_test_auroc": real[pick], "best_candidate": best, "best_test_auroc": real[best],
                        "gap": real[best] - real[pick], "spearman_candidates": _rho(scored, real, present),
                        "spearman_all": _rho(scored, real, list(scored))})
        print(json.dumps(summary[-1]), flush=True)
    (args.out / "selection.json").write_text(json.dumps({"runs": rows, "summary": summary,
                                                         "machine": machine_facts()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
