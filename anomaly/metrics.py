"""Evaluation metrics for anomaly detection (per image) and segmentation (per pixel).

The definitions below are the contract that the rest of the tooling reads:

* **image AUROC** -- ROC AUC of a continuous image score, good = 0, defective = 1.
* **pixel AUROC** -- ROC AUC over every pixel of every test image; masks of good
  images are all zero.
* **AUPRO@0.3** -- MVTec AD's per-region overlap. A pixel is predicted defective at
  threshold ``t`` when ``map >= t`` (``>=`` throughout this module). For every
  distinct threshold the PRO is the mean, over all ground-truth connected regions
  (8-connectivity, labelled per image), of the fraction of the region predicted
  defective; the FPR is the fraction of defect-free pixels (mask 0, in all images)
  predicted defective. The area under PRO(FPR) up to ``fpr_limit`` (trapezoid rule,
  the curve linearly interpolated exactly at ``fpr_limit``) is divided by
  ``fpr_limit`` so a perfect detector scores 1.0.
* **classification metrics** -- confusion-matrix based numbers for a hard decision.

Both AUROC and the PRO curve are computed exactly, with every distinct score a
threshold (no threshold grid). Equal scores form one step of the curve (a diagonal
segment under the trapezoid rule), which is what ``sklearn.metrics.roc_auc_score``
does. Neither needs an argsort over all pixels: only the defect-free scores are
sorted and the (few) defect pixels are located among them with ``searchsorted``, so
100 maps of 256x256 take well under a second. Every function returns plain Python
numbers (or ``None``) so the results can be written to JSON directly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage.measure import label as _label_regions
from sklearn.metrics import confusion_matrix, f1_score

__all__ = [
    "image_auroc",
    "pixel_auroc",
    "pro_curve",
    "aupro",
    "classification_metrics",
]


# --------------------------------------------------------------------------- helpers


def _as_scores(values: Any, name: str) -> np.ndarray:
    """Returns ``values`` as a floating-point array, rejecting NaN.

    Floating inputs keep their dtype (float32 maps are not up-cast, which saves
    memory and does not change the order or the ties of the scores).
    """
    arr = np.asarray(values)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.floating):
        if not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)):
            raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    return arr


def _as_binary_labels(values: Any, name: str) -> np.ndarray:
    """Returns ``values`` as a 1-D int64 array of 0/1, rejecting anything else."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must contain only 0/1 (or False/True)")
    return arr.astype(np.int64)


def _check_masks_maps(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validates a (N, H, W) or (H, W) pair of masks and anomaly maps.

    Returns:
        The masks as a bool array (nonzero = defect) and the maps as a float array,
        both of shape (N, H, W).
    """
    masks = np.asarray(masks)
    maps = _as_scores(maps, "maps")
    if masks.shape != maps.shape:
        raise ValueError(f"masks shape {masks.shape} != maps shape {maps.shape}")
    if masks.ndim == 2:
        masks, maps = masks[None], maps[None]
    if masks.ndim != 3:
        raise ValueError(f"masks and maps must be (N, H, W) or (H, W), got {masks.shape}")
    if masks.size == 0:
        raise ValueError("masks and maps are empty")
    return masks.astype(bool, copy=False), maps


def _binary_auc(y: np.ndarray, scores: np.ndarray) -> float | None:
    """Exact ROC AUC of ``scores`` for the bool/0-1 targets ``y`` (both flat).

    Uses the Mann-Whitney form, which equals the trapezoid area under the ROC curve
    whose steps are the distinct scores (ties count one half)::

        AUC = sum over positives p of (#neg < s_p + #neg <= s_p) / (2 * P * N)

    Only the negatives are sorted; the sum is accumulated in int64, so the result is
    the exact rational number rounded once.

    Returns:
        The AUC as a float, or None when ``y`` holds only one class.
    """
    y = y.astype(bool, copy=False)
    pos = scores[y]
    n_pos = pos.size
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    neg = np.sort(scores[~y])
    pos = np.sort(pos)  # sorted queries make searchsorted cache-friendly
    below = np.searchsorted(neg, pos, side="left").sum(dtype=np.int64)
    below_or_equal = np.searchsorted(neg, pos, side="right").sum(dtype=np.int64)
    return float((int(below) + int(below_or_equal)) / (2 * n_pos * n_neg))


# --------------------------------------------------------------------------- AUROC


def image_auroc(labels: Any, scores: Any) -> float | None:
    """Image-level ROC AUC.

    Args:
        labels: Sequence of ground-truth labels, 0 = good, 1 = defective (bools
            accepted).
        scores: Sequence of continuous anomaly scores, higher = more anomalous, same
            length as ``labels``.

    Returns:
        The ROC AUC as a Python float (ties between a good and a defective image
        count one half, as in ``sklearn.metrics.roc_auc_score``), or None when only
        one class is present.

    Raises:
        ValueError: On mismatched lengths, labels other than 0/1, or NaN scores.
    """
    y = _as_binary_labels(labels, "labels")
    s = _as_scores(scores, "scores").reshape(-1)
    if y.size != s.size:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    return _binary_auc(y, s)


def pixel_auroc(masks: Any, maps: Any) -> float | None:
    """Pixel-level ROC AUC over all pixels of all images.

    Exact and memory-light: only the defect-free pixel scores are sorted (no
    argsort, no ROC curve materialised). Matches ``sklearn.metrics.roc_auc_score``
    on the flattened arrays up to float rounding (this one rounds the exact rational
    value once).

    Args:
        masks: Ground-truth masks, shape (N, H, W) or (H, W); nonzero = defect.
            Masks of good images are all zero.
        maps: Anomaly maps, float, same shape as ``masks``.

    Returns:
        The ROC AUC as a Python float, or None when the pixels are all defective or
        all defect-free.

    Raises:
        ValueError: On mismatched shapes or NaN in ``maps``.
    """
    masks, maps = _check_masks_maps(masks, maps)
    return _binary_auc(masks.reshape(-1), maps.reshape(-1))


# --------------------------------------------------------------------------- PRO


def _defect_pixels(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores and region ids of the defect pixels (8-connected regions, per image).

    Region ids are unique across the stack: 1..n_regions in image order.

    Returns:
        The scores of the defect pixels, their region ids (same order) and the
        number of regions.
    """
    scores, ids = [], []
    offset = 0
    for mask, amap in zip(masks, maps):
        if not mask.any():
            continue
        lab, n = _label_regions(mask, connectivity=2, background=0, return_num=True)
        scores.append(amap[mask])
        ids.append(lab[mask].astype(np.int64) + offset)
        offset += n
    if not scores:
        return np.empty(0, maps.dtype), np.empty(0, np.int64), 0
    return np.concatenate(scores), np.concatenate(ids), offset


def _pro_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact PRO curve, or None when PRO or FPR is undefined (see ``pro_curve``).

    Lowering the threshold from one distinct defect-pixel score ``u_prev`` to the
    next ``u``, the curve first moves horizontally (defect-free pixels with scores in
    (u, u_prev) turn positive, PRO unchanged), then, at ``t = u``, along one segment
    to the point where every pixel with score ``u`` -- defective or not -- is
    positive (ties form one step). Those two vertices per distinct defect-pixel score
    describe the whole polyline; the thresholds that add only defect-free pixels lie
    on its horizontal runs and add no area, so they are not enumerated. Only the
    defect-free scores are sorted (no argsort over all pixels) and the defect pixels
    are argsorted, which keeps time and memory low for millions of pixels.
    """
    pos_scores, pos_regions, n_regions = _defect_pixels(masks, maps)
    if n_regions == 0:
        return None
    neg = maps[~masks]  # a copy: sorted in place below
    n_neg = neg.size
    if n_neg == 0:
        return None
    neg.sort()

    # Each pixel of region r adds 1 / (|r| * n_regions) to the mean PRO once it is
    # predicted defective.
    sizes = np.bincount(pos_regions, minlength=n_regions + 1)[1:].astype(np.float64)
    weights = np.concatenate(([0.0], 1.0 / (sizes * n_regions)))[pos_regions]
    order = np.argsort(pos_scores, kind="stable")[::-1]  # descending score
    pos_scores = pos_scores[order]
    cum_pro = np.cumsum(weights[order])
    # Last index of each run of equal scores: at threshold u (that run's score) all
    # defect pixels with score >= u are positive.
    ends = np.append(np.flatnonzero(pos_scores[1:] != pos_scores[:-1]), pos_scores.size - 1)
    u = pos_scores[ends]  # distinct defect-pixel scores, descending
    pro_at_u = np.minimum(cum_pro[ends], 1.0)
    pro_at_u[-1] = 1.0  # all defect pixels positive (no round-off)

    fp_above_u = n_neg - np.searchsorted(neg, u, side="right")  # neg > u
    fp_at_u = n_neg - np.searchsorted(neg, u, side="left")  # neg >= u

    fp = np.empty(2 * u.size + 2, dtype=np.int64)
    pro = np.empty(2 * u.size + 2, dtype=np.float64)
    fp[0], pro[0] = 0, 0.0  # threshold above every score
    fp[1:-1:2], pro[1:-1:2] = fp_above_u, np.concatenate(([0.0], pro_at_u[:-1]))
    fp[2:-1:2], pro[2:-1:2] = fp_at_u, pro_at_u
    fp[-1], pro[-1] = n_neg, 1.0  # threshold at the lowest score: all positive

    # Drop repeated vertices (a run with no defect-free pixel in it).
    keep = np.ones(fp.size, dtype=bool)
    keep[1:] = (fp[1:] != fp[:-1]) | (pro[1:] != pro[:-1])
    return fp[keep] / n_neg, pro[keep]


def pro_curve(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-region-overlap curve, for plotting.

    A pixel is positive at threshold ``t`` when ``map >= t``; every distinct map
    value is a threshold, in decreasing order. Pixels with equal scores become
    positive together, so both coordinates may change in one step (a diagonal
    segment). The curve is returned as the vertices of that exact polyline: points
    of thresholds that only add defect-free pixels lie inside a horizontal run and
    are omitted (they change neither the shape nor the area), as are repeated
    points, so the arrays hold at most ``2 * (distinct defect-pixel scores) + 2``
    points however many pixels there are.

    Args:
        masks: Ground-truth masks, shape (N, H, W) or (H, W); nonzero = defect.
            Regions are 8-connected components, labelled per image.
        maps: Anomaly maps, float, same shape as ``masks``.

    Returns:
        ``(fpr, pro)``: two float64 arrays of equal length, starting at (0, 0)
        (threshold above every score) and ending at (1, 1) (threshold at the lowest
        score). Both are non-decreasing.

    Raises:
        ValueError: When there is no defect pixel or no defect-free pixel (the
            curve is undefined), on mismatched shapes, or on NaN in ``maps``.
    """
    masks, maps = _check_masks_maps(masks, maps)
    curve = _pro_curve(masks, maps)
    if curve is None:
        raise ValueError("PRO curve needs at least one defect and one defect-free pixel")
    return curve


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under y(x) for x in [x[0], x_max], interpolating at x_max.

    ``x`` must be non-decreasing. Repeated x values (vertical steps) add no area, so
    which of them is kept at ``x_max`` does not matter.
    """
    n_in = int(np.searchsorted(x, x_max, side="right"))  # points with x <= x_max
    xs, ys = x[:n_in], y[:n_in]
    if n_in < x.size and xs[-1] < x_max:
        x0, x1, y0, y1 = x[n_in - 1], x[n_in], y[n_in - 1], y[n_in]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        xs = np.append(xs, x_max)
        ys = np.append(ys, y_at)
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1])) / 2.0)


def aupro(masks: Any, maps: Any, fpr_limit: float = 0.3) -> float | None:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD's AUPRO).

    See ``pro_curve`` for the curve. The area is integrated with the trapezoid rule
    from FPR 0 to ``fpr_limit``, with the curve linearly interpolated exactly at
    ``fpr_limit``, and divided by ``fpr_limit``: a perfect map scores 1.0, a
    constant map ``fpr_limit / 2``.

    Args:
        masks: Ground-truth masks, shape (N, H, W) or (H, W); nonzero = defect.
        maps: Anomaly maps, float, same shape as ``masks``.
        fpr_limit: Upper FPR integration limit, in (0, 1].

    Returns:
        The normalised AUPRO as a Python float, or None when there is no defect pixel
        (or no defect-free pixel, so that the FPR is undefined).

    Raises:
        ValueError: On ``fpr_limit`` outside (0, 1], mismatched shapes, or NaN.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    masks, maps = _check_masks_maps(masks, maps)
    curve = _pro_curve(masks, maps)
    if curve is None:
        return None
    fpr, pro = curve
    return _area_up_to(fpr, pro, float(fpr_limit)) / float(fpr_limit)


# --------------------------------------------------------------------------- decisions


def classification_metrics(labels: Any, predicted: Any) -> dict[str, float | int | None]:
    """Metrics of hard good/defective decisions.

    Args:
        labels: Ground-truth labels, 0 = good, 1 = defective (bools accepted).
        predicted: Predicted labels, same encoding and length.

    Returns:
        A dict with

        * ``tp``, ``fp``, ``tn``, ``fn``: counts (Python ints), defective = positive;
        * ``tpr``: tp / (tp + fn), or None when there are no defective images;
        * ``tnr``: tn / (tn + fp), or None when there are no good images;
        * ``balanced_accuracy``: the mean of ``tpr`` and ``tnr`` over those that
          exist (None for empty input);
        * ``precision``: tp / (tp + fp), 0.0 when nothing is predicted defective;
        * ``f1``: ``sklearn.metrics.f1_score`` with ``zero_division=0``;
        * ``accuracy``: (tp + tn) / total (None for empty input).

    Raises:
        ValueError: On mismatched lengths or labels other than 0/1.
    """
    y = _as_binary_labels(labels, "labels")
    p = _as_binary_labels(predicted, "predicted")
    if y.size != p.size:
        raise ValueError(f"{y.size} labels but {p.size} predictions")
    if y.size == 0:
        tn = fp = fn = tp = 0
    else:
        tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, p, labels=[0, 1]).ravel())
    tpr = tp / (tp + fn) if tp + fn else None
    tnr = tn / (tn + fp) if tn + fp else None
    rates = [r for r in (tpr, tnr) if r is not None]
    total = tp + fp + tn + fn
    f1 = float(f1_score(y, p, labels=[0, 1], pos_label=1, zero_division=0)) if total else 0.0
    return {
        "tpr": None if tpr is None else float(tpr),
        "tnr": None if tnr is None else float(tnr),
        "balanced_accuracy": float(sum(rates) / len(rates)) if rates else None,
        "f1": f1,
        "precision": float(tp / (tp + fp)) if tp + fp else 0.0,
        "accuracy": float((tp + tn) / total) if total else None,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }
