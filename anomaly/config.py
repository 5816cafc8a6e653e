"""Typed training configuration: defaults < configs/*.yaml < --config FILE < command-line flags."""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly.errors import AnomalyError
from anomaly.modeldir import read_yaml_mapping

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable


def _package_configs() -> Traversable:
    """The YAML defaults: the repository's top-level configs/ folder, shipped as the package
    `anomaly.configs` (pyproject.toml maps it), so editable installs and wheels both find it."""
    try:
        return importlib.resources.files("anomaly.configs")
    except ModuleNotFoundError:
        # A broken or stale install (an editable install made before anomaly.configs existed):
        # where a wheel would have put the folder, so that load_train_config's error names it.
        return Path(__file__).resolve().parent / "configs"


CONFIG_DIR = _package_configs()
_REINSTALL = ("the YAML defaults (package anomaly.configs: the repository's configs/ folder) are not installed: "
              "reinstall anomaly (pip install -e . in a checkout, else pip install .)")
LOSSES = ("ssim", "mssim", "l2")
COLOR_MODES = ("grayscale", "rgb")
PRECISIONS = ("float32", "mixed_bfloat16")


@dataclass
class TrainConfig:
    """Everything that determines a training run; saved as config.yaml in the model directory.

    Attributes:
        data_dir: the dataset category folder (MVTec layout), or the folder holding `normal_dir`,
            `abnormal_dir` and `mask_dir` (the folder layout, `anomaly.data.dataset.find_folder_dataset`).
        normal_dir: folder layout: the defect-free images ("" for MVTec layout).
        abnormal_dir: folder layout: the defective images (optional).
        mask_dir: folder layout: masks of the defective images (optional).
        normal_test_split: folder layout: share of the good images held out (seeded) for testing.
        architecture: a name from `anomaly.detectors.list_detectors()`.
        color_mode: "grayscale" or "rgb".
        loss: "ssim", "mssim" or "l2".
        input_size: images are resized to input_size x input_size, or to input_size (height)
            x input_width (width) when input_width is set.
        input_width: the width of non-square inputs, e.g. for long thin parts whose photographs
            were squeezed into squares; None: square.
        batch_size: training batch size.
        epochs: the cap on training epochs (early stopping usually ends training before).
        max_minutes: autoencoders: a training time budget in minutes, learning-rate finder
            included; training ends after the last epoch expected to finish within it. None
            for no budget. With a budget the number of epochs depends on the machine's speed.
        seed: seeds weights, augmentation, shuffling and the validation split.
        val_split: fraction of train/good held out for validation and finetuning.
        lr: a fixed peak learning rate; None runs the learning-rate finder to choose it.
        lr_finder_start: the finder's first learning rate.
        lr_finder_end: the finder's last learning rate.
        lr_finder_epochs: the most epochs the finder runs.
        lr_finder_stop_factor: the finder stops when the smoothed loss exceeds this times its best.
        lr_decrease_factor: the finder's rule takes the LR 85 % of the way down the loss curve.
        early_stopping: patience in epochs on validation loss.
        reduce_on_plateau: patience in epochs before the peak learning rate is halved.
        rotation: augmentation rotation range in degrees (uniform in +-rotation).
        shift: augmentation translation range as a fraction of width and height.
        brightness: augmentation brightness factor range (uniform in [1-b, 1+b]).
        precision: "float32" or "mixed_bfloat16" (faster on CPUs with AVX512-BF16/AMX).
        jit_compile: compile the training step with XLA.
        output_dir: the root under which model directories are created.
        inspect: save inspection images after training.
        backbone: the pretrained network of a feature detector (`anomaly.backbones`).
        weights: the backbone's weights: "imagenet", "random" or a weights file.
        layers: comma-separated backbone layers a feature detector reads; empty for its default.
        coreset_ratio: patchcore: share of training patches kept in the memory bank.
        num_neighbors: patchcore: a patch's score is its mean distance to this many neighbours.
        reweight: patchcore: the paper's image-score re-weighting.
        map_sigma: feature detectors: Gaussian sigma (pixels) smoothing the upsampled map.
        pca_variance: fre: share of the feature variance the PCA keeps.
        padim_dims: padim: feature channels kept (a seeded random subset).
        knn_k: knn: neighbours averaged into the score.
        knn_dims: knn: the highest-variance feature dimensions kept.
        kmeans_clusters: kmeans: number of centroids.
        features_from: kmeans: a trained autoencoder's `.keras` file whose flattened bottleneck
            is clustered instead of backbone features ("" for the backbone).
        latent_dim: fre-tae and feature-ae: size of the code.
        density: cutpaste: "gde" (Gaussian, Mahalanobis distance) or "kde" (kernel density).
    """

    data_dir: str = ""
    normal_dir: str = ""
    abnormal_dir: str = ""
    mask_dir: str = ""
    normal_test_split: float = 0.2
    architecture: str = "mvtecCAE"
    color_mode: str = "grayscale"
    loss: str = "ssim"
    input_size: int = 256
    input_width: int | None = None
    batch_size: int = 8
    epochs: int = 1024
    max_minutes: float | None = None
    seed: int = 42
    val_split: float = 0.1
    lr: float | None = None
    lr_finder_start: float = 1e-5
    lr_finder_end: float = 10.0
    lr_finder_epochs: int = 10
    lr_finder_stop_factor: float = 6.0
    lr_decrease_factor: float = 0.85
    early_stopping: int = 12
    reduce_on_plateau: int = 6
    rotation: float = 5.0
    shift: float = 0.05
    brightness: float = 0.05
    precision: str = "float32"
    jit_compile: bool = False
    output_dir: str = "saved_models"
    inspect: bool = False
    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"
    layers: str = ""
    coreset_ratio: float = 0.002
    num_neighbors: int = 1
    reweight: bool = False
    map_sigma: float = 4.0
    pca_variance: float = 0.97
    padim_dims: int = 100
    knn_k: int = 50
    knn_dims: int = 500
    kmeans_clusters: int = 2
    features_from: str = ""
    latent_dim: int = 0
    density: str = "gde"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def variant(self) -> str:
        """The model-directory level below the architecture: the loss of an autoencoder, the
        backbone of a feature detector ("bottleneck" for kmeans on an autoencoder's code), "none"
        for the pixel baseline."""
        from anomaly.detectors import is_autoencoder, uses_backbone

        if is_autoencoder(self.architecture):
            return self.loss
        if self.features_from:
            return "bottleneck"
        return self.backbone if uses_backbone(self.architecture) else "none"

    @property
    def layer_names(self) -> tuple[str, ...]:
        """`layers` as a tuple; empty for the detector's default."""
        return tuple(n.strip() for n in self.layers.split(",") if n.strip())

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "grayscale" else 3

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) the images are resized to."""
        return (self.input_size, self.input_width or self.input_size)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (*self.image_size, self.channels)

    def dataset(self, data_dir: str | Path | None = None):
        """The dataset this configuration trains on (`data_dir` overrides where it lies now)."""
        from anomaly.data.dataset import load_dataset

        return load_dataset(self.data_dir if data_dir is None else data_dir, self.normal_dir, self.abnormal_dir,
                            self.mask_dir, self.normal_test_split, self.seed)

    def validate(self) -> TrainConfig:
        """Check values a user can get wrong; raise AnomalyError naming the option."""
        from anomaly.backbones import backbone_spec
        from anomaly.detectors import is_autoencoder, list_detectors
        from anomaly.losses import MSSIM_MIN_SIZE

        # NaN passes every comparison below (they are all False), so reject it first.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise AnomalyError(f"expected a finite number, got {value}", f.name)
        _choice("architecture", self.architecture, tuple(list_detectors()))
        _choice("loss", self.loss, LOSSES)
        _choice("color_mode", self.color_mode, COLOR_MODES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("density", self.density, ("gde", "kde"))
        for option, side in (("input_size", self.input_size), ("input_width", self.input_width)):
            if side is not None and (side < 32 or side % 32):
                raise AnomalyError(f"expected a multiple of 32 (>= 32), got {side}", option)
        if self.loss == "mssim" and min(self.image_size) < MSSIM_MIN_SIZE and is_autoencoder(self.architecture):
            raise AnomalyError(f"mssim needs an input size and width >= {MSSIM_MIN_SIZE}, "
                               f"got {self.image_size[0]}x{self.image_size[1]}", "loss")
        if self.architecture == "cutpaste" and self.image_size[0] != self.image_size[1]:
            raise AnomalyError("cutpaste turns images by 90 degrees and needs square ones", "input_width")
        positive = ("batch_size", "epochs", "num_neighbors", "padim_dims", "knn_k", "knn_dims", "kmeans_clusters")
        for option in positive:
            if getattr(self, option) < 1:
                raise AnomalyError(f"expected a positive integer, got {getattr(self, option)}", option)
        for option in ("val_split", "coreset_ratio", "pca_variance"):
            value, closed = getattr(self, option), option != "val_split"
            if not (0 < value <= 1 if closed else 0 < value < 1):
                raise AnomalyError(f"expected a fraction in (0, 1{']' if closed else ')'}, got {value}", option)
        for option in ("map_sigma", "latent_dim"):
            if getattr(self, option) < 0:
                raise AnomalyError(f"expected a value >= 0, got {getattr(self, option)}", option)
        for option in ("max_minutes", "lr"):
            if getattr(self, option) is not None and not getattr(self, option) > 0:
                raise AnomalyError(f"expected a positive number, got {getattr(self, option)}", option)
        if self.features_from and self.architecture != "kmeans":
            raise AnomalyError(f"only kmeans clusters an autoencoder's bottleneck, not {self.architecture}",
                               "features_from")
        backbone_spec(self.backbone)
        return self

    def to_dict(self) -> dict[str, Any]:
        """All options as a flat mapping; `extra` keys sit beside the fields (as saved)."""
        values = dataclasses.asdict(self)
        values.update(values.pop("extra"))
        return values


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        import difflib

        close = difflib.get_close_matches(str(value).lower(), [a.lower() for a in allowed], n=1, cutoff=0.6)
        hint = f"did you mean {allowed[[a.lower() for a in allowed].index(close[0])]}? " if close else ""
        raise AnomalyError(f"unknown value '{value}': {hint}expected one of {', '.join(allowed)}", option)


def canonical_detector_name(name: str) -> str:
    """A detector name as registered, whatever its case ("PatchCore" -> "patchcore")."""
    from anomaly.detectors import list_detectors

    by_lower = {n.lower(): n for n in list_detectors()}
    return by_lower.get(str(name).lower(), str(name))


def read_yaml(path: Path | Traversable) -> dict[str, Any]:
    """A YAML mapping from a file (or a package resource such as `CONFIG_DIR / "default.yaml"`),
    with a one-line error for a missing or malformed file."""
    if isinstance(path, str):
        path = Path(path)
    if not path.is_file():
        raise AnomalyError(f"{path}: config file does not exist")
    return read_yaml_mapping(path, allow_empty=True)


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _coerce(key: str, value: Any, kind: str, source: str) -> Any:
    """Convert a YAML or command-line value to the field's type, or raise naming the option."""
    def bad(expected: str) -> AnomalyError:
        return AnomalyError(f"{source}: option '{key}' expects {expected}, got {value!r}")

    if value is None:
        if "None" in kind or kind == "str":
            return None
        raise bad(kind)
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise bad("true or false")
    if kind.startswith("int"):
        if isinstance(value, bool):
            raise bad("an integer")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise bad("an integer") from None
        if not math.isfinite(number) or not number.is_integer():
            raise bad("an integer")
        return int(number)
    if kind.startswith("float"):
        if isinstance(value, bool):
            raise bad("a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise bad("a number") from None
        if not math.isfinite(number):
            raise bad("a finite number")
        return number
    return str(value)


def _apply(config: TrainConfig, values: dict[str, Any], source: str) -> None:
    kinds = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in kinds or key == "extra":
            raise AnomalyError(f"{source}: unknown option '{key}'")
        setattr(config, key, _coerce(key, value, kinds[key], source))


def load_train_config(overrides: dict[str, Any], config_file: str | None = None) -> TrainConfig:
    """Resolve the training configuration.

    Args:
        overrides: values from the command line (None values are ignored).
        config_file: an optional user YAML file.

    Returns:
        The validated configuration: dataclass defaults, then `configs/default.yaml`, then
        `configs/<architecture>.yaml`, then `config_file`, then `overrides`.

    Raises:
        AnomalyError: also when a defaults file is missing (a broken install): default.yaml, or
            the `<architecture>.yaml` of a detector that reads a backbone (autoencoders and the
            pixel baseline have none and run on default.yaml).
    """
    config = TrainConfig()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    default = _defaults_file("default.yaml")
    user = read_yaml(Path(config_file)) if config_file else {}
    architecture = canonical_detector_name(overrides.get("architecture") or user.get("architecture")
                                           or config.architecture)
    overrides = {**overrides, "architecture": architecture} if "architecture" in overrides else overrides
    user = {**user, "architecture": architecture} if "architecture" in user else user
    for path in (default, _architecture_defaults(str(architecture))):
        if path is not None:
            _apply(config, read_yaml(path), str(path))
    if config_file:
        _apply(config, user, str(config_file))
    _apply(config, overrides, "command line")
    return config.validate()


def _defaults_file(name: str) -> Traversable:
    """`CONFIG_DIR / name`, which must exist: a missing one means a broken install, not a default."""
    path = CONFIG_DIR / name
    if not path.is_file():
        raise AnomalyError(f"{path}: missing; {_REINSTALL}")
    return path


def _architecture_defaults(architecture: str) -> Traversable | None:
    """configs/<architecture>.yaml; required for the detectors that read a backbone (they all
    ship one: colour mode, backbone, layers), optional for the others, which have none."""
    from anomaly.detectors import uses_backbone

    if (CONFIG_DIR / f"{architecture}.yaml").is_file() or uses_backbone(architecture):
        return _defaults_file(f"{architecture}.yaml")
    return None


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a configuration saved in a model directory (unknown keys are kept in `extra`)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in values.items() if k in names and k != "extra"})
    config.extra = {k: v for k, v in values.items() if k not in names}
    return config
