"""Facts about the CPU that explain TensorFlow's speed on it: model, vector extensions, oneDNN."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _cpuinfo() -> tuple[str | None, set[str]]:
    """The CPU model name and the flags of the first processor in /proc/cpuinfo (Linux only)."""
    model, flags = None, set()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return model, flags
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:  # "Features" on ARM
            flags = set(value.split())
    return model, flags


def onednn_enabled() -> bool | None:
    """Whether TensorFlow runs its oneDNN kernels (TensorFlow must be importable); None if unknown."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # private, but what TensorFlow itself checks

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


def cpu_facts() -> dict:
    """CPU model, AVX-512 (avx512f) and AVX2 support, and the oneDNN setting in effect.

    `avx512`/`avx2` are None where /proc/cpuinfo is unreadable (not Linux). `onednn_opts` is
    TF_ENABLE_ONEDNN_OPTS as this process sees it (importing `anomaly` sets it to 1 on x86 unless
    the user set it; None: TensorFlow's default); `onednn` is whether TensorFlow has them on.
    """
    model, flags = _cpuinfo()
    return {"cpu": model or platform.processor() or platform.machine(),
            "avx512": "avx512f" in flags if flags else None,
            "avx2": "avx2" in flags if flags else None,
            "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
            "onednn": onednn_enabled()}


def device_description() -> str:
    """What TensorFlow computes on, in words: the GPUs' names, else "CPU (<model>, N cores)"."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
        return "GPU: " + ", ".join(names)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return f"CPU ({cpu_facts()['cpu']}, {cores} cores)"
