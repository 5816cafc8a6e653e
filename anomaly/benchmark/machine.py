"""The machine a benchmark ran on, recorded in machine.json beside its results.

Timings (fit seconds, test images per second) compare only between runs on the same machine, so
the benchmark records the CPU (model, AVX-512, AVX2, oneDNN), cores, memory, TensorFlow and GPUs,
and every command line run on the output folder.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime
from pathlib import Path

from anomaly import modeldir
from anomaly.machine import cpu_facts


def machine_facts() -> dict:
    """The machine a benchmark ran on: CPU model, cores, memory, TensorFlow, GPUs, Python, and
    whether the CPU has AVX-512 and AVX2 and TensorFlow runs its oneDNN kernels.

    Returns:
        A JSON-ready dict: cpu, cores, memory_gib, tensorflow, gpus, python, platform, then the
        other keys of `anomaly.machine.cpu_facts()` (avx512, avx2, onednn_opts, onednn).
    """
    import tensorflow as tf  # before cpu_facts, which asks the loaded TensorFlow about oneDNN

    cpu = cpu_facts()
    try:
        cores = len(os.sched_getaffinity(0))  # the cores this process may use, not the machine's
    except AttributeError:
        cores = os.cpu_count()
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        memory = None
    # AVX-512 and oneDNN explain most speed differences between x86 machines (convolutions: up to
    # 10x), so every machine.json records them.
    return {"cpu": cpu["cpu"], "cores": cores, "memory_gib": memory, "tensorflow": tf.__version__,
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
            "python": platform.python_version(), "platform": platform.platform(), **cpu}


def write_machine(output_dir: Path, command: str, progress: bool) -> dict:
    """Write machine.json; earlier invocations on the same folder are kept in `invocations`.

    Args:
        output_dir: the benchmark folder.
        command: the command line of this invocation.
        progress: warn when the file records another machine (CPU, cores or GPUs).

    Returns:
        What was written: the machine facts, the command, the date and the invocations.
    """
    path = output_dir / "machine.json"
    facts = machine_facts()
    invocations = []
    if path.exists():
        try:
            old = json.loads(path.read_text())
            invocations = list(old.get("invocations", []))
            before = {k: old.get(k) for k in ("cpu", "cores", "gpus")}
            if progress and before != {k: facts[k] for k in before}:
                print(f"warning: {path} records another machine ({before}); timings in results.csv mix both")
        except (OSError, ValueError, AttributeError):
            invocations = []
    now = datetime.now().isoformat(timespec="seconds")
    invocations.append({"date": now, "command": command})
    data = {**facts, "command": command, "date": now, "invocations": invocations}
    modeldir.write_json(path, data)
    return data
