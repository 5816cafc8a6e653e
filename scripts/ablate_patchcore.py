"""PatchCore's choices, one at a time, on every dataset given: real test defects and synthetic ones.

Each variant changes one hyper-parameter of the defaults (layers, neighbourhood, coreset ratio,
neighbours scored, re-weighting, map smoothing) and is trained at seed 42 on each dataset, finetuned
at the default mode and tested. Recorded per run: test image AUROC, pixel AUROC, AUPRO@0.3 and
balanced accuracy; the image AUROC and AUPRO on the validation images and their synthetic defects
(`anomaly.selection.score_model`, as `anomaly-train -a auto` sees it), with the AUROC of each kind
(cut and misplaced pieces: `cutpaste`, `cutpaste-polygon`, `displaced`); and PaDiM at its
defaults as the peer. Finished runs (in OUT/runs.jsonl) are skipped when re-run.

Example (the table in docs/results.md):
    python scripts/ablate_patchcore.py -d ../shared/data/mvtec_ad/bottle \
        ../shared/data/kolektorsdd/kolektorsdd ../shared/data/aws_l4v_cookie/cookie -o /tmp/ablate
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

# name -> anomaly-train options (None: the defaults). PaDiM is the peer to beat.
VARIANTS = {
    "default (stride 4+8, p 3, 0.2 %, k 1, sigma 4)": {},
    "layers stride 8+16 (the paper's, PaDiM's)": {"layers": "block5_expand_relu,block11_expand_relu"},
    "layers stride 16+32": {"layers": "block11_expand_relu,block15_expand_relu"},
    "neighbourhood p 5": {"neighbourhood": 5},
    "neighbourhood p 1 (none)": {"neighbourhood": 1},
    "coreset 1 %": {"coreset_ratio": 0.01},
    "k 3 neighbours": {"num_neighbors": 3},
    "re-weighting (the paper's)": {"reweight": True},
    "map sigma 8": {"map_sigma": 8.0},
    "padim (peer)": {"architecture": "padim"},
}


def run_one(data: Path, name: str, options: dict, out: Path) -> dict:
    from anomaly.config import load_train_config
    from anomaly.evaluate import evaluate
    from anomaly.finetune import finetune
    from anomaly.selection import score_model
    from anomaly.train import train

    models = out / "models"
    overrides = {"architecture": "patchcore", "data_dir": str(data), "output_dir": str(models), **options}
    start = time.perf_counter()
    outcome = train(load_train_config(overrides), progress=False)
    fit = time.perf_counter() - start
    chosen = finetune(outcome.model_dir, progress=False)
    (metrics,) = evaluate(outcome.model_dir, method=chosen["method"], dtype=chosen["dtype"], progress=False)
    synthetic = score_model(outcome.model_dir)
    summary = json.loads((outcome.model_dir / "detector.json").read_text())
    shutil.rmtree(outcome.model_dir)  # a bank per run adds up; every figure is kept in runs.jsonl
    return {"dataset": data.name, "variant": name, "options": options, "fit_seconds": fit,
            "bank_size": summary.get("bank_size"),
            **{k: metrics[k] for k in ("image_auroc", "pixel_auroc", "aupro_0.3", "balanced_accuracy",
                                       "balanced_accuracy_best", "images_per_second")},
            "synthetic_image_auroc": synthetic.image_auroc, "synthetic_aupro": synthetic.aupro,
            "synthetic_auroc_by_kind": synthetic.auroc_by_kind}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", "--datasets", nargs="+", required=True, type=Path)
    parser.add_argument("-o", "--out", required=True, type=Path)
    parser.add_argument("--variants", nargs="+", help="names of VARIANTS to run (default all)")
    args = parser.parse_args()

    from anomaly.benchmark.machine import machine_facts

    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "runs.jsonl"
    done = {(r["dataset"], r["variant"]) for r in map(json.loads, log.read_text().splitlines())} \
        if log.is_file() else set()
    for data in args.datasets:
        for name, options in VARIANTS.items():
            if (args.variants and name not in args.variants) or (data.name, name) in done:
                continue
            row = run_one(data, name, options, args.out)
            print(json.dumps(row), flush=True)
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    (args.out / "ablation.json").write_text(json.dumps({"runs": runs, "machine": machine_facts()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
