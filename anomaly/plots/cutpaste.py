"""Figures of what CutPaste learned: its synthetic anomalies and a t-SNE of its embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anomaly.plots.common import plt, save


def plot_synthetic_examples(images: np.ndarray, path: Path, seed: int = 0, n: int = 4) -> None:
    """A grid of synthetic anomalies: rows normal, CutPaste rectangle, CutPaste polygon, scar."""
    from anomaly.data.synthetic import cutpaste, scar

    rng = np.random.default_rng(seed)
    rows = [("normal", lambda x: (x, np.zeros(x.shape[:2], bool))),
            ("cutpaste", lambda x: cutpaste(x, rng)),
            ("cutpaste polygon", lambda x: cutpaste(x, rng, polygon=True)),
            ("scar", lambda x: scar(x, rng))]
    fig, axes = plt.subplots(len(rows), n, figsize=(2.2 * n, 2.3 * len(rows)))
    for r, (name, make) in enumerate(rows):
        for c in range(n):
            image, mask = make(images[(r * n + c) % len(images)])
            ax = axes[r, c]
            ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=1)
            if mask.any():
                ax.contour(mask, levels=[0.5], colors="r", linewidths=0.6)
            ax.set_axis_off()
            if c == 0:
                ax.set_title(name, fontsize=9, loc="left")
    fig.tight_layout()
    save(fig, path)


def plot_tsne(groups: dict[str, np.ndarray], path: Path, seed: int = 0) -> None:
    """t-SNE of embeddings, one colour per group (normal, synthetic kinds, real defects)."""
    from sklearn.manifold import TSNE

    names = [k for k, v in groups.items() if len(v)]
    x = np.concatenate([groups[k] for k in names])
    xy = TSNE(2, perplexity=min(30.0, max(2.0, (len(x) - 1) / 3)), random_state=seed,
              init="pca").fit_transform(x.astype(np.float64))
    fig, ax = plt.subplots(figsize=(6, 5))
    start = 0
    for name in names:
        n = len(groups[name])
        ax.scatter(*xy[start:start + n].T, s=10, label=f"{name} ({n})")
        start += n
    ax.legend(fontsize=8)
    ax.set_title("t-SNE of CutPaste embeddings")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    save(fig, path)
