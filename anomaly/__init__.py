"""anomaly: unsupervised anomaly detection and segmentation for visual inspection."""

__version__ = "0.1.0"
