"""Typed training configuration: defaults < configs/*.yaml < --config FILE < command-line flags."""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly.errors import AnomalyError
from anomaly.modeldir import CONFIG_FILE, read_config, read_yaml_mapping

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
COLOR_MODES = ("grayscale", "rgb")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


@dataclass
class TrainConfig:
    """Everything that determines a training run; saved (flat) as config.yaml in the model directory.

    The fields are the run's settings, the same for every detector; `params` holds the detector's
    own hyper-parameters.

    Attributes:
        data_dir: the dataset category folder (MVTec layout), or the folder holding `normal_dir`,
            `abnormal_dir` and `mask_dir` (the folder layout, `anomaly.data.dataset.find_folder_dataset`).
        normal_dir: folder layout: the defect-free images ("" for MVTec layout).
        abnormal_dir: folder layout: the defective images (optional).
        mask_dir: folder layout: masks of the defective images (optional).
        normal_test_split: folder layout: share of the good images held out (seeded) for testing.
        architecture: a name from `anomaly.detectors.list_detectors()`.
        color_mode: "grayscale" or "rgb".
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
        early_stopping: patience in epochs on validation loss (detectors that train for epochs).
        precision: autoencoders: "float32", "mixed_bfloat16" (faster on CPUs with AVX512-BF16/AMX)
            or "mixed_float16" (GPUs; the loss is scaled against float16 underflow).
        jit_compile: autoencoders: compile the training step with XLA.
        output_dir: the root under which model directories are created.
        inspect: save inspection images after training.
        params: the detector's own hyper-parameters (`Detector.hyper_parameters()`: an
            autoencoder's loss and learning-rate schedule, a feature detector's backbone, ...),
            by the names of its `__init__`; resolved from its `__init__` defaults, its YAML
            defaults, the user's file and the flags. The autoencoders and CutPaste have
            `strategy`: "none" (one device), "mirrored" (every GPU of the machine, or its logical
            CPUs) or "multi-worker" (the hosts of TF_CONFIG); `batch_size` is then the global
            batch, split between the replicas, so the learning rate and the loss curve are those
            of one device (`anomaly.distribute`).
        extra: what a saved config.yaml holds besides (split, versions, command).
    """

    data_dir: str = ""
    normal_dir: str = ""
    abnormal_dir: str = ""
    mask_dir: str = ""
    normal_test_split: float = 0.2
    architecture: str = "mvtecCAE"
    color_mode: str = "grayscale"
    input_size: int = 256
    input_width: int | None = None
    batch_size: int = 8
    epochs: int = 1024
    max_minutes: float | None = None
    seed: int = 42
    val_split: float = 0.1
    early_stopping: int = 12
    precision: str = "float32"
    jit_compile: bool = False
    output_dir: str = "saved_models"
    inspect: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def variant(self) -> str:
        """The model-directory level below the architecture: the loss of an autoencoder, the
        backbone of a feature detector ("bottleneck" for kmeans on an autoencoder's code), "none"
        for the pixel baseline."""
        if "loss" in self.params:
            return str(self.params["loss"])
        if self.params.get("features_from"):
            return "bottleneck"
        return str(self.params.get("backbone", "none"))

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
        from anomaly.detectors import detector_class, list_detectors

        # NaN passes every comparison below (they are all False), so reject it first.
        for option, value in [*((f.name, getattr(self, f.name)) for f in dataclasses.fields(self)),
                              *self.params.items()]:
            if isinstance(value, float) and not math.isfinite(value):
                raise AnomalyError(f"expected a finite number, got {value}", option)
        _choice("architecture", self.architecture, tuple(list_detectors()))
        _choice("color_mode", self.color_mode, COLOR_MODES)
        _choice("precision", self.precision, PRECISIONS)
        for option, side in (("input_size", self.input_size), ("input_width", self.input_width)):
            if side is not None and (side < 32 or side % 32):
                raise AnomalyError(f"expected a multiple of 32 (>= 32), got {side}", option)
        for option in ("batch_size", "epochs", "early_stopping"):
            if getattr(self, option) < 1:
                raise AnomalyError(f"expected a positive integer, got {getattr(self, option)}", option)
        if not 0 < self.val_split < 1:
            raise AnomalyError(f"expected a fraction in (0, 1), got {self.val_split}", "val_split")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise AnomalyError(f"expected a positive number, got {self.max_minutes}", "max_minutes")
        detector_class(self.architecture).check_hyper_parameters(self.params, self)
        return self

    def to_dict(self) -> dict[str, Any]:
        """All options as one flat mapping, as config.yaml holds them: the run's settings, then the
        detector's hyper-parameters, then the `extra` keys."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("params", "extra")}
        values.update({k: list(v) if isinstance(v, tuple) else v for k, v in self.params.items()})
        values.update(self.extra)
        return values


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        import difflib

        close = difflib.get_close_matches(str(value).lower(), [a.lower() for a in allowed], n=1, cutoff=0.6)
        hint = f"did you mean {allowed[[a.lower() for a in allowed].index(close[0])]}? " if close else ""
        raise AnomalyError(f"unknown value '{value}': {hint}expected one of {', '.join(allowed)}", option)


def canonical_detector_name(name: str) -> str:
    """A detector name as registered, whatever its case ("PatchCore" -> "patchcore"); raises
    AnomalyError (with a "did you mean") for an unknown one. Needs no TensorFlow."""
    from anomaly.detectors import declared_names

    by_lower = {n.lower(): n for n in declared_names()}
    name = by_lower.get(str(name).lower(), str(name))
    _choice("architecture", name, declared_names())
    return name


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
    """Convert a YAML or command-line value to the option's type (`kind`, its annotation, e.g.
    "float | None" or "tuple[str, ...]"), or raise naming the option."""
    def bad(expected: str) -> AnomalyError:
        return AnomalyError(f"{source}: option '{key}' expects {expected}, got {value!r}")

    if value is None:
        if "None" in kind or kind == "str":
            return None if "None" in kind else ""
        raise bad(kind)
    if kind.startswith("tuple"):
        # Layer names: a comma-separated string (flags, YAML) or a list (detector.yaml).
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, (str, int)) for i in items):
            raise bad("a comma-separated list")
        items = [i.strip() if isinstance(i, str) else i for i in items]
        return tuple(i for i in items if i != "")
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


_FIELD_KINDS = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig) if f.name not in ("params", "extra")}


def _parameter_kinds(detector) -> dict[str, str]:
    """A detector's hyper-parameters and their kinds: the annotation, else the default's type."""
    kinds = {}
    for name, param in detector.hyper_parameters().items():
        annotation = param.annotation
        if annotation is param.empty:
            annotation = "str" if param.default is param.empty else type(param.default).__name__
        kinds[name] = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return kinds


def _apply(config: TrainConfig, values: dict[str, Any], source: str, strict: bool = True) -> None:
    """Set options from a mapping: run settings on the fields, the detector's hyper-parameters
    (or their older names) in `params`; anything else is an error (`strict`) or kept in `extra`."""
    from anomaly.detectors import detector_class

    detector = detector_class(config.architecture)
    kinds = _parameter_kinds(detector)
    for key, value in values.items():
        key = key.replace("-", "_")
        name = detector.aliases.get(key, key)
        if key in _FIELD_KINDS:
            setattr(config, key, _coerce(key, value, _FIELD_KINDS[key], source))
        elif name in kinds:
            config.params[name] = _coerce(key, value, kinds[name], source)
        elif not strict:
            config.extra[key] = value
        elif key in ("params", "extra"):
            raise AnomalyError(f"{source}: unknown option '{key}'")
        else:
            where = "" if source == "command line" else f"{source}: "
            raise AnomalyError(f"{where}'{key}' is not an option of {config.architecture} (its own: "
                               f"{', '.join(kinds) or 'none'})", key)


def load_train_config(overrides: dict[str, Any], config_file: str | None = None) -> TrainConfig:
    """Resolve the training configuration.

    Args:
        overrides: values from the command line (None values are ignored).
        config_file: an optional user YAML file.

    Returns:
        The validated configuration: dataclass and `__init__` defaults, then
        `configs/default.yaml`, then the detector's YAML defaults (`configs/<architecture>.yaml`),
        then `config_file`, then `overrides`. Options the chosen detector does not have are errors.

    Raises:
        AnomalyError: also when a defaults file is missing (a broken install): default.yaml, or
            the YAML of a detector that reads a backbone (autoencoders and the pixel baseline
            run on their `__init__` defaults without one).
    """
    from anomaly.detectors import detector_class

    overrides = {k: v for k, v in overrides.items() if v is not None}
    default = read_yaml(_defaults_file("default.yaml"))
    user = read_yaml(Path(config_file)) if config_file else {}
    architecture = canonical_detector_name(overrides.get("architecture") or user.get("architecture")
                                           or default.get("architecture") or TrainConfig.architecture)
    detector = detector_class(architecture)
    config = TrainConfig(architecture=architecture, params=detector.default_hyper_parameters())
    layers = [(str(CONFIG_DIR / "default.yaml"), default)]
    detector_defaults = _architecture_defaults(detector)
    if detector_defaults is not None:
        layers.append((str(detector_defaults), read_yaml(detector_defaults)))
    layers += [(str(config_file), user), ("command line", overrides)]
    for source, values in layers:
        _apply(config, {**values, "architecture": architecture} if "architecture" in values else values, source)
    return config.validate()


def _defaults_file(name: str) -> Traversable:
    """`CONFIG_DIR / name`, which must exist: a missing one means a broken install, not a default."""
    path = CONFIG_DIR / name
    if not path.is_file():
        raise AnomalyError(f"{path}: missing; {_REINSTALL}")
    return path


def _architecture_defaults(detector) -> Traversable | None:
    """The detector's YAML defaults; required for the detectors that read a backbone (they all
    ship one: colour mode, backbone, layers), optional for the others."""
    if (CONFIG_DIR / detector.defaults_name()).is_file() or detector.uses_backbone:
        return _defaults_file(detector.defaults_name())
    return None


def config_from_dict(values: dict[str, Any], source: str = "config.yaml") -> TrainConfig:
    """Rebuild a configuration saved in a model directory: run settings, the detector's
    hyper-parameters (also under the flat names older versions saved), and in `extra` the rest;
    errors name `source` (the file read)."""
    from anomaly.detectors import detector_class

    architecture = canonical_detector_name(values.get("architecture") or TrainConfig.architecture)
    config = TrainConfig(architecture=architecture, params=detector_class(architecture).default_hyper_parameters())
    _apply(config, {k: v for k, v in values.items() if k not in ("params", "extra")}, source, strict=False)
    return config


def saved_config(model_dir: str | Path) -> TrainConfig:
    """The configuration saved in a model directory's config.yaml (its errors name that file)."""
    return config_from_dict(read_config(Path(model_dir)), str(Path(model_dir) / CONFIG_FILE))
