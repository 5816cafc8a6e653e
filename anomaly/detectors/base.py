"""The detector contract: every detector turns images into anomaly maps.

Everything after the map (finetuning, classification, segmentation, metrics, pictures) is
shared, so a detector only has to learn from defect-free images and produce maps. The contract
follows scikit-learn and Keras:

- `__init__(**hyper_parameters)` only stores them; `get_config()` returns them and
  `from_config(config)` rebuilds an unfitted detector from that dict.
- `fit(train_images, validation_images=None, progress=False) -> self`; learned state ends in
  `_`, a training record (if any) is `history_`.
- `anomaly_maps(images)` -> (N, H, W) float32 and `image_scores(images)` -> (N,), for images
  of any size and colour: the detector resizes them to its `input_shape` itself.
- `save(directory)` writes `detector.yaml` (class name and config) beside the learned state;
  `Detector.load(directory)` needs nothing else.

A subclass registers itself under its `name` with `@register`, which is all a new detector
needs (plus its YAML defaults in `configs/<name>.yaml`). Its hyper-parameters are the
`__init__` parameters that are not settings of the run (`RUN_OPTIONS`: the input shape, seed,
batch size and epochs that `anomaly.config.TrainConfig` holds for every detector); their types
come from the annotations, their checks from `checks` and `choices`.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from anomaly import modeldir
from anomaly.errors import AnomalyError

REGISTRY: dict[str, type[Detector]] = {}

# Settings of the run (fields of anomaly.config.TrainConfig) that a detector receives when its
# `__init__` names them; every other `__init__` parameter is a hyper-parameter of its own.
RUN_OPTIONS = ("input_shape", "seed", "batch_size", "epochs", "max_minutes", "early_stopping", "precision",
               "jit_compile")

# The rules `checks` can name.
_RULES = {
    "positive": (lambda v: v >= 1, "a positive integer"),
    "fraction": (lambda v: 0 < v <= 1, "a fraction in (0, 1]"),
    "non-negative": (lambda v: v >= 0, "a value >= 0"),
    "positive-number": (lambda v: v is None or v > 0, "a positive number"),
}


@dataclass
class FitResult:
    """What training produced.

    Attributes:
        history: one dict per epoch (epoch, loss, val_loss, metric, val_metric, lr).
        best_epoch: 1-based epoch of the lowest validation loss.
        lr_finder: the range test's outcome (None with a fixed --lr or on resume).
        lr: the peak learning rate used.
        schedule: learning rate of every batch trained in this call.
        interrupted: True when Ctrl-C ended training.
        seconds: wall time of this call.
        out_of_time: True when the `max_minutes` budget ended training.
    """

    history: list[dict]
    best_epoch: int
    lr_finder: Any
    lr: float
    schedule: list[float]
    interrupted: bool
    seconds: float
    out_of_time: bool = False


def register(cls: type[Detector]) -> type[Detector]:
    """Class decorator: make a detector class available by its `name`."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"{cls.__name__}: detector name {cls.name!r} is empty or taken")
    REGISTRY[cls.name] = cls
    return cls


class Detector(ABC):
    """A trainable anomaly detector.

    Class attributes:
        name: the name `-a` and the registry know it by.
        family: "autoencoder", "baseline" or "features" (how `-a --help` groups them).
        pixel_level: whether its maps localise defects (image-level detectors paint one score
            over the whole map and get no pixel metrics).
        trains_epochs: whether `fit` runs epochs (so `epochs` bounds its training).
        uses_backbone: whether it reads a pretrained backbone (`--backbone`, `--weights`).
        own_image_score: whether `image_scores` is its own (not the map maximum).
        methods: the maps it can make; the first is its default.
        file_suffix: the suffix of the file its learned state is saved in.
        finetune_defaults: the post-processing used when the user names none.
        defaults_file: its YAML defaults in `anomaly.configs` ("" for `<name>.yaml`).
        checks: hyper-parameter -> rule its values must follow ("positive", "fraction",
            "non-negative", "positive-number").
        choices: hyper-parameter -> the values it accepts.
        aliases: older names of hyper-parameters (flat config.yaml keys, renamed parameters),
            accepted wherever a configuration is read.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = "features"
    pixel_level: ClassVar[bool] = True
    trains_epochs: ClassVar[bool] = False
    uses_backbone: ClassVar[bool] = False
    own_image_score: ClassVar[bool] = False
    methods: ClassVar[tuple[str, ...]] = ()
    file_suffix: ClassVar[str] = ".npz"
    finetune_defaults: ClassVar[dict] = {}
    defaults_file: ClassVar[str] = ""
    checks: ClassVar[dict[str, str]] = {}
    choices: ClassVar[dict[str, tuple]] = {}
    aliases: ClassVar[dict[str, str]] = {}

    # Where a detector that trains for epochs keeps resumable checkpoints (None: nowhere), and
    # whether `fit` continues the run checkpointed there. Set by the caller, not hyper-parameters.
    checkpoint_dir: Path | None = None
    resume: bool = False

    input_shape: tuple[int, int, int]
    history_: list[dict] = []

    # ------------------------------------------------------------------ configuration

    @classmethod
    def _param_names(cls) -> list[str]:
        params = inspect.signature(cls.__init__).parameters.values()
        return [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def get_config(self) -> dict[str, Any]:
        """The hyper-parameters, as `__init__` takes them (plain YAML-ready values)."""
        return {name: _plain(getattr(self, name)) for name in self._param_names()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Detector:
        """An unfitted detector with the hyper-parameters of `get_config()`."""
        config = {cls.aliases.get(k, k): v for k, v in config.items()}
        unknown = sorted(set(config) - set(cls._param_names()))
        if unknown:
            raise AnomalyError(f"not a hyper-parameter of {cls.name} (expected some of "
                               f"{', '.join(cls._param_names())})", unknown[0])
        return cls(**config)

    @classmethod
    def hyper_parameters(cls) -> dict[str, inspect.Parameter]:
        """The detector's own `__init__` parameters (not `RUN_OPTIONS`), by name."""
        params = inspect.signature(cls.__init__).parameters
        return {name: params[name] for name in cls._param_names() if name not in RUN_OPTIONS}

    @classmethod
    def default_hyper_parameters(cls) -> dict[str, Any]:
        """Its hyper-parameters as `__init__` defaults them."""
        return {name: param.default for name, param in cls.hyper_parameters().items()}

    @classmethod
    def defaults_name(cls) -> str:
        """The file name of its YAML defaults in `anomaly.configs`."""
        return cls.defaults_file or f"{cls.name}.yaml"

    @classmethod
    def check_hyper_parameters(cls, params: dict[str, Any], run) -> None:
        """Raise AnomalyError naming the option for a value `__init__` would reject or that would
        fail only later; `run` is the `anomaly.config.TrainConfig` (for checks that involve the
        input shape). Subclasses extend it for rules that span options."""
        for option, value in params.items():
            if option in cls.choices and value not in cls.choices[option]:
                raise AnomalyError(f"unknown value '{value}': expected one of {', '.join(cls.choices[option])}",
                                   option)
            if option in cls.checks:
                accepts, expected = _RULES[cls.checks[option]]
                if not accepts(value):
                    raise AnomalyError(f"expected {expected}, got {value}", option)
        if "backbone" in params:
            from anomaly.backbones import backbone_spec

            backbone_spec(params["backbone"])

    @classmethod
    def from_train_config(cls, config) -> Detector:
        """An unfitted detector for a resolved `anomaly.config.TrainConfig`: the run settings its
        `__init__` names, and its hyper-parameters `config.params`."""
        names = set(cls._param_names())
        run = {"input_shape": config.input_shape,
               **{option: getattr(config, option) for option in RUN_OPTIONS[1:] if option in names}}
        return cls(**run, **config.params)

    # ------------------------------------------------------------------ learning and maps

    @abstractmethod
    def fit(self, train_images: np.ndarray, validation_images: np.ndarray | None = None,
            progress: bool = False) -> Detector:
        """Learn from defect-free (N, H, W, C) images in [0, 1]; returns self."""

    @abstractmethod
    def _anomaly_maps(self, images: np.ndarray, method: str, dtype: str,
                      return_reconstructions: bool = False):
        """Maps of images already at `input_shape` (see `anomaly_maps`)."""

    def anomaly_maps(self, images, method: str | None = None, dtype: str = "float64",
                     return_reconstructions: bool = False):
        """(N, H, W) float32 maps, higher = more anomalous.

        Args:
            images: (N, H, W, C) or (H, W, C) images in [0, 1] of any size, gray or colour;
                they are resized to `input_shape` and converted to its channels.
            method: one of `methods` (default: the first).
            dtype: "float64" (or "uint8" for the autoencoders' quantised maps).
            return_reconstructions: also return what the map compares against, when the
                detector has it (None otherwise).

        Returns:
            The maps at `input_shape[:2]`, or (maps, reconstructions).
        """
        method = method or self.methods[0]
        if method not in self.methods:
            raise AnomalyError(f"{self.name} makes the maps {', '.join(self.methods)}, not '{method}'", "method")
        return self._anomaly_maps(self.prepare(images), method, dtype, return_reconstructions)

    def image_scores(self, images) -> np.ndarray:
        """(N,) image scores, higher = more anomalous; by default the map maximum."""
        maps = self.anomaly_maps(images)
        return maps.reshape(len(maps), -1).max(axis=1).astype(np.float64)

    def map_function(self, method: str, dtype: str):
        """The raw maps as one TensorFlow function, for an exported graph (`anomaly.deploy`).

        Args:
            method, dtype: the map, as `anomaly_maps` takes them.

        Returns:
            A traceable function from a float32 (N, *input_shape) batch in [0, 1] to (N, H, W)
            float32 maps equal to `anomaly_maps`' (to float32 rounding). It makes its constants
            when traced (tf.constant inside it): converters such as tf2onnx turn tensors a graph
            captures from outside into inputs.

        Raises:
            AnomalyError: the detector (or this map of it) cannot run as a TensorFlow graph.
        """
        raise AnomalyError(f"{self.name} cannot be exported: its maps are not computed in TensorFlow")

    def score_function(self):
        """`image_scores` as one TensorFlow function (float32 (N, *input_shape) -> (N,)), for the
        detectors whose image score is their own (`own_image_score`)."""
        raise AnomalyError(f"{self.name} has no image score of its own to export")

    def prepare(self, images) -> np.ndarray:
        """Images as float32 (N, *input_shape): resized and converted to the detector's channels.

        Args:
            images: (N, H, W, C) or (N, H, W) arrays, or one (H, W, C) or (H, W) image; uint8,
                uint16 or float in [0, 1]; or an `anomaly.data.io.ImageFiles` at the input shape,
                read into memory when it is small (`materialise`), else returned as is.
        """
        from anomaly.data.io import ImageFiles, conform, materialise

        if isinstance(images, ImageFiles):
            if images.shape[1:] != tuple(self.input_shape):
                raise AnomalyError(f"images are read as {images.shape[1:]}, the detector takes {self.input_shape}",
                                   "images")
            # A large set stays on disk and is read batch by batch by the detectors that stream.
            return materialise(images)
        images = np.asarray(images)
        if images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (1, 3, 4)):
            images = images[None]  # one image
        if images.ndim == 3:
            images = images[..., None]  # a stack of gray images
        if images.ndim != 4:
            raise AnomalyError(f"expected an (N, H, W, C) array, got shape {images.shape}", "images")
        if images.shape[1:] == tuple(self.input_shape) and images.dtype == np.float32:
            return images
        out = np.empty((len(images), *self.input_shape), np.float32)
        for i, image in enumerate(images):
            out[i] = conform(image, self.input_shape)
        return out

    def fit_record(self, seconds: float) -> FitResult:
        """How the last `fit` went, for the command line and the model directory."""
        return FitResult(history=[], best_epoch=0, lr_finder=None, lr=0.0, schedule=[], interrupted=False,
                         seconds=seconds)

    def check(self) -> None:  # noqa: B027 - a hook: most detectors have nothing to check
        """Raise AnomalyError now for settings that would fail only later (e.g. a backbone's weights)."""

    def fit_plan(self, n_images: int) -> str:
        """What fitting `n_images` images will build and hold, for a line before a long fit; "" if nothing to say."""
        return ""

    def summary(self) -> dict:
        """Figures of what it learned for detector.json (bank size, ...); none by default."""
        return {}

    def save_plots(self, train_images: np.ndarray, dataset, folder: Path) -> None:  # noqa: B027 - a hook
        """Figures of what it learned, in `folder`; none by default."""

    # ------------------------------------------------------------------ saving

    @property
    def model_file_name(self) -> str:
        return f"{self.name}{self.file_suffix}"

    def save(self, directory: str | Path) -> Path:
        """Write the learned state and `detector.yaml` into `directory`; returns the state's file."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.model_file_name
        tmp = directory / f".tmp-{path.name}"
        self._save_state(tmp)
        tmp.replace(path)
        modeldir.write_yaml(directory / modeldir.DETECTOR_FILE, {"name": self.name, "config": self.get_config()})
        return path

    def _state_file(self, directory: Path) -> Path:
        """The file of the learned state in a directory `save` wrote."""
        return directory / self.model_file_name

    @abstractmethod
    def _save_state(self, path: Path) -> None:
        """Write the learned state into the file `path`."""

    @abstractmethod
    def _load_state(self, path: Path) -> None:
        """Read the learned state from the file `path` (as `_save_state` wrote it)."""

    @staticmethod
    def load(directory: str | Path, model_file: str | Path | None = None) -> Detector:
        """The fitted detector saved in `directory`.

        Args:
            directory: a model directory (or any folder `save` wrote).
            model_file: the state file when the directory holds several; found otherwise.

        Raises:
            AnomalyError: the folder holds no detector, or its files are damaged. Model
                directories written before `detector.yaml` existed are read through their
                `config.yaml`.
        """
        directory = Path(directory)
        spec_file = directory / modeldir.DETECTOR_FILE
        if spec_file.is_file():
            spec = modeldir.read_yaml_mapping(spec_file)
            cls = detector_class(str(spec.get("name")))
            config = spec.get("config")
            if not isinstance(config, dict):
                raise AnomalyError(f"{spec_file}: expected 'config' to be a mapping")
            detector = cls.from_config({k: _from_plain(v) for k, v in config.items()})
        else:
            from anomaly.config import saved_config

            train_config = saved_config(directory)
            detector = detector_class(train_config.architecture).from_train_config(train_config)
        path = Path(model_file) if model_file else detector._state_file(directory)
        if not path.is_file():
            raise AnomalyError(f"{directory}: no {path.name} (the detector's learned state); retrain the model")
        detector._load_state(path)
        return detector


def detector_class(name: str) -> type[Detector]:
    """The registered class of a detector name."""
    from anomaly.detectors import load_all

    load_all()
    if name not in REGISTRY:
        raise AnomalyError(f"unknown detector '{name}': expected one of {', '.join(REGISTRY)}", "architecture")
    return REGISTRY[name]


def _plain(value):
    """YAML-ready: tuples become lists, numpy scalars Python numbers."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_plain(value):
    """Lists back to tuples (shapes, layer names, epoch pairs are tuples in `__init__`)."""
    return tuple(_from_plain(v) for v in value) if isinstance(value, list) else value
