"""A benchmark grid on a Ray cluster: each run a Ray task with its resource request.

Each task starts the same worker process as the local path (`runner.execute`), so a run on a
cluster trains, finetunes, tests and draws exactly as it would here. The driver saves each row
as its task ends; a failed run (its worker's error, or the task lost with its node) is tried
once more, then recorded as failed, and the grid goes on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from anomaly.benchmark.grid import Run
from anomaly.errors import AnomalyError

ATTEMPTS = 2  # a failed run is retried once


@dataclass(frozen=True)
class Resources:
    """What each run asks the cluster for (Ray's logical resources; TensorFlow in the run is
    limited to `cpus` threads).

    Attributes:
        cpus: CPUs per run.
        gpus: GPUs per run (fractions share one).
        memory_gb: memory per run in GiB; Ray starts no more runs on a node than its memory
            holds. None asks for none.
    """

    cpus: float = 1.0
    gpus: float = 0.0
    memory_gb: float | None = None

    def check(self) -> Resources:
        for name, value, zero_ok in (("cpus_per_run", self.cpus, False), ("gpus_per_run", self.gpus, True),
                                     ("memory_per_run", self.memory_gb, False)):
            if value is not None and not (value >= 0 if zero_ok else value > 0):
                raise AnomalyError(f"expected a {'non-negative' if zero_ok else 'positive'} number, got {value:g}",
                                   name)
        return self

    def __str__(self) -> str:
        memory = f", {self.memory_gb:g} GiB" if self.memory_gb else ""
        return f"{self.cpus:g} CPU, {self.gpus:g} GPU{memory}"

    def ray_options(self) -> dict:
        options = {"num_cpus": self.cpus, "num_gpus": self.gpus, "max_retries": 0}
        if self.memory_gb:
            options["memory"] = int(self.memory_gb * 2 ** 30)
        return options


def _task(execute: Callable, run: Run, cell: dict, output_dir: str, threads: int, gpus: float) -> dict:
    """The body of a Ray task: one run through `execute`, timed."""
    if 0 < gpus < 1:
        # Runs sharing a GPU: TensorFlow would otherwise reserve all of its memory for the first.
        os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    start = time.perf_counter()
    result = execute(run, {**cell, "threads": threads}, Path(output_dir))
    return {**result, "_seconds": time.perf_counter() - start, "_node": os.uname().nodename}


def run_on_ray(runs: list[Run], settings: dict, output_dir: Path, resources: Resources, address: str,
               execute: Callable) -> Iterator[tuple[Run, dict, float, int]]:
    """Run `runs` as Ray tasks; yield (run, result, seconds, attempt) as each one ends.

    A run whose result is not "ok" (or whose task failed) is submitted once more; its second
    result is yielded either way, with attempt 2. On KeyboardInterrupt the tasks still running
    are cancelled.

    Args:
        runs: the grid cells to run.
        settings: each cell's settings by (detector, variant), as `resolve_settings` gives them.
        output_dir: the benchmark folder (the same path on every node).
        resources: each task's request.
        address: the `--cluster` value.
        execute: runs one cell and returns its result dict (`runner.execute`).
    """
    import ray

    from anomaly.cluster import connect

    with connect(address) as info:
        if resources.cpus > info.node_cpus or resources.gpus > info.gpus:
            raise AnomalyError(f"each run asks for {resources.cpus:g} CPUs and {resources.gpus:g} GPUs, "
                               f"but no node has that many (largest: {info.node_cpus} CPUs; {info.gpus} GPUs in all)",
                               "cpus_per_run" if resources.cpus > info.node_cpus else "gpus_per_run")
        remote = ray.remote(_task).options(**resources.ray_options())
        threads = max(1, int(resources.cpus))
        pending: dict = {}

        def submit(run: Run, attempt: int) -> None:
            ref = remote.remote(execute, run, settings[(run.detector, run.variant)], str(output_dir.resolve()),
                                threads, resources.gpus)
            pending[ref] = (run, attempt, time.perf_counter())

        for run in runs:
            submit(run, 1)
        try:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                run, attempt, start = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the task itself failed: worker or node lost
                    result = {"status": "error", "error": f"Ray task failed: {type(exc).__name__}: "
                                                          f"{' '.join(str(exc).split())[:300]}"}
                seconds = result.pop("_seconds", time.perf_counter() - start)
                result.pop("_node", None)
                if result.get("status") != "ok" and attempt < ATTEMPTS:
                    yield run, result, seconds, attempt
                    submit(run, attempt + 1)
                    continue
                yield run, result, seconds, attempt
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
