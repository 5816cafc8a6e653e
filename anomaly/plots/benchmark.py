"""Figures of one benchmark run: ROC, PRO curve, score histograms and example maps.

`plot_run` reads a tested model's predictions, maps and masks and draws them; the other
functions are pure plotting on arrays, so they can be reused on any detector's output.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from anomaly.plots.common import gray, plt, save

FPR_LIMIT = 0.3
# The figures of a run in its plots/<run>/ folder (pro.png only where the test set has masks).
PLOT_FILES = ("roc.png", "pro.png", "hist.png", "examples.png")
# examples.png: this many panels, up to N_GOOD_EXAMPLES of them good images.
N_EXAMPLES = 8
N_GOOD_EXAMPLES = 3


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
    save(fig, path)


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
    save(fig, path)


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
    save(fig, path)


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
        arr, cmap = gray(images[i])
        ax.imshow(arr, cmap=cmap, vmin=0, vmax=1)
        ax.imshow(maps[i], cmap="inferno", alpha=0.5, vmin=0, vmax=top)
        truth = truths[i] if truths else None
        if truth is not None and truth.any():
            ax.contour(truth, levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set_title(captions[i], fontsize=8)
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no test images", ha="center", va="center")
    fig.suptitle(title, fontsize=9)
    save(fig, path)


def _examples(rows: list[dict]) -> list[dict]:
    """Up to N_EXAMPLES rows: the lowest-scored defective images (the detector's hardest
    misses) and the highest-scored good ones (its nearest false alarms), defective first."""
    defective = sorted((r for r in rows if r["label"] == 1), key=lambda r: r["score"])
    good = sorted((r for r in rows if r["label"] == 0), key=lambda r: -r["score"])
    n_good = min(len(good), N_GOOD_EXAMPLES, N_EXAMPLES)
    n_defective = min(len(defective), N_EXAMPLES - n_good)
    n_good = min(len(good), N_EXAMPLES - n_defective)  # fill with good ones when defects are few
    return defective[:n_defective] + good[:n_good]


def plot_run(test_dir: str | Path, data_dir: str | Path, color_mode: str, out_dir: str | Path,
             aupro: float | None = None, title: str = "") -> list[Path]:
    """Write roc.png, hist.png, examples.png and (with masks) pro.png for one tested model.

    Reads `predictions.csv` and the maps saved by `evaluate(save=True)`; the images used for
    finetuning are left out, as they are from the metrics.

    Args:
        test_dir: the model's `test/<method>_<dtype>/` folder.
        data_dir: the dataset category folder the model was tested on.
        color_mode: "grayscale" or "rgb", to read the example images as the model saw them.
        out_dir: where the figures go.
        aupro: the AUPRO@0.3 to print on the PRO figure.
        title: a title for every figure.

    Returns:
        The figures written.
    """
    from anomaly.data.dataset import find_dataset
    from anomaly.data.io import read_image, read_mask
    from anomaly.metrics import pro_curve

    test_dir, out_dir = Path(test_dir), Path(out_dir)
    with (test_dir / "predictions.csv").open(newline="") as f:
        rows = [{**r, "label": int(r["label"]), "score": float(r["score"])} for r in csv.DictReader(f)
                if r["used_for_finetune"] != "true"]
    labels = np.array([r["label"] for r in rows], dtype=int)
    scores = np.array([r["score"] for r in rows], dtype=np.float64)
    written = [out_dir / "roc.png", out_dir / "hist.png"]
    plot_roc(labels, scores, written[0], title=title)
    plot_score_histograms(labels, scores, written[1], title=title)

    dataset = find_dataset(data_dir)
    samples = {s.relpath: s for s in dataset.test}
    maps_dir = test_dir / "maps"

    def load_map(relpath: str) -> np.ndarray:
        return np.load(maps_dir / f"{relpath}.npy")

    def load_mask(relpath: str, shape) -> np.ndarray:
        s = samples[relpath]
        return read_mask(s.mask_path, s.path, shape) if s.mask_path else np.zeros(shape, bool)

    if dataset.has_masks and rows and maps_dir.is_dir():
        maps = np.stack([load_map(r["image"]) for r in rows])
        masks = np.stack([load_mask(r["image"], maps.shape[1:]) for r in rows])
        if masks.any() and not masks.all():
            fpr, pro = pro_curve(masks, maps)
            plot_pro(fpr, pro, out_dir / "pro.png", aupro=aupro, title=title)
            written.append(out_dir / "pro.png")

    if maps_dir.is_dir():
        picked = _examples(rows)
        maps = [load_map(r["image"]) for r in picked]
        images = [read_image(samples[r["image"]].path, color_mode, m.shape) for r, m in zip(picked, maps)]
        truths = [load_mask(r["image"], m.shape) if dataset.has_masks else None for r, m in zip(picked, maps)]
        captions = [f"{r['defect_type']} {r['score']:.3g} -> {'defective' if r['predicted'] == '1' else 'good'}"
                    for r in picked]
        vmax = float(np.quantile(np.stack(maps), 0.999)) if maps else None
        plot_examples(images, maps, captions, out_dir / "examples.png", truths=truths, vmax=vmax,
                      title=(title + "  " if title else "") + "hardest defective, highest-scored good")
        written.append(out_dir / "examples.png")
    return written
