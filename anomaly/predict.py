"""A finetuned model applied to new, unlabelled images: what `anomaly-predict` does.

Images are read, judged and written batch by batch: `predictions.csv` gains its rows as they are
decided (flushed, so an interrupted run keeps them, and the same command run again skips the
images already there), an unreadable image becomes a row of `errors.csv` instead of stopping
the run, and memory stays flat however many images there are.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from anomaly import modeldir
from anomaly.api import Model
from anomaly.data.io import IMAGE_EXTENSIONS, conform, is_image_file, read_raw
from anomaly.errors import AnomalyError
from anomaly.progress import advance as advance_progress
from anomaly.progress import step as progress_step

PREDICTIONS_FILE = modeldir.PREDICTIONS_FILE
ERRORS_FILE = "errors.csv"
RECORD_FILE = "predict.json"
REPORT_FILE = "report.html"
FIELDS = ["image", "score", "is_anomalous", "anomalous_area_px", "threshold", "min_area"]
_GLOB_CHARS = set("*?[")


@dataclass
class PredictOutcome:
    """What a prediction run did.

    Attributes:
        out: the output folder.
        predicted: images judged by this run.
        skipped: images already in predictions.csv from an earlier run, not judged again.
        anomalous: of the images judged by this run, those decided anomalous.
        failed: (image, reason) of the images that could not be read.
        seconds: wall time of the judging.
    """

    out: Path
    predicted: int = 0
    skipped: int = 0
    anomalous: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Image files (absolute) from files, folders (searched recursively) and glob patterns, in
    order, once each.

    A file named directly is taken whatever its extension (it gets an error row if it cannot be
    read); from folders and patterns only files with an image extension are taken.

    Raises:
        AnomalyError: an input is neither a file, a folder nor a pattern that matches something,
            or nothing at all was found.
    """
    found: dict[Path, None] = {}  # absolute paths: one file named two ways is judged once

    def add(paths) -> None:
        found.update(dict.fromkeys(p.resolve() for p in paths))

    for item in inputs:
        path = Path(item).expanduser()
        if path.is_file():
            add([path])
        elif path.is_dir():
            add(sorted(p for p in path.rglob("*") if is_image_file(p)))
        elif _GLOB_CHARS & set(item):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(item), recursive=True))
            if not matches:
                raise AnomalyError(f"{item}: the pattern matches no file")
            for m in matches:
                add(sorted(p for p in m.rglob("*") if is_image_file(p)) if m.is_dir() else
                    [m] if is_image_file(m) else [])
        else:
            raise AnomalyError(f"{item}: no such file or folder")
    if not found:
        raise AnomalyError(f"{', '.join(inputs)}: no image files (expected {', '.join(IMAGE_EXTENSIONS)})")
    return list(found)


def default_output(model_dir: Path) -> Path:
    """A new `<model dir>/predict/<timestamp>` (with `_1`, `_2`, ... when that one exists)."""
    return modeldir.unused_folder(Path(model_dir) / "predict" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))


def unfinished_run(model_dir: Path, inputs: list[str], threshold: float, min_area: int) -> Path | None:
    """The latest `<model dir>/predict/<time>` folder that an interrupted run of the same inputs
    and rule left, so that running the same command again continues it."""
    runs = sorted((Path(model_dir) / "predict").glob("*/" + RECORD_FILE))
    if not runs:
        return None
    try:
        record = json.loads(runs[-1].read_text())
    except (OSError, ValueError):
        return None
    same = (record.get("inputs") == list(inputs) and record.get("threshold") == threshold
            and record.get("min_area") == min_area)
    return runs[-1].parent if same and not record.get("finished") else None


def _done_images(out: Path, threshold: float, min_area: int) -> set[str]:
    """Images already in OUT/predictions.csv, checked to have been decided by the same rule."""
    path = out / PREDICTIONS_FILE
    if not path.is_file():
        return set()
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != FIELDS:
            raise AnomalyError(f"{path}: not a predictions file of anomaly-predict (columns {reader.fieldnames})",
                               "out")
        rows = list(reader)
    # A run killed while writing can leave its last row cut short: that image is judged again.
    complete = [r for r in rows if None not in r.values() and None not in r and r["min_area"] != ""]
    if len(complete) < len(rows):
        modeldir.write_text(path, _csv_text([FIELDS, *([r[k] for k in FIELDS] for r in complete)]))
    for row in complete:
        if (row["threshold"], row["min_area"]) != (_number(threshold), str(min_area)):
            raise AnomalyError(f"{path}: written with threshold {row['threshold']} and min area "
                               f"{row['min_area']}, not {_number(threshold)} and {min_area}; choose another -o "
                               f"folder for another rule", "out")
    return {row["image"] for row in complete}


def _number(value: float) -> str:
    """How predictions.csv writes a score or a threshold."""
    return f"{value:.6g}"


def _csv_text(rows) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _picture_path(out: Path, image: Path, root: Path | None) -> Path:
    """images/<path relative to the inputs' common folder>.png, always inside `out`."""
    rel = image.relative_to(root) if root is not None else Path(image.name)  # both absolute (expand_inputs)
    parts = [p for p in rel.parts if p not in ("", ".", "..", "/")] or [image.name]
    # a.png -> a.png, a.jpg -> a.jpg.png: a.png and a.jpg side by side get a picture each
    name = parts[-1] if parts[-1].lower().endswith(".png") else f"{parts[-1]}.png"
    return out / "images" / Path(*parts[:-1], name)


@dataclass
class Judged:
    """One batch of judged images, in input order.

    Attributes:
        paths: the images judged; `failed` holds (image, reason) of those that could not be read.
        scores, is_anomalous, areas: per judged image (areas: anomalous pixels).
        images, maps, masks: the model's input, its map and the predicted region per judged
            image; None where they were not needed (Ray runs without --save or --report).
    """

    paths: list[Path]
    failed: list[tuple[Path, str]]
    scores: np.ndarray
    is_anomalous: np.ndarray
    areas: np.ndarray
    images: np.ndarray | None = None
    maps: np.ndarray | None = None
    masks: np.ndarray | None = None


def _read_batch(paths, shape) -> tuple[list[Path], list[np.ndarray], list[tuple[Path, str]]]:
    """The readable images of `paths` at the model's input shape, and why the others failed."""
    ok, arrays, failed = [], [], []
    for path in paths:
        try:
            arrays.append(conform(read_raw(path), shape))
            ok.append(path)
        except AnomalyError as exc:
            failed.append((path, exc.message.removeprefix(f"{path}: ")))
    return ok, arrays, failed


def _judge_locally(model: Model, todo: list[Path], batch_size: int, threshold: float,
                   min_area: int) -> Iterator[Judged]:
    for start in range(0, len(todo), batch_size):
        paths, arrays, failed = _read_batch(todo[start:start + batch_size], model.detector.input_shape)
        if not arrays:
            yield Judged([], failed, np.zeros(0), np.zeros(0, bool), np.zeros(0, int))
            continue
        batch = np.stack(arrays)
        (pred,) = model.predict_batches(batch, batch_size=len(batch), threshold=threshold, min_area=min_area)
        yield Judged(paths, failed, pred.scores, pred.is_anomalous, pred.masks.sum(axis=(1, 2)), batch, pred.maps,
                     pred.masks)


class BatchJudge:
    """A Ray Data actor: loads the model once, then judges batches of image paths.

    Args:
        model_dir: the model directory (the same path on every node).
        method: the finetuned map.
        threshold, min_area: the decision rule.
        keep: also return each image, map and mask (for --save and --report).
        threads: TensorFlow's threads in this worker (its share of the node).
    """

    def __init__(self, model_dir: str, method: str, threshold: float, min_area: int, keep: bool, threads: int):
        from anomaly.cluster import set_threads

        set_threads(threads)
        import anomaly

        self.model = anomaly.load(model_dir, method=method)
        self.threshold, self.min_area, self.keep = threshold, min_area, keep

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [str(p) for p in batch["image"]]
        (part,) = _judge_locally(self.model, [Path(p) for p in names], len(names), self.threshold, self.min_area)
        reasons = {str(p): reason for p, reason in part.failed}
        n = len(names)
        out = {"image": np.array(names, dtype=object), "error": np.array([reasons.get(p, "") for p in names],
                                                                         dtype=object),
               "score": np.zeros(n), "is_anomalous": np.zeros(n, bool), "area": np.zeros(n, np.int64)}
        rows = [i for i, name in enumerate(names) if name not in reasons]  # the order of `part.paths`
        out["score"][rows], out["is_anomalous"][rows], out["area"][rows] = part.scores, part.is_anomalous, part.areas
        if self.keep:
            h, w, c = self.model.detector.input_shape
            out.update(pixels=np.zeros((n, h, w, c), np.float32), map=np.zeros((n, h, w), np.float32),
                       mask=np.zeros((n, h, w), bool))
            if rows:
                out["pixels"][rows], out["map"][rows], out["mask"][rows] = part.images, part.maps, part.masks
        return out


def _judge_on_ray(model: Model, todo: list[Path], batch_size: int, threshold: float, min_area: int, keep: bool,
                  cluster: str, workers: int | None) -> Iterator[Judged]:
    """`_judge_locally` on a Ray cluster, yielding the batches in input order as they come."""
    if not todo:
        return
    import ray.data

    from anomaly.cluster import connect

    with connect(cluster) as info:
        n = workers or max(info.nodes, 1)
        threads = max(1, min(info.node_cpus, info.cpus // n)) if info.cpus else 1
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # rows in input order, as the local path writes them
        ctx.enable_progress_bars = False
        # Paths only: every worker reads its own images, through the same checks as the local path.
        blocks = min(-(-len(todo) // batch_size), 1000)  # a block per batch: the actors share them out
        ds = ray.data.from_items([{"image": str(p)} for p in todo], override_num_blocks=blocks)
        ds = ds.map_batches(BatchJudge, batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=n), num_cpus=threads,
                            num_gpus=1 if info.gpus >= n else 0,
                            fn_constructor_kwargs={"model_dir": str(model.directory),
                                                   "method": model.postprocessor.method, "threshold": threshold,
                                                   "min_area": min_area, "keep": keep, "threads": threads})
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            good = [i for i, e in enumerate(batch["error"]) if not e]
            failed = [(Path(batch["image"][i]), str(batch["error"][i]))
                      for i in range(len(batch["image"])) if batch["error"][i]]
            arrays = ([batch[k][good] for k in ("pixels", "map", "mask")] if keep else [None] * 3)
            yield Judged([Path(batch["image"][i]) for i in good], failed, batch["score"][good],
                         batch["is_anomalous"][good], batch["area"][good], *arrays)


def predict_files(model: Model, inputs: list[str], out: str | Path | None = None, save: bool = False,
                  threshold: float | None = None, min_area: int | None = None, batch_size: int = 32,
                  progress: bool = True, report: bool = False, cluster: str | None = None,
                  workers: int | None = None) -> PredictOutcome:
    """Judge every image `inputs` names and write predictions.csv (and pictures) into `out`.

    Args:
        model: a finetuned model (`anomaly.load`).
        inputs: image files, folders (recursive) and glob patterns, in any mix.
        out: the output folder (default `<model dir>/predict/<timestamp>`); an earlier run's
            folder is continued: its images are not judged again.
        save: also write images/<name>.png (the heat map over the image, the predicted outline)
            and maps/<name>.npy (the raw map at the model's input size).
        threshold, min_area: the decision rule for this run (default: the finetuned pair).
        batch_size: images per forward pass.
        progress: show a progress bar.
        report: also write report.html of the images this run judged (`anomaly.report`; its
            thumbnails, a few KB per image, are kept until the end).
        cluster: judge on a Ray cluster ("local", "auto" or "ray://HOST:PORT", see
            `anomaly.cluster`): Ray Data reads the images and a pool of `workers` actors, each
            holding the model once, judges them; rows are written in input order as here.
            None judges in this process.
        workers: the Ray actors (default: one per node, using all its CPUs).

    Returns:
        What was done; the failed images are also in errors.csv.
    """
    pp = model.postprocessor
    threshold = pp.threshold if threshold is None else float(threshold)
    min_area = pp.min_area if min_area is None else int(min_area)
    if not np.isfinite(threshold):
        raise AnomalyError(f"expected a finite number, got {threshold}", "threshold")
    if min_area < 0:
        raise AnomalyError(f"expected a non-negative number of pixels, got {min_area}", "min_area")
    if batch_size < 1:
        raise AnomalyError(f"expected a positive number, got {batch_size}", "batch_size")
    if workers is not None and (cluster is None or workers < 1):
        raise AnomalyError("expected a positive number of Ray workers with --cluster"
                           if cluster is not None else "needs --cluster (the Ray workers to judge with)", "workers")
    if cluster is not None:
        from anomaly.cluster import check_address

        check_address(cluster)
        if model.directory is None:
            raise AnomalyError("a model not loaded from a directory cannot be sent to Ray workers", "cluster")
    images = expand_inputs(inputs)
    if out is None:
        if model.directory is None:
            raise AnomalyError("a model not loaded from a directory needs an output folder", "out")
        out = unfinished_run(model.directory, inputs, threshold, min_area) or default_output(model.directory)
    out = modeldir.check_output_dir(out, "-o")
    done = _done_images(out, threshold, min_area)
    todo = [p for p in images if str(p) not in done]
    outcome = PredictOutcome(out, skipped=len(images) - len(todo))
    out.mkdir(parents=True, exist_ok=True)
    (out / ERRORS_FILE).unlink(missing_ok=True)  # a continued run tries the failed images again
    try:
        root = Path(os.path.commonpath([p.parent for p in images]))
    except ValueError:  # different drives
        root = None
    record = _write_record(out, model, inputs, threshold, min_area, len(images))
    vmax = 2.0 * threshold if threshold > 0 else None  # the threshold mid-scale on every picture
    builder = None
    if report:
        from anomaly.report import ReportBuilder, grid_around

        builder = ReportBuilder(grid_around(threshold), threshold, min_area, min(0.0, threshold), vmax or 1.0)
    start = time.perf_counter()
    new_file = not (out / PREDICTIONS_FILE).is_file()
    keep = save or report  # the pictures and the report need each image and its map
    if cluster is None:
        judged = _judge_locally(model, todo, batch_size, threshold, min_area)
    else:
        judged = _judge_on_ray(model, todo, batch_size, threshold, min_area, keep, cluster, workers)
    with open(out / PREDICTIONS_FILE, "a", newline="") as rows_file, \
            progress_step(f"judging {len(todo)} images" + (f" ({outcome.skipped} already done)"
                                                          if outcome.skipped else ""), len(todo), progress):
        rows = csv.writer(rows_file, lineterminator="\n")
        if new_file:
            rows.writerow(FIELDS)
        for part in judged:
            for path, reason in part.failed:
                outcome.failed.append((str(path), reason))
                _append_error(out, str(path), reason)
            for i, path in enumerate(part.paths):
                rows.writerow([str(path), _number(part.scores[i]), int(part.is_anomalous[i]),
                               int(part.areas[i]), _number(threshold), min_area])
                if save:
                    _save_one(out, path, root, part, i, threshold, vmax)
            if builder is not None and part.paths:
                builder.add([str(p) for p in part.paths], part.scores, part.maps, part.images)
            rows_file.flush()  # an interrupted run keeps every row written so far
            outcome.predicted += len(part.paths)
            outcome.anomalous += int(np.sum(part.is_anomalous))
            advance_progress(len(part.paths) + len(part.failed))
    outcome.seconds = time.perf_counter() - start
    if builder is not None:
        builder.write(out / REPORT_FILE, f"{Path(str(model.directory)).name}: {outcome.predicted} images judged",
                      {"images judged": outcome.predicted, "anomalous": outcome.anomalous,
                       "unreadable": len(outcome.failed), "threshold": threshold, "min_area": min_area})
    modeldir.write_json(out / RECORD_FILE, {**record, "finished": True, "judged": len(images) - len(outcome.failed),
                                            "failed": len(outcome.failed)})
    return outcome


def _save_one(out: Path, path: Path, root: Path | None, part: Judged, i: int, threshold: float,
              vmax: float | None) -> None:
    from anomaly import plots

    picture = _picture_path(out, path, root)
    raw = out / "maps" / picture.relative_to(out / "images").with_suffix(".npy")  # a.jpg.npy for a.jpg
    raw.parent.mkdir(parents=True, exist_ok=True)
    np.save(raw, part.maps[i].astype(np.float32))
    verdict = "anomalous" if part.is_anomalous[i] else "good"
    plots.save_result(picture, part.images[i], part.maps[i], part.masks[i],
                      title=f"{path.name}  score {part.scores[i]:.4g}  {verdict}", vmax=vmax, threshold=threshold)


def _append_error(out: Path, image: str, reason: str) -> None:
    path = out / ERRORS_FILE
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        if new:
            writer.writerow(["image", "reason"])
        writer.writerow([image, reason])


def _write_record(out: Path, model: Model, inputs: list[str], threshold: float, min_area: int, n: int) -> dict:
    record = {"model": str(model.directory), "inputs": list(inputs), "images": n, "threshold": threshold,
              "min_area": min_area, "finetuned_threshold": model.postprocessor.threshold,
              "finetuned_min_area": model.postprocessor.min_area, "method": model.postprocessor.method,
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "time": datetime.now().isoformat(timespec="seconds")}
    modeldir.write_json(out / RECORD_FILE, {**record, "finished": False})
    return record
