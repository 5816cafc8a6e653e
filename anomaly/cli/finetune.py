"""anomaly-finetune: choose the min-area / threshold pair of a trained model."""

from __future__ import annotations

import argparse
import sys

from anomaly.cli.common import Parser, fmt, run


def _defaults_by_detector(key: str, fallback) -> str:
    """The detectors' default for one finetune option, grouped: "4 for mvtecCAE, ...; 0 for ..."."""
    from anomaly.detectors import detector_class, list_detectors

    groups: dict[str, list[str]] = {}
    for name in list_detectors():
        value = detector_class(name).finetune_defaults.get(key, fallback)
        if isinstance(value, bool):
            text = "on" if value else "off"
        else:
            text = f"{value:g}" if isinstance(value, float) else str(value)
        groups.setdefault(text, []).append(name)
    return "; ".join(f"{value} for {', '.join(names)}" for value, names in groups.items())


def _scores() -> tuple[str, ...]:
    from anomaly.postprocessing import SCORES

    return SCORES


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="anomaly-finetune", description=__doc__)
    p.add_argument("-p", "--path", required=True, help="model file (.keras, .hdf5, .npz) or its directory")
    p.add_argument("-d", "--data-dir", help="the dataset folder, when it has moved since training (default: the "
                   "folder recorded in the model's config.yaml)")
    p.add_argument("-m", "--method", lazy_help=lambda: f"the map (default: {_defaults_by_detector('method', '')})")
    p.add_argument("-t", "--dtype", default="float64", help="float64 (default) or uint8 (autoencoders)")
    p.add_argument("--mode", default="synthetic",
                   help="synthetic (default: the validation images and seeded synthetic defects made on them; "
                   "the best balanced accuracy), normal-only (defect-free validation images only, at "
                   "--target-fpr) or semi (a labelled 10%% of the test images picks the pair, as the original "
                   "toolkit)")
    p.add_argument("--target-fpr", type=float, default=0.05,
                   help="normal-only: share of defect-free images allowed to be flagged (default 0.05)")
    p.add_argument("--smooth", type=float, lazy_help=lambda: "Gaussian sigma in pixels applied to maps before "
                   f"thresholding (default: {_defaults_by_detector('smooth', 0.0)})")
    p.add_argument("--score-sigma", type=float, lazy_help=lambda: "image score = max of the map after a Gaussian "
                   f"of this sigma (default: {_defaults_by_detector('score_sigma', 4.0)})")
    p.add_argument("--score", lazy_help=lambda: f"image score: {', '.join(_scores())} (default: "
                   f"{_defaults_by_detector('image_score', 'max')})")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction,
                   lazy_help=lambda: "per-pixel z-scores of the maps against the training images' maps "
                   f"(default: {_defaults_by_detector('normalize', False)})")
    p.add_argument("--split", type=float, default=0.1, help="semi: share of test images used (default 0.1)")
    p.add_argument("--seed", type=int, help="seed of the finetune subset (default: the training seed)")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up messages")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from anomaly.finetune import finetune

    r = finetune(args.path, args.method, args.dtype, args.split, args.seed, progress=not args.quiet,
                 mode=args.mode, target_fpr=args.target_fpr, smooth=args.smooth,
                 score_sigma=args.score_sigma, score=args.score, normalize=args.normalize, data_dir=args.data_dir)
    if r["mode"] == "semi":
        print(f"min_area {r['min_area']}, threshold {r['threshold']:g}: balanced accuracy {fmt(r['score'])} "
              f"(TPR {fmt(r['tpr'])}, TNR {fmt(r['tnr'])}) on {len(r['finetune_images'])} finetune images")
    elif r["mode"] == "synthetic":
        n = len(r["validation_images"])
        print(f"min_area {r['min_area']}, threshold {r['threshold']:g}: balanced accuracy {fmt(r['score'])} "
              f"(TPR {fmt(r['tpr'])}, TNR {fmt(r['tnr'])}) on {n} defect-free images and "
              f"{n * r['synthetic']['copies']} synthetic defects")
    else:
        print(f"min_area {r['min_area']}, threshold {r['threshold']:g} from {len(r['validation_images'])} "
              f"defect-free images (target false-positive rate {r['target_fpr']:g})")
    print(f"saved: {r['dir']}/finetune.json")
    return 0


def entry() -> None:
    sys.exit(run(main))
