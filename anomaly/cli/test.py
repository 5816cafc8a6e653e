"""anomaly-test: classify and segment the test images with every finetuned pair of a model."""

from __future__ import annotations

import argparse
import sys

from anomaly.cli.common import Parser, print_metrics, run


def _method_help() -> str:
    from anomaly.detectors import detector_class, list_detectors

    maps = dict.fromkeys(m for name in list_detectors() for m in detector_class(name).methods)
    return f"test only this finetuned map ({', '.join(maps)})"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="anomaly-test", description=__doc__)
    p.add_argument("-p", "--path", required=True, help="model file (.keras, .hdf5, .npz) or its directory")
    p.add_argument("-d", "--data-dir", help="the dataset folder, when it has moved since training (default: the "
                   "folder recorded in the model's config.yaml)")
    p.add_argument("-s", "--save", action="store_true", help="write images/ and maps/")
    p.add_argument("--report", action="store_true", help="write report.html: metrics, curves, every image with "
                   "thumbnails, a threshold slider (self-contained, opens in any browser)")
    p.add_argument("-m", "--method", lazy_help=_method_help)
    p.add_argument("-t", "--dtype", help="test only this dtype (float64 or uint8)")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up messages")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from anomaly.evaluate import evaluate

    results = evaluate(args.path, save=args.save, method=args.method, dtype=args.dtype, progress=not args.quiet,
                       data_dir=args.data_dir, report=args.report)
    print_metrics(results)
    for r in results:
        print(f"saved: {r['dir']}" + (" (pictures in images/, maps in maps/)" if args.save else "")
              + (" (report.html)" if args.report else ""))
    return 0


def entry() -> None:
    sys.exit(run(main))
