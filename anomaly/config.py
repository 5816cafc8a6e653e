"""Typed training configuration: defaults < configs/*.yaml < --config FILE < command-line flags."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from anomaly.errors import AnomalyError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
LOSSES = ("ssim", "mssim", "l2")
COLOR_MODES = ("grayscale", "rgb")
PRECISIONS = ("float32", "mixed_bfloat16")
# MS-SSIM uses five scales of an 11-px window, halving the image four times.
MSSIM_MIN_SIZE = 11 * 2 ** 4


@dataclass
class TrainConfig:
    """Everything that determines a training run; saved as config.yaml in the model directory.

    Attributes:
        data_dir: the dataset category folder (MVTec layout).
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

    def validate(self) -> "TrainConfig":
        """Check values a user can get wrong; raise AnomalyError naming the flag."""
        from anomaly.detectors import is_autoencoder, list_detectors

        # NaN passes every comparison below (they are all False), so reject it first.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise AnomalyError(f"--{f.name.replace('_', '-')}: expected a finite number, got {value}")
        if self.architecture not in list_detectors():
            raise AnomalyError(f"--architecture: unknown architecture '{self.architecture}': "
                               f"expected one of {', '.join(list_detectors())}")
        _choice("--loss", self.loss, LOSSES)
        _choice("--color", self.color_mode, COLOR_MODES)
        _choice("--precision", self.precision, PRECISIONS)
        for flag, side in (("--input-size", self.input_size), ("--input-width", self.input_width)):
            if side is not None and (side < 32 or side % 32):
                raise AnomalyError(f"{flag}: expected a multiple of 32 (>= 32), got {side}")
        if self.loss == "mssim" and min(self.image_size) < MSSIM_MIN_SIZE and is_autoencoder(self.architecture):
            raise AnomalyError(f"--loss mssim needs --input-size and --input-width >= {MSSIM_MIN_SIZE}, "
                               f"got {self.image_size[0]}x{self.image_size[1]}")
        if self.architecture == "cutpaste" and self.image_size[0] != self.image_size[1]:
            raise AnomalyError("--input-width: cutpaste turns images by 90 degrees and needs square ones")
        for flag, value in (("--batch", self.batch_size), ("--epochs", self.epochs)):
            if value < 1:
                raise AnomalyError(f"{flag}: expected a positive integer, got {value}")
        if not 0 < self.val_split < 1:
            raise AnomalyError(f"--val-split: expected a fraction in (0, 1), got {self.val_split}")
        from anomaly.backbones import backbone_spec

        backbone_spec(self.backbone)
        _choice("--density", self.density, ("gde", "kde"))
        if not 0 < self.coreset_ratio <= 1:
            raise AnomalyError(f"--coreset-ratio: expected a fraction in (0, 1], got {self.coreset_ratio}")
        if not 0 < self.pca_variance <= 1:
            raise AnomalyError(f"--pca-variance: expected a fraction in (0, 1], got {self.pca_variance}")
        for flag, value in (("--num-neighbors", self.num_neighbors), ("--padim-dims", self.padim_dims),
                            ("--knn-k", self.knn_k),
                            ("--knn-dims", self.knn_dims), ("--kmeans-clusters", self.kmeans_clusters)):
            if value < 1:
                raise AnomalyError(f"{flag}: expected a positive integer, got {value}")
        if self.map_sigma < 0 or self.latent_dim < 0:
            flag = "--map-sigma" if self.map_sigma < 0 else "--latent-dim"
            raise AnomalyError(f"{flag}: expected a value >= 0")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise AnomalyError(f"--max-minutes: expected a positive number of minutes, got {self.max_minutes}")
        if self.lr is not None and not self.lr > 0:
            raise AnomalyError(f"--lr: expected a positive learning rate, got {self.lr}")
        if self.features_from and self.architecture != "kmeans":
            raise AnomalyError(f"--features-from: only kmeans clusters an autoencoder's bottleneck, not "
                               f"{self.architecture}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """All options as a flat mapping; `extra` keys sit beside the fields (as saved)."""
        values = dataclasses.asdict(self)
        values.update(values.pop("extra"))
        return values


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise AnomalyError(f"{flag}: unknown value '{value}': expected one of {', '.join(allowed)}")


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from a file, with a one-line error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise AnomalyError(f"{path}: config file does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise AnomalyError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise AnomalyError(f"{path}: expected a mapping of option: value")
    return data


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
    """
    config = TrainConfig()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    user = read_yaml(Path(config_file)) if config_file else {}
    architecture = overrides.get("architecture") or user.get("architecture") or config.architecture
    for path in (CONFIG_DIR / "default.yaml", CONFIG_DIR / f"{architecture}.yaml"):
        if path.is_file():
            _apply(config, read_yaml(path), str(path))
    if config_file:
        _apply(config, user, str(config_file))
    _apply(config, overrides, "command line")
    return config.validate()


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a configuration saved in a model directory (unknown keys are kept in `extra`)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in values.items() if k in names and k != "extra"})
    config.extra = {k: v for k, v in values.items() if k not in names}
    return config
