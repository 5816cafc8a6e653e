"""anomaly-train: train a detector (an autoencoder, a baseline or a feature detector) on the defect-free
images of a dataset folder."""

from __future__ import annotations

import argparse
import sys

from anomaly.cli.common import Parser, run


def _architecture_help() -> str:
    from anomaly.detectors import detector_class, list_detectors

    families: dict[str, list[str]] = {}
    for name in list_detectors():
        families.setdefault(detector_class(name).family, []).append(name)
    return (f"autoencoders: {', '.join(families['autoencoder'])} (default mvtecCAE); baseline: "
            f"{', '.join(families['baseline'])}; feature detectors: {', '.join(families['features'])} (any case); "
            "auto: train the --candidates, keep the best on synthetic defects (selection.csv)")


def _candidates_help() -> str:
    from anomaly.selection import AUTOENCODER, CANDIDATES

    return (f"-a auto: comma-separated detectors to choose among (default {','.join(CANDIDATES)}, plus "
            f"{AUTOENCODER} when --max-minutes is given)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="anomaly-train", description=__doc__)
    p.add_argument("-d", "--input-dir", dest="data_dir", help="dataset category folder (MVTec layout), or the "
                   "folder holding --normal-dir, --abnormal-dir and --mask-dir")
    p.add_argument("--normal-dir", help="folder layout: the defect-free images (a folder inside -d); a seeded "
                   "--normal-test-split of them is held out for testing")
    p.add_argument("--abnormal-dir", help="folder layout: the defective images (optional)")
    p.add_argument("--mask-dir", help="folder layout: masks of the defective images, <stem>[_mask].png (optional)")
    p.add_argument("--normal-test-split", type=float, help="folder layout: share of good images held out "
                   "for testing (default 0.2)")
    p.add_argument("-a", "--architecture", lazy_help=_architecture_help)
    p.add_argument("--candidates", lazy_help=_candidates_help)
    p.add_argument("-c", "--color", dest="color_mode", help="grayscale (default) or rgb")
    p.add_argument("-l", "--loss", help="ssim (default), mssim or l2")
    p.add_argument("-b", "--batch", dest="batch_size", type=int, help="images per training batch, or per "
                   "forward pass of a feature detector (default 8; some detectors' YAML sets their own)")
    p.add_argument("-e", "--epochs", type=int, help="most epochs to train (default 1024; early stopping ends sooner)")
    p.add_argument("--max-minutes", type=float, help="autoencoders: a bound on the training time in minutes, "
                   "learning-rate range test (a quarter of it) included (default none); the best weights are kept")
    p.add_argument("--seed", type=int, help="random seed (default 42)")
    p.add_argument("--lr", type=float, help="fixed peak learning rate (skips the learning-rate finder)")
    p.add_argument("--lr-finder-epochs", type=int, help="most epochs of the learning-rate finder (default 10)")
    p.add_argument("--input-size", type=int, help="resize images to this square size (default 256); the height "
                   "when --input-width is given")
    p.add_argument("--input-width", type=int, help="the width of non-square inputs (default: --input-size), "
                   "e.g. --input-size 640 --input-width 128 for long parts squeezed into square pictures")
    p.add_argument("--precision", help="float32 (default), mixed_bfloat16 (CPUs with AMX/AVX512-BF16) or "
                   "mixed_float16 (GPUs)")
    p.add_argument("--xla", dest="jit_compile", action="store_const", const=True, help="compile with XLA")
    p.add_argument("--strategy", help="autoencoders and cutpaste: none (default, one device), mirrored (every GPU, "
                   "or the logical CPUs) or multi-worker (the hosts of TF_CONFIG); -b is the global batch, split "
                   "between the devices")
    p.add_argument("--backbone", help="feature detectors: efficientnet_lite0 (default), efficientnet_lite2, "
                   "resnet50, mobilenet_v2, efficientnet_b0..b5")
    p.add_argument("--weights", help="backbone weights: imagenet (default), random, or a weights file")
    p.add_argument("--layers", help="feature detectors: comma-separated backbone layers (default per detector)")
    p.add_argument("--features-from", metavar="MODEL_FILE", help="kmeans: cluster this trained autoencoder's "
                   "bottleneck (its .keras file) instead of backbone features")
    p.add_argument("--coreset-ratio", type=float, help="patchcore: share of training patches kept (default 0.002)")
    p.add_argument("-o", "--output-dir", help="root of model directories (default saved_models)")
    p.add_argument("-i", "--inspect", action="store_const", const=True, help="save inspection images")
    p.add_argument("--config", help="YAML file of options (overridden by flags)")
    p.add_argument("--resume", metavar="MODEL_DIR", help="continue an interrupted run in MODEL_DIR")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up messages")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    auto = (args.architecture or "").lower() == "auto"
    if args.candidates is not None and not auto:
        from anomaly.errors import AnomalyError

        raise AnomalyError("--candidates: only with -a auto")
    if auto and args.resume:
        from anomaly.errors import AnomalyError

        raise AnomalyError("--resume: an auto run cannot be resumed; resume the candidate's model directory "
                           "with its own -a, or start -a auto again")
    if args.architecture and not auto:
        from anomaly.config import canonical_detector_name

        args.architecture = canonical_detector_name(args.architecture)  # before TensorFlow loads, as -d
    if args.data_dir and not args.resume:
        # A wrong path is reported before TensorFlow loads (seconds on a busy machine).
        from anomaly.data.dataset import find_dataset, find_folder_dataset

        if args.normal_dir:
            find_folder_dataset(args.data_dir, args.normal_dir, args.abnormal_dir, args.mask_dir)
        else:
            find_dataset(args.data_dir)
    from anomaly.config import load_train_config
    from anomaly.errors import AnomalyError
    from anomaly.train import resume_config, train

    if auto:
        return _main_auto(args)
    if args.resume:
        config = resume_config(args.resume)
        _start_strategy(config.params.get("strategy"))
        outcome = train(config, progress=not args.quiet, resume_dir=args.resume)
    else:
        if not args.data_dir:
            raise AnomalyError("-d/--input-dir: required (the dataset folder holding train/good)")
        overrides = {k: v for k, v in vars(args).items() if k not in ("config", "resume", "quiet", "verbose")}
        config = load_train_config(overrides, args.config)
        _start_strategy(config.params.get("strategy"))
        outcome = train(config, progress=not args.quiet)
    fit = outcome.fit
    if fit.interrupted:
        print(f"interrupted after epoch {len(fit.history)}: best model so far (epoch {fit.best_epoch}) "
              f"saved as {outcome.model_file}\nresume with: anomaly-train --resume {outcome.model_dir}")
        return 130
    if fit.history:
        budget = f", stopped by --max-minutes {config.max_minutes:g}" if fit.out_of_time else ""
        print(f"trained {len(fit.history)} epochs in {fit.seconds:.1f} s (best epoch {fit.best_epoch}, "
              f"lr {fit.lr:.3g}{budget})")
    else:
        print(f"fitted in {fit.seconds:.1f} s")
    print(f"model: {outcome.model_file}")
    print(f"next: anomaly-finetune -p {outcome.model_file}")
    return 0


def _start_strategy(name: str | None) -> None:
    """Create a multi-worker strategy now: TensorFlow accepts one only before it has started."""
    if name == "multi-worker":
        from anomaly.distribute import get_strategy

        get_strategy(name)


def _main_auto(args) -> int:
    from anomaly.errors import AnomalyError
    from anomaly.selection import AUTOENCODER, CANDIDATES, SELECTION_FILE, explain, train_auto

    if not args.data_dir:
        raise AnomalyError("-d/--input-dir: required (the dataset folder holding train/good)")
    if args.candidates is None:
        candidates = [*CANDIDATES, *([AUTOENCODER] if args.max_minutes else [])]
    else:
        from anomaly.config import canonical_detector_name

        try:
            candidates = [canonical_detector_name(c.strip()) for c in args.candidates.split(",") if c.strip()]
        except AnomalyError as exc:
            raise AnomalyError(exc.message, "candidates") from None
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("config", "resume", "quiet", "verbose", "architecture", "candidates")}
    _start_strategy(args.strategy)
    winner, scores, chosen = train_auto(overrides, candidates, args.config, progress=not args.quiet)
    print(explain(scores, chosen))
    print(f"model: {winner.model_file}")
    print(f"selection: {winner.model_dir / SELECTION_FILE}")
    print(f"next: anomaly-finetune -p {winner.model_file}")
    return 0


def entry() -> None:
    sys.exit(run(main))
