"""anomaly-predict: judge new, unlabelled images with a finetuned model.

Exit status: 0 every image was judged; 1 some images could not be read (they are listed in
errors.csv, the others were judged); 2 bad input (nothing written); 130 interrupted (the rows
written so far are kept: run the same command again to continue).
"""

from __future__ import annotations

import argparse
import sys

from anomaly.cli.common import Parser, run


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="anomaly-predict", description=__doc__.split("\n\n")[0],
               epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-p", "--path", required=True, help="a finetuned model (file or directory)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (searched recursively) and glob patterns ('lot7/*.png')")
    p.add_argument("-o", "--out", help="output folder (default: <model dir>/predict/<time>); an earlier "
                   "run's folder is continued")
    p.add_argument("-s", "--save", action="store_true",
                   help="also write images/ (heat map and predicted outline) and maps/ (raw .npy maps)")
    p.add_argument("--report", action="store_true", help="also write report.html: every image judged by this run "
                   "with thumbnails, sortable, and a threshold slider (self-contained)")
    p.add_argument("--threshold", type=float, help="decision threshold for this run (default: the finetuned one)")
    p.add_argument("--min-area", type=int, help="least anomalous area in pixels for this run (default: finetuned)")
    p.add_argument("-b", "--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("-m", "--method", help="which finetuned map, when several were finetuned")
    p.add_argument("--cluster", metavar="ADDRESS", help="judge on Ray (pip install 'anomaly[cluster]'): local (a "
                   "cluster on this machine for this run), auto (the cluster this machine joined) or ray://HOST:PORT")
    p.add_argument("--workers", type=int, help="with --cluster: Ray workers, each loading the model once "
                   "(default one per node, with all its CPUs)")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up messages")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import anomaly
    from anomaly.predict import ERRORS_FILE, PREDICTIONS_FILE, expand_inputs, predict_files

    expand_inputs(args.inputs)  # a wrong input is reported before the model loads
    if args.cluster is not None:
        from anomaly.cluster import check_address

        check_address(args.cluster)
    model = anomaly.load(args.path, method=args.method)
    try:
        outcome = predict_files(model, args.inputs, args.out, save=args.save, threshold=args.threshold,
                                min_area=args.min_area, batch_size=args.batch_size, progress=not args.quiet,
                                report=args.report, cluster=args.cluster, workers=args.workers)
    except KeyboardInterrupt:
        print("interrupted: the rows written so far are kept; run the same command again to continue",
              file=sys.stderr)
        return 130
    rate = outcome.predicted / outcome.seconds if outcome.seconds else 0.0
    print(f"{outcome.predicted} images judged ({rate:.1f} images/s): {outcome.anomalous} anomalous"
          + (f"; {outcome.skipped} already in {PREDICTIONS_FILE}" if outcome.skipped else ""))
    print(f"saved: {outcome.out / PREDICTIONS_FILE}" + (" and report.html" if args.report else ""))
    if outcome.failed:
        print(f"{len(outcome.failed)} images could not be read: see {outcome.out / ERRORS_FILE}", file=sys.stderr)
        return 1
    return 0


def entry() -> None:
    sys.exit(run(main))
