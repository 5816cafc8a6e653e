"""anomaly-benchmark: train, finetune and test a grid of detectors x losses/backbones x seeds on dataset categories."""

from __future__ import annotations

import argparse
import sys

from anomaly.cli.common import run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anomaly-benchmark", description=__doc__)
    p.add_argument("-d", "--data", nargs="+", required=True, metavar="PATH",
                   help="dataset roots or category folders (categories are found up to 2 levels deep)")
    p.add_argument("-a", "--architectures", nargs="+", default=["mvtecCAE", "pixel-gaussian"], metavar="NAME",
                   help="detectors (default: mvtecCAE pixel-gaussian)")
    p.add_argument("-l", "--losses", nargs="+", default=["ssim"], metavar="LOSS",
                   help="losses of the autoencoders: ssim (default), mssim, l2 (pixel-gaussian has none)")
    p.add_argument("--backbones", nargs="+", default=["efficientnet_lite0"], metavar="NAME",
                   help="backbones of the feature detectors (default efficientnet_lite0)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED", help="training seeds (default 0)")
    p.add_argument("-e", "--epochs", type=int, help="most training epochs (default from the configuration)")
    p.add_argument("--max-minutes", type=float, help="autoencoders: training time budget per run in minutes "
                   "(default none)")
    p.add_argument("--input-size", type=int, help="image size (default from the configuration); the height "
                   "when --input-width is given")
    p.add_argument("--input-width", type=int, help="the width of non-square images (default: --input-size)")
    p.add_argument("--mode", default="synthetic", help="finetune mode: synthetic (default), normal-only or semi")
    p.add_argument("--map", dest="method", help="autoencoder map: ssim, mssim or l2 (default: the detector's)")
    p.add_argument("--smooth", type=float, help="finetune --smooth sigma (default: each detector's)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction,
                   help="finetune --normalize (default: each detector's)")
    p.add_argument("--lr", type=float, help="fixed peak learning rate (skips the learning-rate finder)")
    p.add_argument("-o", "--output-dir", help="benchmark folder (default benchmarks/<YYYY-MM-DD>); "
                   "re-running into the same folder skips the runs already done")
    p.add_argument("--cluster", metavar="ADDRESS", help="run the grid on Ray (pip install 'anomaly[cluster]'), "
                   "each run a task: local (a cluster on this machine), auto (the cluster this machine joined) or "
                   "ray://HOST:PORT; a failed run is tried once more (default: one run at a time here)")
    p.add_argument("--cpus-per-run", type=float, help="with --cluster: CPUs each run asks for and uses (default 1)")
    p.add_argument("--gpus-per-run", type=float, help="with --cluster: GPUs each run asks for (default 0)")
    p.add_argument("--memory-per-run", type=float, metavar="GIB",
                   help="with --cluster: memory each run asks for, in GiB (default: none asked)")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up messages")
    p.add_argument("-q", "--quiet", action="store_true", help="no line per run, only the final table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from anomaly.benchmark import default_output_dir, format_table, run_benchmark

    output_dir = args.output_dir or default_output_dir()
    resources = None
    if any(v is not None for v in (args.cpus_per_run, args.gpus_per_run, args.memory_per_run)):
        from anomaly.benchmark.cluster import Resources

        resources = Resources(1.0 if args.cpus_per_run is None else args.cpus_per_run,
                              args.gpus_per_run or 0.0, args.memory_per_run)
    command = " ".join(["anomaly-benchmark", *(sys.argv[1:] if argv is None else argv)])
    rows = run_benchmark(args.data, detectors=args.architectures, losses=args.losses, seeds=args.seeds,
                         backbones=args.backbones, output_dir=output_dir, epochs=args.epochs,
                         input_size=args.input_size,
                         lr=args.lr, mode=args.mode, progress=not args.quiet, command=command,
                         method=args.method, smooth=args.smooth, normalize=args.normalize,
                         max_minutes=args.max_minutes, input_width=args.input_width, cluster=args.cluster,
                         resources=resources)
    print(format_table(rows))
    print(f"saved: {output_dir}/results.csv, results.md, machine.json, plots/")
    failed = sum(r.get("status") != "ok" for r in rows)
    if failed:
        print(f"{failed} of {len(rows)} runs failed (errors in results.md, logs in {output_dir}/logs); "
              "re-run the same command to retry them")
    # Exit 1 when a run failed, so scripts notice; the other runs' results are saved all the same.
    return 1 if failed else 0


def entry() -> None:
    sys.exit(run(main))
