"""anomaly-export: a finetuned model as one self-contained graph (SavedModel, TFLite or ONNX).

The graph takes uint8 images (N, H, W, C) and returns score, map, mask, is_anomalous and anomalous_area,
with the finetuned threshold and min area as defaults that its `decide` signature (or the ONNX
inputs) can override. It runs with TensorFlow, a TFLite runtime or onnxruntime alone; see the
README. Exit status: 0 written; 2 bad input or a model that cannot be exported (nothing written).
"""

from __future__ import annotations

import argparse
import sys

from anomaly.cli.common import Parser, run


def build_parser() -> argparse.ArgumentParser:
    from anomaly.deploy.export import FORMATS

    p = Parser(prog="anomaly-export", description=__doc__.split("\n\n")[0],
               epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-p", "--path", required=True, help="a finetuned model (file or directory)")
    p.add_argument("-f", "--format", required=True, choices=FORMATS, help="what to write")
    p.add_argument("-o", "--out", help="a new folder to write (default: <model dir>/export/<format>)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                   help="the size of the images the graph will take, e.g. the camera's (default: the model's "
                   "input size); the graph resizes them as anomaly-predict does")
    p.add_argument("--channels", type=int, choices=(1, 3, 4), help="the images' channels: 1 grey, 3 RGB, 4 RGBA "
                   "(default: the model's); e.g. 3 for a grey model judging colour photographs, turned grey in "
                   "the graph as anomaly-predict does")
    p.add_argument("-b", "--batch-size", type=int, help="a fixed number of images per call (default: any); "
                   "TFLite needs one for baselineCAE and inceptionCAE")
    p.add_argument("-m", "--method", help="which finetuned map, when several were finetuned")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's and the converters' messages")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import contextlib

    import anomaly
    from anomaly.cli import stderr_silenced
    from anomaly.deploy.export import export

    model = anomaly.load(args.path, method=args.method)
    # The converters log hundreds of lines (MLIR passes, tf2onnx's optimiser); a failure is an AnomalyError.
    with contextlib.nullcontext() if args.verbose else stderr_silenced():
        out = export(model, args.format, args.out, tuple(args.image_size) if args.image_size else None,
                     args.batch_size, args.channels)
    print(f"saved: {out}")
    return 0


def entry() -> None:
    sys.exit(run(main))
