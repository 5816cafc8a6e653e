"""PatchCore's exact coreset against the chunked one that large training sets get, on real data.

Up to `anomaly.detectors.patchcore.EXACT_BYTES` of patch features the coreset is chosen from all
patches at once; beyond, from chunks and then their candidates. The shared datasets are small
enough for the exact path, so this script forces the chunked one (EXACT_BYTES = 0) on the same
data and compares train -> finetune -> test for both: image AUROC, pixel AUROC, AUPRO, balanced
accuracy, bank size and fit time. Each run is its own process, one after another.

Example (the table in docs/scale.md):
    python scripts/compare_coreset.py -d ../shared/data/mvtec_ad/bottle ../shared/data/kolektorsdd/kolektorsdd \
        -o /tmp/coreset
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

KEYS = ["image_auroc", "pixel_auroc", "aupro_0.3", "balanced_accuracy"]


def one_run(data: str, out: str, chunked: bool) -> None:
    """train -> finetune -> test in this process; print the metrics as one JSON line."""
    from anomaly.cli import finetune, test, train
    from anomaly.modeldir import SUMMARY_FILE

    if chunked:
        import anomaly.detectors.patchcore as patchcore

        patchcore.EXACT_BYTES = 0
    assert train.main(["-d", data, "-a", "patchcore", "-o", out, "-q", "--seed", "0"]) == 0
    model_dir = next(Path(out).rglob(SUMMARY_FILE)).parent
    assert finetune.main(["-p", str(model_dir), "-q"]) == 0
    assert test.main(["-p", str(model_dir), "-q"]) == 0
    metrics = json.loads(next((model_dir / "test").rglob("metrics.json")).read_text())
    summary = json.loads((model_dir / SUMMARY_FILE).read_text())
    print(json.dumps({"bank_size": summary["bank_size"], "fit_seconds": summary["fit_seconds"],
                      **{k: metrics.get(k) for k in KEYS}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", "--data", nargs="+", required=True, help="datasets in MVTec layout")
    parser.add_argument("-o", "--out", required=True, type=Path, help="work folder for the models")
    parser.add_argument("--one", nargs=3, metavar=("DATA", "OUT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(["-d", "-", "-o", "-", *sys.argv[1:]] if "--one" in sys.argv else None)
    if args.one:
        one_run(args.one[0], args.one[1], args.one[2] == "chunked")
        return
    print("| dataset | coreset | bank | fit s | " + " | ".join(KEYS) + " |")
    print("|---" * (4 + len(KEYS)) + "|")
    for data in args.data:
        for mode in ("exact", "chunked"):
            out = args.out / Path(data).name / mode
            done = subprocess.run([sys.executable, __file__, "--one", data, str(out), mode],
                                  capture_output=True, text=True)
            if done.returncode:
                print(f"| {Path(data).name} | {mode} | failed: {done.stderr.strip().splitlines()[-1:]} |")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {Path(data).name} | {mode} | {r['bank_size']} | {r['fit_seconds']:.1f} | "
                  + " | ".join(f"{r[k]:.3f}" for k in KEYS) + " |", flush=True)


if __name__ == "__main__":
    main()
