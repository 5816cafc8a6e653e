"""anomaly-demo: make the bundled demo data, then train, finetune and test a small CAE and PatchCore on it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anomaly.cli.common import print_metrics, run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anomaly-demo", description=__doc__)
    p.add_argument("--data", default="demo_data", help="where the demo dataset is written (default demo_data)")
    p.add_argument("-o", "--output-dir", default="saved_models", help="root of model directories")
    p.add_argument("--texture", default="brick", help="brick (default), grass or gravel")
    p.add_argument("-e", "--epochs", type=int, help="most training epochs (default from configs/demo.yaml)")
    p.add_argument("--seed", type=int, default=0, help="seed of data and training (default 0)")
    p.add_argument("--no-patchcore", action="store_true", help="only the autoencoder")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up messages")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from anomaly.config import CONFIG_DIR, load_train_config
    from anomaly.data.demo import make_demo_dataset
    from anomaly.evaluate import evaluate
    from anomaly.finetune import finetune
    from anomaly.train import train

    data = make_demo_dataset(Path(args.data), texture=args.texture, seed=args.seed)
    print(f"demo data: {data}")
    config = load_train_config({"data_dir": str(data), "output_dir": args.output_dir, "epochs": args.epochs,
                                "seed": args.seed}, str(CONFIG_DIR / "demo.yaml"))
    outcome = train(config, progress=not args.quiet)
    if outcome.fit.interrupted:
        print(f"interrupted; resume with: anomaly-train --resume {outcome.model_dir}")
        return 130
    print(f"trained {len(outcome.fit.history)} epochs in {outcome.fit.seconds:.0f} s: {outcome.model_file}")
    # The default map and L2, which on some textures separates defects better.
    for method in ("mssim", "l2"):
        ft = finetune(outcome.model_file, method=method, progress=not args.quiet)
        print(f"finetuned {method}: min_area {ft['min_area']}, threshold {ft['threshold']:g}")
    results = evaluate(outcome.model_file, save=True, progress=not args.quiet)
    print(f"\nmvtecCAE ({len(outcome.fit.history)} epochs):")
    print_metrics(results)
    for r in results:
        print(f"pictures: {r['dir']}/images   metrics: {r['dir']}/metrics.json")
    if args.no_patchcore:
        return 0
    # The same data through a feature detector: no training epochs, ImageNet features.
    config = load_train_config({"data_dir": str(data), "output_dir": args.output_dir, "seed": args.seed,
                                "architecture": "patchcore", "input_size": config.input_size})
    outcome = train(config, progress=not args.quiet)
    finetune(outcome.model_file, progress=not args.quiet)
    results = evaluate(outcome.model_file, save=True, progress=not args.quiet)
    print(f"\npatchcore ({config.params['backbone']}, fitted in {outcome.fit.seconds:.0f} s):")
    print_metrics(results)
    for r in results:
        print(f"pictures: {r['dir']}/images   metrics: {r['dir']}/metrics.json")
    return 0


def entry() -> None:
    sys.exit(run(main))
