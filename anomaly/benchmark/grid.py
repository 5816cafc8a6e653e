"""The benchmark grid: dataset categories x detectors x variants x seeds, checked before any run.

Everything here runs before the output folder is created, so a bad name, a dataset folder
that cannot be tested or a bad training setting is one error line, not a grid of failed runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from anomaly.data.dataset import MAX_DEPTH, find_categories  # noqa: F401 - re-exported
from anomaly.errors import AnomalyError

DEFAULT_DETECTORS = ("mvtecCAE", "pixel-gaussian")
DEFAULT_LOSSES = ("ssim",)
DEFAULT_BACKBONES = ("efficientnet_lite0",)
NO_VARIANT = "none"


@dataclass(frozen=True)
class Run:
    """One cell of the grid.

    Attributes:
        data_dir: the category folder (holding train/good).
        dataset: the name of the category folder's parent (e.g. "mvtec_ad").
        category: the name of the category folder (e.g. "bottle").
        detector: a name from `anomaly.detectors.list_detectors()`.
        variant: the loss of an autoencoder, "none" for detectors without one.
        seed: the training seed (it also seeds the finetune subset).
    """

    data_dir: Path
    dataset: str
    category: str
    detector: str
    variant: str
    seed: int

    @property
    def key(self) -> tuple[str, ...]:
        """The identity of the run in results.csv (all strings, as read back from the CSV)."""
        return (self.dataset, self.category, self.detector, self.variant, str(self.seed))

    @property
    def name(self) -> str:
        """The folder name of its plots and log."""
        return f"{self.dataset}_{self.category}_{self.detector}_{self.variant}_s{self.seed}"

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.category} {self.detector} {self.variant} seed {self.seed}"


def _unique(values: Iterable) -> list:
    """The values without repeats, in their first order (a repeated flag value is one run)."""
    return list(dict.fromkeys(values))


def check_names(detectors: Sequence[str], losses: Sequence[str], backbones: Sequence[str] = DEFAULT_BACKBONES) -> None:
    """Reject unknown detector or loss names with one line naming the flag.

    Raises:
        AnomalyError: a name is not known.
    """
    from anomaly.detectors import list_detectors
    from anomaly.losses import LOSSES

    known = list_detectors()
    for name in detectors:
        if name not in known:
            raise AnomalyError(f"-a/--architectures: unknown architecture '{name}': expected one of "
                               f"{', '.join(known)}")
    for loss in losses:
        if loss not in LOSSES:
            raise AnomalyError(f"-l/--losses: unknown loss '{loss}': expected one of {', '.join(LOSSES)}")
    from anomaly.backbones import list_backbones

    for backbone in backbones:
        if backbone not in list_backbones():
            raise AnomalyError(f"--backbones: unknown backbone '{backbone}': expected one of "
                               f"{', '.join(list_backbones())}")


def variants(detector: str, losses: Sequence[str], backbones: Sequence[str] = DEFAULT_BACKBONES) -> list[str]:
    """The variants of a detector in the grid: the losses of an autoencoder, the backbones of a
    feature detector, else just "none"."""
    from anomaly.detectors import is_autoencoder, uses_backbone

    if is_autoencoder(detector):
        return list(losses)
    return list(backbones) if uses_backbone(detector) else [NO_VARIANT]


def plan_grid(data: Sequence[str | Path], detectors: Sequence[str], losses: Sequence[str],
              seeds: Sequence[int], backbones: Sequence[str] = DEFAULT_BACKBONES) -> list[Run]:
    """The runs of a grid, in the order they run (category, detector, variant, seed).

    Args:
        data: roots or category folders.
        detectors: detector names.
        losses: losses of the autoencoders (detectors without a loss run once per seed).
        seeds: training seeds.
        backbones: backbones of the feature detectors.

    Returns:
        The runs.

    Raises:
        AnomalyError: an unknown name, a folder without categories, a category that cannot
            be tested (no test images, a mask without its image, ...), or two categories with
            the same dataset/category name (their rows and plots would collide).
    """
    from anomaly.data.dataset import find_dataset

    detectors, losses, seeds, backbones = _unique(detectors), _unique(losses), _unique(seeds), _unique(backbones)
    if not detectors or not losses or not seeds or not data or not backbones:
        raise AnomalyError("-d, -a, -l, --backbones and --seeds each need at least one value")
    check_names(detectors, losses, backbones)
    categories: dict[Path, None] = {}
    for path in data:
        for category in find_categories(path):
            categories.setdefault(category.resolve(), None)
    seen: dict[tuple[str, str], Path] = {}
    for category in categories:
        # Indexing a folder takes milliseconds; finding a missing test/ or a mask without its
        # image here saves training a model that could never be tested.
        find_dataset(category).require_test()
        name = (category.parent.name or "data", category.name)
        if name in seen:
            raise AnomalyError(f"{category}: same dataset/category name '{'/'.join(name)}' as {seen[name]} "
                               "(results would collide; benchmark them into different output folders)")
        seen[name] = category
    return [Run(category, category.parent.name or "data", category.name, detector, variant, int(seed))
            for category in categories for detector in detectors
            for variant in variants(detector, losses, backbones) for seed in seeds]


def trains_epochs(detector: str) -> bool:
    """Whether a detector trains for epochs, so that `--epochs` bounds its training.

    Args:
        detector: a name from `anomaly.detectors.list_detectors()`.

    Returns:
        The `trains_epochs` of the detector's class.
    """
    from anomaly.detectors import detector_class

    return detector_class(detector).trains_epochs


def resolve_settings(runs: Sequence[Run], epochs: int | None, input_size: int | None, lr: float | None,
                     mode: str, method: str | None = None, smooth: float | None = None,
                     normalize: bool | None = None, max_minutes: float | None = None,
                     input_width: int | None = None) -> dict[tuple[str, str], dict]:
    """Resolve and check the training configuration of every (detector, variant) up front.

    Running `load_train_config` here, before anything is written, turns a bad flag value
    (an input size that is not a multiple of 32, mssim on small images, a negative rate)
    into one error line instead of a grid of failed runs.

    Returns:
        For each (detector, variant): the overrides to pass to `load_train_config` in the
        worker (without data_dir, seed and output_dir) and the resolved epochs, input_size
        and lr (and max_minutes, the autoencoders' training budget). A non-square input size
        is "HxW".
    """
    from anomaly.config import load_train_config
    from anomaly.detectors import is_autoencoder, uses_backbone
    from anomaly.finetune import MODES

    if mode not in MODES:
        raise AnomalyError(f"--mode: unknown mode '{mode}': expected one of {', '.join(MODES)}")
    settings: dict[tuple[str, str], dict] = {}
    for run in runs:
        if (run.detector, run.variant) in settings:
            continue
        overrides = {"architecture": run.detector, "epochs": epochs, "input_size": input_size,
                     "input_width": input_width}
        if is_autoencoder(run.detector):
            overrides.update(loss=run.variant, lr=lr, max_minutes=max_minutes)
        elif uses_backbone(run.detector):
            overrides["backbone"] = run.variant
        overrides = {k: v for k, v in overrides.items() if v is not None}
        config = load_train_config({**overrides, "data_dir": str(run.data_dir), "seed": run.seed})
        # Epochs mean nothing to a detector fitted in one pass, the learning rate nothing to a
        # detector without the autoencoders' schedule.
        trained = is_autoencoder(run.detector)
        epochs_used = trains_epochs(run.detector)
        settings[(run.detector, run.variant)] = {
            "overrides": overrides, "epochs": config.epochs if epochs_used else None,
            "input_size": config.input_size if config.input_width is None else "x".join(map(str, config.image_size)),
            "lr": config.params["lr"] if trained else None, "mode": mode,
            "max_minutes": config.max_minutes if trained else None,
            # --map applies to autoencoders; other detectors keep their own map.
            "method": method if trained else None, "smooth": smooth, "normalize": normalize}
    return settings
