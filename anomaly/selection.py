"""Choosing the detector without one real defect: `anomaly-train -a auto`.

Each candidate detector is trained on the same images (the same seed holds out the same validation
images), then scored on the validation images (defect-free, never trained on) and seeded synthetic
defects made on them (`anomaly.data.synthetic.validation_defects`, the set `anomaly-finetune
--mode synthetic` uses): the image AUROC of its default image score, and AUPRO@0.3 against the
synthetic masks. The highest image AUROC wins; candidates within `AUROC_TIE` of it are told apart
by AUPRO, then by their order. The winner's model directory is kept with `selection.csv` and
`selection.png`; the others are removed. No test image is read.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomaly import modeldir
from anomaly.data.synthetic import DEFECT_KINDS
from anomaly.errors import AnomalyError
from anomaly.metrics import aupro, image_auroc
from anomaly.postprocessing import PostProcessor

# Cheap on a 2-core CPU (a minute or two on a few hundred 256 px images); an autoencoder is added
# when the user gives a training budget (--max-minutes).
CANDIDATES = ("padim", "fre", "patchcore")
AUTOENCODER = "mvtecCAE"
# Validation sets are small (tens of images): AUROCs this close are not told apart by the AUROC.
AUROC_TIE = 0.005
SELECTION_FILE = "selection.csv"
SELECTION_PLOT = "selection.png"
FIELDS = ("detector", "chosen", "image_auroc", "aupro_0.3", *(f"auroc_{k}" for k in DEFECT_KINDS),
          "n_validation", "n_synthetic", "synthetic_seed", "copies", "fit_seconds", "score_seconds")


@dataclass
class CandidateScore:
    """How one trained candidate separates the validation images from their synthetic defects.

    Attributes:
        detector: the detector's name.
        image_auroc: image AUROC of the detector's default image score.
        aupro: AUPRO@0.3 against the synthetic masks (None for image-level detectors).
        auroc_by_kind: the image AUROC of the validation images against each kind alone.
        n_validation, n_synthetic: the images scored.
        seed, copies: remake the synthetic set (`validation_defects(images, seed)`).
        fit_seconds, score_seconds: the time to train and to score it.
        model_dir: where it was trained.
        chosen: whether `choose` picked it.
    """

    detector: str
    image_auroc: float | None
    aupro: float | None
    auroc_by_kind: dict[str, float | None]
    n_validation: int
    n_synthetic: int
    seed: int
    copies: int
    fit_seconds: float = 0.0
    score_seconds: float = 0.0
    model_dir: Path | None = None
    chosen: bool = False

    def row(self) -> dict:
        """The candidate's row of selection.csv."""
        def fmt(value):
            return "" if value is None else f"{value:.4f}"

        return {"detector": self.detector, "chosen": str(self.chosen).lower(), "image_auroc": fmt(self.image_auroc),
                "aupro_0.3": fmt(self.aupro), **{f"auroc_{k}": fmt(v) for k, v in self.auroc_by_kind.items()},
                "n_validation": self.n_validation, "n_synthetic": self.n_synthetic, "synthetic_seed": self.seed,
                "copies": self.copies, "fit_seconds": f"{self.fit_seconds:.1f}",
                "score_seconds": f"{self.score_seconds:.1f}"}


def score_model(path: str | Path, seed: int | None = None, progress: bool = False) -> CandidateScore:
    """Score a trained model on its validation images and synthetic defects made on them.

    Args:
        path: the model directory (or its model file).
        seed: seeds the synthetic defects; the training seed when None.
        progress: show progress bars.

    Returns:
        The candidate's scores (`fit_seconds` from its summary).
    """
    from anomaly.finetune import load_model

    start = time.perf_counter()
    loaded = load_model(path)
    detector, cfg = loaded.detector, loaded.config
    seed = cfg.seed if seed is None else seed
    pp = PostProcessor.for_detector(detector)
    if pp.image_score == "area":  # needs a threshold, which only finetuning chooses
        pp.image_score = "max"
    val = loaded.samples(cfg.extra["split"]["validation"])
    show = f"{detector.name}: maps of the validation images" if progress else ""
    val_images, val_maps = loaded.maps(val, pp.method, pp.dtype, show=show)
    defects, defect_maps = loaded.defect_maps(val_images, pp.method, pp.dtype, seed,
                                              show=f"{detector.name}: maps of the synthetic defects" if progress
                                              else "")
    loaded.fit_map_stats(pp)
    maps = pp.transform(np.concatenate([val_maps, defect_maps]))
    own = None
    if pp.image_score == "detector":
        own = np.concatenate([detector.image_scores(val_images), detector.image_scores(defects.images)])
    scores = pp.scores(maps, own)
    labels = np.r_[np.zeros(len(val_maps), int), np.ones(len(defect_maps), int)]
    kinds = np.array([""] * len(val_maps) + list(defects.kinds))
    by_kind = {}
    for kind in DEFECT_KINDS:
        keep = (labels == 0) | (kinds == kind)
        by_kind[kind] = image_auroc(labels[keep], scores[keep]) if (kinds == kind).any() else None
    pixel = None
    if detector.pixel_level:
        masks = np.concatenate([np.zeros(val_maps.shape, bool), defects.masks])
        pixel = aupro(masks, maps, fpr_limit=0.3)
    summary_file = loaded.model_dir / modeldir.SUMMARY_FILE
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    return CandidateScore(detector.name, image_auroc(labels, scores), pixel, by_kind, len(val_maps),
                          len(defect_maps), seed, defects.copies, float(summary.get("fit_seconds", 0.0)),
                          time.perf_counter() - start, loaded.model_dir)


def choose(scores: list[CandidateScore]) -> int:
    """The index of the winner: the highest image AUROC; within `AUROC_TIE` of it the highest AUPRO
    (None lowest), then the earliest."""
    if not scores:
        raise AnomalyError("no candidate detector to choose from", "candidates")
    aurocs = [-1.0 if s.image_auroc is None else s.image_auroc for s in scores]
    top = max(aurocs)
    tied = [i for i, a in enumerate(aurocs) if a >= top - AUROC_TIE]
    return max(tied, key=lambda i: (-1.0 if scores[i].aupro is None else scores[i].aupro, -i))


def selection_csv(scores: list[CandidateScore]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(s.row() for s in scores)
    return buf.getvalue()


def explain(scores: list[CandidateScore], chosen: int) -> str:
    """One line on why the winner won."""
    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    best = scores[chosen]
    others = ", ".join(f"{s.detector} {fmt(s.image_auroc)}" for i, s in enumerate(scores) if i != chosen)
    tied = [s.detector for i, s in enumerate(scores) if i != chosen and s.image_auroc is not None
            and best.image_auroc is not None and s.image_auroc >= best.image_auroc - AUROC_TIE]
    why = f" (tied within {AUROC_TIE:g} with {', '.join(tied)}: the higher AUPRO wins)" if tied else ""
    return (f"chose {best.detector}: image AUROC {fmt(best.image_auroc)}, AUPRO {fmt(best.aupro)} on "
            f"{best.n_validation} validation images and {best.n_synthetic} synthetic defects"
            f"{f' (others: {others})' if others else ''}{why}")


def candidate_overrides(overrides: dict, candidate: str) -> dict:
    """The flags that apply to one candidate: the run's settings, and the hyper-parameters it has."""
    from anomaly.config import TrainConfig
    from anomaly.detectors import detector_class

    cls = detector_class(candidate)
    own = {*cls.hyper_parameters(), *cls.aliases}
    return {k: v for k, v in overrides.items()
            if v is not None and (k in TrainConfig.__dataclass_fields__ or k in own)}


def _remove_model_dir(model_dir: Path, root: Path) -> None:
    """Remove a candidate's model directory and the folders above it left empty, up to `root`."""
    import shutil

    shutil.rmtree(model_dir, ignore_errors=True)
    for parent in model_dir.parents:
        if parent == root or not parent.is_relative_to(root):
            break
        try:
            os.rmdir(parent)
        except OSError:  # not empty: another model lives there
            break


def train_auto(overrides: dict, candidates: list[str], config_file: str | None = None,
               progress: bool = True):
    """Train every candidate, score each on synthetic defects, keep the best.

    Args:
        overrides: the command line's values (as `load_train_config` takes them), without
            `architecture`.
        candidates: detector names, in the order that breaks ties.
        config_file: a YAML file of options (its `architecture` is ignored).
        progress: print progress.

    Returns:
        (the winner's `TrainOutcome`, every candidate's `CandidateScore`, the winner's index).
    """
    from anomaly.config import load_train_config
    from anomaly.detectors import list_detectors
    from anomaly.train import train

    known = list_detectors()
    for name in candidates:
        if name not in known:
            raise AnomalyError(f"unknown detector '{name}': expected names from {', '.join(known)}", "candidates")
    if len(set(candidates)) != len(candidates) or not candidates:
        raise AnomalyError(f"expected distinct detector names, got {', '.join(candidates) or 'none'}", "candidates")
    used = {k for name in candidates for k in candidate_overrides(overrides, name)}
    unused = [k for k, v in overrides.items() if v is not None and k not in used]
    if unused:
        raise AnomalyError(f"'{unused[0]}' is not an option of any candidate ({', '.join(candidates)})",
                           unused[0])
    configs = [load_train_config({**candidate_overrides(overrides, name), "architecture": name}, config_file)
               for name in candidates]  # every candidate's options checked before any training
    root = modeldir.check_output_dir(configs[0].output_dir).resolve()
    outcomes, scores = [], []
    try:
        for config in configs:
            if progress:
                print(f"candidate {len(outcomes) + 1}/{len(configs)}: {config.architecture}")
            outcome = train(config, progress=progress)
            outcomes.append(outcome)
            if outcome.fit.interrupted:
                raise KeyboardInterrupt
            scores.append(score_model(outcome.model_dir, progress=progress))
    except BaseException:
        for outcome in outcomes:
            _remove_model_dir(outcome.model_dir.resolve(), root)
        raise
    chosen = choose(scores)
    scores[chosen].chosen = True
    winner = outcomes[chosen]
    from anomaly import plots

    modeldir.write_text(winner.model_dir / SELECTION_FILE, selection_csv(scores))
    plots.plot_selection(scores, winner.model_dir / SELECTION_PLOT)
    for i, outcome in enumerate(outcomes):
        if i != chosen:
            _remove_model_dir(outcome.model_dir.resolve(), root)
    return winner, scores, chosen
