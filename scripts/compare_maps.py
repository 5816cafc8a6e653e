"""Compare anomaly-map and image-score options on a trained model, without retraining.

For each residual map (ssim, mssim, l2), Gaussian smoothing sigma and (with --normalize) with
and without per-pixel z-scores against the training images' maps, prints image AUROC for
several image scores, and pixel AUROC / AUPRO@0.3 of the map, on all test images.

Example:
    python scripts/compare_maps.py -p saved_models/mvtec_ad/bottle/mvtecCAE/ssim/<time> --normalize --out maps.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from scipy import ndimage

from anomaly.data.io import read_images, read_mask
from anomaly.finetune import load_model
from anomaly.metrics import aupro, image_auroc, pixel_auroc
from anomaly.postprocessing import MapStats


def image_scores(maps: np.ndarray) -> dict[str, np.ndarray]:
    """Candidate image scores of (N, H, W) maps."""
    flat = maps.reshape(len(maps), -1)
    k = max(flat.shape[1] // 100, 1)
    return {"max": flat.max(axis=1), "top1%_mean": np.sort(flat, axis=1)[:, -k:].mean(axis=1),
            "mean": flat.mean(axis=1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-p", "--path", required=True)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0, 2, 4, 8])
    p.add_argument("--normalize", action="store_true", help="also score per-pixel z-scores (finetune --normalize)")
    p.add_argument("--out", help="CSV file for the table")
    args = p.parse_args()

    loaded = load_model(args.path)
    test = loaded.dataset.require_test()
    size = (loaded.config.input_size,) * 2
    images = read_images([s.path for s in test], loaded.config.color_mode, size)
    labels = np.array([s.label for s in test])
    masks = np.stack([read_mask(s.mask_path, s.path, size) if s.mask_path else np.zeros(size, bool) for s in test])
    train = loaded.samples(loaded.config.extra["split"]["train"]) if args.normalize else []
    train_images = read_images([s.path for s in train], loaded.config.color_mode, size) if train else None

    def smooth(maps, sigma):
        return maps if sigma == 0 else ndimage.gaussian_filter(maps, sigma=(0, sigma, sigma), mode="nearest")

    rows = []
    for method in loaded.detector.methods:
        raw = loaded.detector.anomaly_maps(images, method, "float64")
        raw_train = loaded.detector.anomaly_maps(train_images, method, "float64") if train else None
        for sigma in args.sigmas:
            for z in (False, True) if train else (False,):
                maps = smooth(raw, sigma)
                if z:
                    maps = MapStats.fit(smooth(raw_train, sigma)).apply(maps)
                row = {"method": method, "sigma": sigma, "z": z, "pixel_auroc": pixel_auroc(masks, maps),
                       "aupro_0.3": aupro(masks, maps)}
                # The image score finetune and test use: the maximum after a sigma-4 Gaussian.
                for name, score in image_scores(smooth(maps, 4)).items():
                    row[f"image_auroc_{name}"] = image_auroc(labels, score)
                rows.append(row)
                print("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                      flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
