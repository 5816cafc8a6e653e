"""The Python API: a trained, finetuned model applied to images from a notebook or a script.

    import anomaly
    model = anomaly.load("saved_models/mvtec_ad/bottle/patchcore/efficientnet_lite0/<time>")
    result = model.predict(["a.png", "b.jpg"])        # or an (N, H, W, C) array
    result.scores, result.maps, result.masks, result.is_anomalous
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomaly import modeldir
from anomaly.data.io import conform, read_raw
from anomaly.detectors.base import Detector
from anomaly.errors import AnomalyError
from anomaly.postprocessing import PostProcessor


@dataclass
class Prediction:
    """A model's verdict on a batch of images.

    Attributes:
        scores: (N,) image scores, higher = more anomalous.
        maps: (N, H, W) anomaly maps at the model's input size, after post-processing.
        masks: (N, H, W) bool predicted defect regions.
        is_anomalous: (N,) bool decisions at `threshold` and `min_area`.
        threshold, min_area: the decision rule used.
        images: the file names, when files were given.
    """

    scores: np.ndarray
    maps: np.ndarray
    masks: np.ndarray
    is_anomalous: np.ndarray
    threshold: float
    min_area: int
    images: list[str] | None = None


class Model:
    """A fitted detector with the post-processing `anomaly-finetune` chose for it.

    Args:
        detector: the fitted detector.
        postprocessor: its fitted post-processing.
        directory: the model directory it came from, if any.
    """

    def __init__(self, detector: Detector, postprocessor: PostProcessor, directory: Path | None = None):
        self.detector, self.postprocessor, self.directory = detector, postprocessor, directory

    def predict(self, images, threshold: float | None = None, min_area: int | None = None) -> Prediction:
        """Scores, maps, masks and decisions for image files or an array.

        Args:
            images: image paths (PNG, JPEG, BMP, TIFF; any size, 8 or 16 bit, gray or colour),
                or an (N, H, W, C) / (N, H, W) array (uint8, uint16 or float in [0, 1]).
            threshold, min_area: override the finetuned decision rule for this call only.

        Returns:
            The prediction for all images at once (see `predict_batches` for large folders).
        """
        parts = list(self.predict_batches(images, threshold=threshold, min_area=min_area))
        if not parts:
            raise AnomalyError("images: nothing to predict (an empty list)")
        names = [n for p in parts for n in p.images] if parts[0].images is not None else None
        return Prediction(np.concatenate([p.scores for p in parts]), np.concatenate([p.maps for p in parts]),
                          np.concatenate([p.masks for p in parts]), np.concatenate([p.is_anomalous for p in parts]),
                          parts[0].threshold, parts[0].min_area, names)

    def predict_batches(self, images, batch_size: int = 32, threshold: float | None = None,
                        min_area: int | None = None) -> Iterator[Prediction]:
        """`predict` one batch at a time, so memory stays flat however many images there are."""
        pp = self.postprocessor
        threshold = pp.threshold if threshold is None else float(threshold)
        min_area = pp.min_area if min_area is None else int(min_area)
        files = _is_paths(images)
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            batch = self._read(chunk) if files else self.detector.prepare(chunk)
            maps = self.detector.anomaly_maps(batch, pp.method, pp.dtype)
            own = self.detector.image_scores(batch) if pp.image_score == "detector" else None
            decided = pp.apply(maps, own, threshold=threshold, min_area=min_area)
            yield Prediction(decided.scores, decided.maps, decided.masks, decided.is_anomalous, threshold, min_area,
                             [str(p) for p in chunk] if files else None)

    def _read(self, paths: Sequence) -> np.ndarray:
        shape = self.detector.input_shape
        return np.stack([conform(read_raw(Path(p)), shape) for p in paths])


def _is_paths(images) -> bool:
    return isinstance(images, (list, tuple)) and all(isinstance(p, (str, Path)) for p in images)


def load(path: str | Path, method: str | None = None) -> Model:
    """The model saved in a model directory (or named by its model file), with its post-processing.

    Args:
        path: the model directory `anomaly-train` wrote (or its model file), finetuned.
        method: which finetuned map to use when several were finetuned (default: the detector's
            default map if finetuned, else the only one).

    Returns:
        A `Model`; its training data need not exist any more.

    Raises:
        AnomalyError: the folder holds no model, or it was never finetuned.
    """
    model_dir, model_file = modeldir.resolve(path)
    detector = Detector.load(model_dir, model_file)
    finetuned = modeldir.finetune_results(model_dir)
    if method:
        finetuned = [p for p in finetuned if p.parent.name.startswith(f"{method}_")]
    if not finetuned:
        raise AnomalyError(f"{model_dir}: not finetuned{f' for map {method}' if method else ''} "
                           f"(run anomaly-finetune -p {model_dir} first)")
    default = [p for p in finetuned if p.parent.name.startswith(f"{detector.methods[0]}_")]
    return Model(detector, PostProcessor.load((default or finetuned)[0].parent), model_dir)


def load_dataset(path: str | Path, normal_dir: str = "", abnormal_dir: str = "", mask_dir: str = "",
                 normal_test_split: float = 0.2, seed: int = 0):
    """A dataset folder (`anomaly.data.dataset.Dataset`: `.train` and `.test` samples).

    MVTec layout by default; with `normal_dir`, a folder of good images, one of defective images
    (`abnormal_dir`) and one of their masks (`mask_dir`), a seeded `normal_test_split` of the
    good images held out for testing, as anomalib's `Folder`.
    """
    from anomaly.data.dataset import load_dataset as load

    return load(path, normal_dir, abnormal_dir, mask_dir, normal_test_split, seed)
