"""anomaly: unsupervised anomaly detection and segmentation for visual inspection."""

import os
import platform

# TensorFlow's start-up chatter (oneDNN, CUDA probing) hides our own output; users can lower it.
TF_LOG_LEVEL_SET_BY_USER = "TF_CPP_MIN_LOG_LEVEL" in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow turns its oneDNN kernels on by default only on some x86 CPUs (AVX-512 VNNI and newer);
# elsewhere convolutions fall back to generic kernels, up to 10x slower. Read when TensorFlow loads.
if platform.machine().lower() in {"x86_64", "amd64", "i386", "i686", "x86"}:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"

# The public API, imported on first use so that `import anomaly` stays fast and sets the
# environment above before TensorFlow loads.
_API = {
    "load": "anomaly.api", "load_dataset": "anomaly.api", "Model": "anomaly.api", "Prediction": "anomaly.api",
    "PostProcessor": "anomaly.postprocessing", "Detector": "anomaly.detectors.base",
    "AnomalyError": "anomaly.errors", "list_detectors": "anomaly.detectors", "read_images": "anomaly.data.io",
}
# Every detector by class, under the names users know them by.
_DETECTORS = {
    "MvtecCAE": "mvtecCAE", "BaselineCAE": "baselineCAE", "InceptionCAE": "inceptionCAE",
    "ResnetCAE": "resnetCAE", "SkipCAE": "skipCAE", "PixelGaussian": "pixel-gaussian",
    "PatchCore": "patchcore", "PaDiM": "padim", "FRE": "fre", "FRETiedAE": "fre-tae", "KNN": "knn",
    "KMeans": "kmeans", "FeatureAE": "feature-ae", "CutPaste": "cutpaste",
}
__all__ = [*_API, *_DETECTORS, "__version__"]


def __getattr__(name: str):
    import importlib

    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    if name in _DETECTORS:
        from anomaly.detectors import detector_class

        return detector_class(_DETECTORS[name])
    raise AttributeError(f"module 'anomaly' has no attribute '{name}'")
