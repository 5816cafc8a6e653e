"""Figures saved in model directories: training curves, finetuning curves, per-image results."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anomaly.plots.common import gray, plt, save


def plot_history(history: list[dict], path: Path) -> None:
    """Loss and metric curves, one panel each, training and validation."""
    keys = [k for k in history[0] if k not in ("epoch", "lr") and not k.startswith("val_")] if history else []
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(5 * max(len(keys), 1), 3.5), squeeze=False)
    epochs = [row["epoch"] for row in history]
    for ax, key in zip(axes[0], keys):
        ax.plot(epochs, [row[key] for row in history], label=key)
        if f"val_{key}" in history[0]:
            ax.plot(epochs, [row[f"val_{key}"] for row in history], label=f"val_{key}")
        ax.set_xlabel("epoch")
        ax.legend()
    save(fig, path)


def plot_lr_finder(lrs, losses, lr_opt: float, lr_base: float, path: Path) -> None:
    """Smoothed loss against learning rate (log axis) with the chosen rates marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    lo, hi = (10, len(lrs) - 1) if len(lrs) > 20 else (0, len(lrs))
    ax.plot(lrs[lo:hi], losses[lo:hi])
    ax.set_xscale("log")
    ax.axvline(lr_opt, color="tab:red", ls="--", label=f"lr_opt {lr_opt:.2e}")
    ax.axvline(lr_base, color="tab:green", ls=":", label=f"lr_base {lr_base:.2e}")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed loss")
    ax.legend()
    save(fig, path)


def plot_schedule(lrs: list[float], path: Path) -> None:
    """Learning rate of every training batch."""
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(lrs)
    ax.set_xlabel("batch")
    ax.set_ylabel("learning rate")
    save(fig, path)


def plot_finetune(table: list[dict], best: dict, path: Path) -> None:
    """The candidate pairs against min_area, the chosen pair marked.

    Left: each min_area's threshold. Right: TPR, TNR and balanced accuracy on the finetune
    images (semi mode), or the validation images' false-positive rate (normal-only mode).
    """
    areas = [row["min_area"] for row in table]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
    ax1.plot(areas, [row["threshold"] for row in table])
    ax1.plot([best["min_area"]], [best["threshold"]], "o", color="k",
             label=f"chosen: min_area {best['min_area']}, threshold {best['threshold']:.4g}")
    ax1.set_xlabel("min_area")
    ax1.set_ylabel("threshold")
    ax1.legend(fontsize=8)
    keys = [k for k in ("tpr", "tnr", "balanced_accuracy", "val_fpr") if any(row.get(k) is not None for row in table)]
    for key in keys:
        ax2.plot(areas, [np.nan if row.get(key) is None else row[key] for row in table],
                 label="validation false-positive rate" if key == "val_fpr" else key)
    ax2.axvline(best["min_area"], color="k", ls="--", lw=0.8, label="chosen min_area")
    ax2.set_xlabel("min_area")
    ax2.legend(fontsize=8)
    save(fig, path)


def plot_synthetic_defects(images: np.ndarray, masks: np.ndarray, kinds: list[str], path: Path,
                           per_kind: int = 3) -> None:
    """Examples of synthetic validation defects: a row per kind, their masks outlined in red."""
    order = list(dict.fromkeys(kinds))
    fig, axes = plt.subplots(len(order), per_kind, figsize=(2.2 * per_kind, 2.3 * len(order)), squeeze=False)
    for r, kind in enumerate(order):
        examples = [i for i, k in enumerate(kinds) if k == kind][:per_kind]
        for c in range(per_kind):
            ax = axes[r, c]
            ax.set_axis_off()
            if c >= len(examples):
                continue
            arr, cmap = gray(images[examples[c]])
            ax.imshow(arr, cmap=cmap, vmin=0, vmax=1)
            if masks[examples[c]].any():
                ax.contour(masks[examples[c]], levels=[0.5], colors="r", linewidths=0.6)
            if c == 0:
                ax.set_title(kind, fontsize=9, loc="left")
    fig.tight_layout()
    save(fig, path)


def plot_selection(scores: list, path: Path) -> None:
    """`anomaly-train -a auto`: each candidate's image AUROC and AUPRO on the validation images and
    their synthetic defects (the chosen one starred), and its image AUROC on each kind of defect."""
    names = [f"{s.detector} *" if s.chosen else s.detector for s in scores]
    x = np.arange(len(scores))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for offset, label, values in ((-0.2, "image AUROC", [s.image_auroc for s in scores]),
                                  (0.2, "AUPRO@0.3", [s.aupro for s in scores])):
        ax1.bar(x + offset, [np.nan if v is None else v for v in values], width=0.4, label=label)
    ax1.set_xticks(x, names)
    ax1.set_ylim(0, 1.05)
    ax1.set_title("validation images + synthetic defects (* chosen)", fontsize=9)
    ax1.legend(fontsize=8, loc="lower right")
    kinds = list(scores[0].auroc_by_kind) if scores else []
    for s, name in zip(scores, names):
        ax2.plot(kinds, [np.nan if s.auroc_by_kind[k] is None else s.auroc_by_kind[k] for k in kinds], "o-",
                 label=name)
    ax2.set_ylabel("image AUROC")
    ax2.set_title("by kind of synthetic defect", fontsize=9)
    ax2.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)


def plot_inspection(image: np.ndarray, reconstruction: np.ndarray, amap: np.ndarray, path: Path,
                    title: str = "") -> None:
    """Input, reconstruction and residual map of one image (train --inspect)."""
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    for ax, (name, img) in zip(axes, (("input", image), ("reconstruction", reconstruction))):
        arr, cmap = gray(img)
        ax.imshow(arr, cmap=cmap, vmin=0, vmax=1)
        ax.set_title(name)
    im = axes[2].imshow(amap, cmap="inferno", vmin=0, vmax=1)
    axes[2].set_title(f"residual (max {amap.max():.3f})")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    save(fig, path)
