"""Figures of one benchmark run: ROC, PRO curve, score histograms and example maps.

Pure plotting: the caller (``anomaly.benchmark.plot_run``) reads predictions, maps and masks
and hands over arrays, so these functions can be reused on any detector's output.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

FPR_LIMIT = 0.3


def _save(fig, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def _gray(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """A single-channel image as (H, W) with a grey colour map; colour images as they are."""
    return (image[..., 0], "gray") if image.shape[-1] == 1 else (image, None)


def plot_roc(labels: np.ndarray, scores: np.ndarray, path: Path, title: str = "") -> None:
    """Image-level ROC curve (good = 0, defective = 1) with its AUC in the legend.

    Args:
        labels: (N,) 0 good / 1 defective.
        scores: (N,) image scores, higher = more anomalous.
        path: the PNG to write.
        title: figure title.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = np.asarray(labels)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="0.7", ls="--", lw=0.8)
    if len(np.unique(labels)) == 2:
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, lw=1.5, label=f"AUROC {roc_auc_score(labels, scores):.3f}")
        ax.legend(loc="lower right")
    else:
        # One class only (e.g. a test set without defects): the curve is undefined, say so.
        ax.text(0.5, 0.5, "ROC undefined: one class only", ha="center", va="center")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false-positive rate (good images)",
           ylabel="true-positive rate (defective images)", title=title)
    _save(fig, path)


def plot_pro(fpr: np.ndarray, pro: np.ndarray, path: Path, fpr_limit: float = FPR_LIMIT,
             aupro: float | None = None, title: str = "") -> None:
    """The per-region-overlap curve up to `fpr_limit` (the range AUPRO integrates).

    Args:
        fpr: non-decreasing pixel false-positive rates, from `anomaly.metrics.pro_curve`.
        pro: the matching per-region overlaps.
        path: the PNG to write.
        fpr_limit: right end of the plotted range.
        aupro: the normalised area, shown in the legend when given.
        title: figure title.
    """
    fpr, pro = np.asarray(fpr, np.float64), np.asarray(pro, np.float64)
    inside = fpr <= fpr_limit
    xs, ys = fpr[inside], pro[inside]
    if xs.size < fpr.size and (xs.size == 0 or xs[-1] < fpr_limit):
        # End the curve exactly at the limit, as the AUPRO integral does.
        xs = np.append(xs, fpr_limit)
        ys = np.append(ys, np.interp(fpr_limit, fpr, pro))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    label = "PRO" if aupro is None else f"AUPRO@{fpr_limit:g} {aupro:.3f}"
    ax.plot(xs, ys, lw=1.5, label=label)
    ax.fill_between(xs, ys, alpha=0.15)
    ax.set(xlim=(0, fpr_limit), ylim=(0, 1.01), xlabel="false-positive rate (defect-free pixels)",
           ylabel="per-region overlap", title=title)
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_score_histograms(labels: np.ndarray, scores: np.ndarray, path: Path, title: str = "") -> None:
    """Histograms of the image scores of good and defective images on shared bins.

    Args:
        labels: (N,) 0 good / 1 defective.
        scores: (N,) image scores.
        path: the PNG to write.
        title: figure title.
    """
    labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if scores.size:
        lo, hi = float(scores.min()), float(scores.max())
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 31)
        for value, name, color in ((0, "good", "tab:green"), (1, "defective", "tab:red")):
            part = scores[labels == value]
            if part.size:
                ax.hist(part, bins=bins, alpha=0.55, color=color, label=f"{name} ({part.size})")
        ax.legend()
    ax.set(xlabel="image score (max of the smoothed anomaly map)", ylabel="images", title=title)
    _save(fig, path)


def plot_examples(images: list[np.ndarray], maps: list[np.ndarray], captions: list[str], path: Path,
                  truths: list[np.ndarray | None] | None = None, vmax: float | None = None,
                  title: str = "", columns: int = 4) -> None:
    """A grid of test images with their anomaly maps overlaid (true defect outline in cyan).

    Args:
        images: (H, W, C) images in [0, 1].
        maps: (H, W) anomaly maps, one per image.
        captions: one short caption per image.
        path: the PNG to write.
        truths: optional (H, W) bool masks (None entries for images without one).
        vmax: the top of the colour scale, shared by all panels so they compare; the
            largest map value when None.
        title: figure title.
        columns: panels per row.
    """
    n = len(images)
    rows = max(1, -(-n // columns))
    cols = max(1, min(columns, n))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    top = vmax or (max(float(m.max()) for m in maps) if maps else 1.0) or 1.0
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        arr, cmap = _gray(images[i])
        ax.imshow(arr, cmap=cmap, vmin=0, vmax=1)
        ax.imshow(maps[i], cmap="inferno", alpha=0.5, vmin=0, vmax=top)
        truth = truths[i] if truths else None
        if truth is not None and truth.any():
            ax.contour(truth, levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set_title(captions[i], fontsize=8)
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no test images", ha="center", va="center")
    fig.suptitle(title, fontsize=9)
    _save(fig, path)
