"""anomaly: unsupervised anomaly detection and segmentation for visual inspection."""

import os

# TensorFlow's start-up chatter (oneDNN, CUDA probing) hides our own output; users can lower it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
