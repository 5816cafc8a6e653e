"""anomaly: unsupervised anomaly detection and segmentation for visual inspection."""

import os
import platform

# TensorFlow's start-up chatter (oneDNN, CUDA probing) hides our own output; users can lower it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow turns its oneDNN kernels on by default only on some x86 CPUs (AVX-512 VNNI and newer);
# elsewhere convolutions fall back to generic kernels, up to 10x slower. Read when TensorFlow loads.
if platform.machine().lower() in {"x86_64", "amd64", "i386", "i686", "x86"}:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
