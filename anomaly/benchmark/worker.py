"""One benchmark run in its own process: train -> finetune -> test -> plots, result as JSON.

Started by `anomaly.benchmark.runner` as::

    python -m anomaly.benchmark.worker '{"data_dir": ..., "detector": ..., "variant": ..., "seed": ...,
                                         "overrides": {...}, "mode": ..., "models_dir": ...,
                                         "plots_dir": ..., "result_file": ..., "parent_pid": ...}'

A process per run gives every run a clean TensorFlow state (no graphs, caches or memory
left over from the previous model) and a peak memory of its own. The result is written to
`result_file` even when the run fails (status "error" and the one-line error), so the
parent can tell a failed run from a crashed worker.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import traceback
from pathlib import Path


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MiB.

    `getrusage(RUSAGE_SELF).ru_maxrss` is carried across fork + exec on Linux, so a worker
    started by a large parent (a test session holding TensorFlow, say) would report the
    parent's peak. /proc/self/status VmHWM is the high-water mark of this process's own
    address space, which exec starts afresh; ru_maxrss is the fallback elsewhere.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2 ** 20 if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB on Linux


def die_with_parent(parent_pid: int, interval: float = 0.5) -> None:
    """End this process when the benchmark that started it is gone (killed, even with SIGKILL).

    An orphaned worker would go on training and write a model folder that no results row
    refers to. Linux delivers SIGKILL at the parent's death (PR_SET_PDEATHSIG); elsewhere a
    daemon thread notices that the parent changed.
    """
    import os
    import signal
    import threading

    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(137)
            time.sleep(interval)

    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(137)
    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def run(args: dict) -> dict:
    """Train, finetune and test one grid cell, then draw its figures.

    Args:
        args: the cell and its settings (see the module docstring).

    Returns:
        The result row: metrics, timings, peak memory, model directory, status "ok".
    """
    from anomaly.cluster import set_threads

    set_threads(args.get("threads"))  # a Ray task's share of its node; all cores when run here
    from anomaly.config import load_train_config
    from anomaly.evaluate import evaluate
    from anomaly.finetune import finetune
    from anomaly.plots import plot_run
    from anomaly.train import train

    config = load_train_config({**args["overrides"], "data_dir": args["data_dir"], "seed": args["seed"],
                                "output_dir": args["models_dir"]})
    outcome = train(config, progress=True)
    if outcome.fit.interrupted:
        raise KeyboardInterrupt
    # method=None: the detector's default map (ssim or l2 for autoencoders, zscore for pixel-gaussian).
    ft = finetune(outcome.model_file, method=args.get("method"), mode=args["mode"], progress=True,
                  smooth=args.get("smooth"), normalize=args.get("normalize"))
    (metrics,) = evaluate(outcome.model_file, save=True, method=ft["method"], dtype=ft["dtype"], progress=True)
    peak = peak_memory_mb()  # before plotting: the figures are not part of the detector's cost
    result = {"status": "ok", "error": "", "model_dir": str(outcome.model_dir), "method": ft["method"],
              "fit_seconds": outcome.fit.seconds, "epochs_trained": len(outcome.fit.history),
              "test_images_per_second": metrics.get("images_per_second"), "peak_memory_mb": peak,
              **{k: metrics.get(k) for k in ("image_auroc", "pixel_auroc", "aupro_0.3", "balanced_accuracy",
                                             "balanced_accuracy_best", "f1")}}
    info = outcome.model_dir / "detector.json"
    if info.exists():
        summary = json.loads(info.read_text())
        result.update({k: summary[k] for k in ("bank_size", "bank_mb") if k in summary})
    title = f"{Path(args['data_dir']).parent.name}/{Path(args['data_dir']).name} {args['detector']} " \
            f"{args['variant']} seed {args['seed']}"
    try:
        plot_run(metrics["dir"], args["data_dir"], config.color_mode, args["plots_dir"],
                 aupro=metrics.get("aupro_0.3"), title=title)
    except Exception as exc:  # noqa: BLE001 - the metrics stand without the figures
        traceback.print_exc()
        result["error"] = f"plots: {type(exc).__name__}: {exc}"
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the cell named by the JSON argument and write its result file.

    Returns:
        0 when the run succeeded, 1 when it failed, 130 on Ctrl-C.
    """
    from anomaly import modeldir
    from anomaly.errors import AnomalyError

    argv = sys.argv[1:] if argv is None else argv
    args = json.loads(argv[0])
    if args.get("parent_pid"):
        die_with_parent(int(args["parent_pid"]))
    start = time.perf_counter()
    code = 0
    try:
        result = run(args)
    except AnomalyError as exc:
        result, code = {"status": "error", "error": str(exc)}, 1
    except KeyboardInterrupt:
        result, code = {"status": "error", "error": "interrupted"}, 130
    except Exception as exc:  # noqa: BLE001 - any failure is recorded and the grid goes on
        traceback.print_exc()  # the whole story goes to the log; the row gets one line
        result, code = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}, 1
    result["error"] = " ".join(str(result.get("error") or "").split())
    result["worker_seconds"] = time.perf_counter() - start
    if "peak_memory_mb" not in result:
        result["peak_memory_mb"] = peak_memory_mb()
    modeldir.write_json(Path(args["result_file"]), result)
    print(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main())
