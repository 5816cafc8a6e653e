"""Testing a finetuned model: decisions, masks, metrics and pictures for every test image."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from anomaly import modeldir, plots
from anomaly.data.io import read_images, read_mask
from anomaly.errors import AnomalyError
from anomaly.finetune import LoadedModel, load_model
from anomaly.metrics import aupro, classification_metrics, image_auroc, pixel_auroc
from anomaly.postprocessing import PostProcessor, best_balanced_accuracy
from anomaly.progress import advance as advance_progress
from anomaly.progress import step as progress_step

PREDICTION_FIELDS = ("image", "label", "defect_type", "score", "predicted", "used_for_finetune")


REPORT_FILE = "report.html"


def _predictions_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PREDICTION_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _read_finetune(model_dir: Path, method: str | None, dtype: str | None) -> list[tuple[dict, PostProcessor]]:
    results = modeldir.finetune_results(model_dir)
    if method or dtype:
        results = [p for p in results if (not method or p.parent.name.startswith(f"{method}_"))
                   and (not dtype or p.parent.name.endswith(f"_{dtype}"))]
    if not results:
        raise AnomalyError(f"{model_dir}: no finetune results"
                           f"{f' for {method}/{dtype}' if method or dtype else ''} "
                           f"(run anomaly-finetune -p {model_dir} first)")
    out = []
    for path in results:
        pp = PostProcessor.load(path.parent)
        out.append((json.loads(path.read_text()), pp))
    return out


def evaluate_one(loaded: LoadedModel, params: dict, pp: PostProcessor, save: bool = False,
                 progress: bool = True, report: bool = False) -> dict:
    """Test one finetuned (method, dtype) pair and write `test/<method>_<dtype>/`.

    Args:
        loaded: the model and its dataset.
        params: the content of its finetune.json (the finetune images are excluded).
        pp: the post-processing saved beside it.
        save: also write the maps and a picture per image.
        progress: print what it does.
        report: also write report.html (`anomaly.report`).

    Returns:
        The content of metrics.json.
    """
    method, dtype = pp.method, pp.dtype
    threshold, min_area = pp.threshold, pp.min_area
    test = loaded.dataset.require_test()
    used = set(params.get("finetune_images", []))
    size = loaded.config.image_size

    # Warm up on one image first: loading the backbone and tracing the graph happen once per
    # process, and images_per_second is the steady rate (reading the images included).
    loaded.detector.anomaly_maps(read_images([test[0].path], loaded.config.color_mode, size), method, dtype)
    start = time.perf_counter()
    images = read_images([s.path for s in test], loaded.config.color_mode, size)
    with progress_step(f"testing {len(test)} images, maps {method}/{dtype}", len(test), enabled=progress):
        if save:
            maps, recons = loaded.detector.anomaly_maps(images, method, dtype, return_reconstructions=True)
        else:
            maps, recons = loaded.detector.anomaly_maps(images, method, dtype), None
        own = loaded.detector.image_scores(images) if pp.image_score == "detector" else None
    decided = pp.apply(maps, own)
    seconds = time.perf_counter() - start
    maps, scores, predicted = decided.maps, decided.scores, decided.is_anomalous.astype(int)
    labels = np.array([s.label for s in test])
    keep = np.array([s.relpath not in used for s in test])
    metrics: dict = {"method": method, "dtype": dtype, "mode": params.get("mode", "semi"),
                     "smooth": pp.smooth, "score_sigma": pp.score_sigma, "image_score": pp.image_score,
                     "normalize": pp.normalize, "min_area": min_area, "threshold": threshold,
                     "n_images": int(keep.sum()), "n_excluded_finetune": int((~keep).sum()),
                     "n_good": int((labels[keep] == 0).sum()), "n_defective": int((labels[keep] == 1).sum()),
                     "image_auroc": image_auroc(labels[keep], scores[keep])}
    masks = None
    # Image-level detectors paint their score over the whole map: no pixel metrics for them.
    if loaded.dataset.has_masks and loaded.detector.pixel_level:
        masks = np.stack([read_mask(s.mask_path, s.path, size) if s.mask_path else np.zeros(size, bool)
                          for s in test])
        metrics["pixel_auroc"] = pixel_auroc(masks[keep], maps[keep])
        metrics["aupro_0.3"] = aupro(masks[keep], maps[keep], fpr_limit=0.3)
    else:
        metrics["pixel_auroc"] = None
        metrics["aupro_0.3"] = None
    cls = classification_metrics(labels[keep], predicted[keep])
    metrics.update({k: cls[k] for k in ("tpr", "tnr", "balanced_accuracy", "f1", "precision", "accuracy")})
    # What the best (min_area, threshold) on this very test set would reach: a diagnostic of the gap
    # between the maps and the decisions made from them, never used to choose anything.
    metrics["balanced_accuracy_best"] = best_balanced_accuracy(maps[keep], labels[keep], (threshold, min_area))
    metrics.update({"seconds": seconds, "images_per_second": len(test) / seconds if seconds > 0 else None,
                    "model_file": loaded.model_file.name})

    rows = [{"image": s.relpath, "label": s.label, "defect_type": s.defect_type, "score": f"{sc:.6g}",
             "predicted": int(p), "used_for_finetune": str(s.relpath in used).lower()}
            for s, sc, p in zip(test, scores, predicted)]
    target = modeldir.test_dir(loaded.model_dir, method, dtype)
    with modeldir.replace_folder(target) as tmp:
        modeldir.write_text(tmp / modeldir.PREDICTIONS_FILE, _predictions_csv(rows))
        if save:
            _save_pictures(tmp, test, images, maps, decided.masks, recons, masks, scores, predicted, threshold,
                           progress)
        modeldir.write_json(tmp / modeldir.METRICS_FILE, metrics)
        if report:
            from anomaly.report import write_report

            title = f"{loaded.model_dir.name}: {loaded.dataset.name} test, map {method}/{dtype}"
            write_report(tmp / REPORT_FILE, title, [s.relpath for s in test], scores, maps, images, threshold,
                         min_area, labels, masks, {k: v for k, v in metrics.items() if k != "model_file"})
    metrics["dir"] = str(target)
    return metrics


def _save_pictures(folder: Path, test, images, maps, seg, recons, masks, scores, predicted, threshold: float,
                   progress: bool) -> None:
    """maps/<relative path>.npy and images/<defect>/<stem>.png of every test image, drawn on a few
    threads (NumPy and Pillow's PNG encoder release the GIL: about twice the rate on 2 cores)."""
    vmax = float(np.quantile(maps, 0.999)) or None

    def save_one(i: int) -> None:
        s = test[i]
        rel = Path(s.relpath)
        (folder / "maps" / rel.parent).mkdir(parents=True, exist_ok=True)
        np.save(folder / "maps" / rel.parent / f"{rel.name}.npy", maps[i].astype(np.float32))
        title = (f"{s.relpath}  score {scores[i]:.4g}  predicted "
                 f"{'defective' if predicted[i] else 'good'}  truth {'defective' if s.label else 'good'}")
        # images/<defect>/<stem>.png: the test/ level would only repeat the folder's own name.
        plots.save_result(folder / "images" / Path(*rel.parts[1:-1]) / f"{rel.stem}.png", images[i], maps[i],
                          seg[i], reconstruction=None if recons is None else recons[i],
                          truth=None if masks is None else masks[i], title=title, vmax=vmax, threshold=threshold)

    with progress_step(f"saving maps and pictures of {len(test)} images", len(test), enabled=progress), \
            ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for done in as_completed([pool.submit(save_one, i) for i in range(len(test))]):
            done.result()  # a failure is raised here, in the caller's thread
            advance_progress(1)


def evaluate(path: str | Path, save: bool = False, method: str | None = None, dtype: str | None = None,
             progress: bool = True, data_dir: str | Path | None = None, report: bool = False) -> list[dict]:
    """Test every finetuned (method, dtype) pair of a model (or only the one asked for).

    Returns:
        One metrics dict per pair.
    """
    loaded = load_model(path, data_dir)
    return [evaluate_one(loaded, params, pp, save=save, progress=progress, report=report)
            for params, pp in _read_finetune(loaded.model_dir, method, dtype)]
