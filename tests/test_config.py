"""Tests for anomaly.config: layered training configuration and its validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from anomaly import config as config_module
from anomaly.config import TrainConfig, config_from_dict, load_train_config, read_yaml
from anomaly.errors import AnomalyError
from anomaly.losses import MSSIM_MIN_SIZE


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def config_dir(tmp_path, monkeypatch) -> Path:
    """An empty stand-in for configs/, so a test controls which defaults files exist."""
    d = tmp_path / "configs"
    d.mkdir()
    write(d / "default.yaml", "")  # must exist (a missing one is a broken install); empty: no defaults
    monkeypatch.setattr(config_module, "CONFIG_DIR", d)
    return d


def init_defaults(architecture: str = "mvtecCAE") -> dict:
    """A detector's hyper-parameters as its `__init__` defaults them."""
    from anomaly.detectors import detector_class

    return detector_class(architecture).default_hyper_parameters()


def assert_one_line(exc: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, (part, msg)


# --------------------------------------------------------------------------- layering


def test_dataclass_defaults():
    c = TrainConfig()
    assert (c.architecture, c.color_mode) == ("mvtecCAE", "grayscale")
    assert (c.input_size, c.batch_size, c.epochs, c.seed, c.val_split) == (256, 8, 1024, 42, 0.1)
    assert c.precision == "float32" and c.jit_compile is False
    assert c.params == {} and c.extra == {}
    assert c.channels == 1 and c.input_shape == (256, 256, 1)
    rgb = TrainConfig(color_mode="rgb", input_size=64)
    assert rgb.channels == 3 and rgb.input_shape == (64, 64, 3)


def test_shipped_default_yaml_is_valid_and_matches_the_dataclass():
    shipped = read_yaml(config_module.CONFIG_DIR / "default.yaml")
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"params", "extra"}
    assert set(shipped) <= names  # default.yaml holds run settings only
    resolved = load_train_config({"data_dir": "x"})
    # autoencoder.yaml states the autoencoders' __init__ defaults
    assert resolved == TrainConfig(data_dir="x", params=init_defaults())


@pytest.mark.parametrize("name", ["patchcore", "padim", "fre", "knn", "kmeans", "cutpaste", "feature-ae"])
def test_a_detector_yaml_holds_run_settings_and_its_own_hyper_parameters(name):
    from anomaly.detectors import detector_class

    cls = detector_class(name)
    shipped = read_yaml(config_module.CONFIG_DIR / cls.defaults_name())
    run = {f.name for f in dataclasses.fields(TrainConfig)} - {"params", "extra"}
    assert set(shipped) <= run | set(cls.hyper_parameters())
    config = load_train_config({"architecture": name})
    assert set(config.params) == set(cls.hyper_parameters())
    assert config.color_mode == "rgb" and config.params["backbone"] == "efficientnet_lite0"


def test_without_any_file_the_dataclass_defaults_apply(config_dir):
    assert load_train_config({}) == TrainConfig(params=init_defaults())


def test_default_yaml_is_applied(config_dir):
    write(config_dir / "default.yaml", "batch_size: 4\nepochs: 3\nrotation: 0.0\n")
    c = load_train_config({})
    assert (c.batch_size, c.epochs, c.params["rotation"]) == (4, 3, 0.0)
    assert c.input_size == 256  # untouched fields keep the dataclass default


def test_precedence_default_architecture_file_cli(config_dir, tmp_path):
    write(config_dir / "default.yaml", "batch_size: 4\nepochs: 3\nseed: 1\nshift: 0.2\n")
    write(config_dir / "autoencoder.yaml", "epochs: 5\nseed: 2\nshift: 0.3\n")
    user = write(tmp_path / "user.yaml", "architecture: baselineCAE\nseed: 3\nshift: 0.4\n")
    c = load_train_config({"shift": 0.5, "batch_size": None}, str(user))
    assert c.architecture == "baselineCAE"
    assert c.batch_size == 4  # default.yaml, the None override is ignored
    assert c.epochs == 5      # architecture file over default.yaml
    assert c.seed == 3        # --config file over the architecture file
    assert c.params["shift"] == 0.5  # command line over everything


def test_architecture_file_follows_the_command_line_architecture(config_dir, tmp_path):
    write(config_dir / "padim.yaml", "epochs: 5\n")
    write(config_dir / "patchcore.yaml", "epochs: 7\n")
    user = write(tmp_path / "user.yaml", "architecture: padim\n")
    c = load_train_config({"architecture": "patchcore"}, str(user))
    assert (c.architecture, c.epochs) == ("patchcore", 7)


def test_an_option_the_detector_does_not_have_is_an_error(config_dir, tmp_path):
    write(config_dir / "patchcore.yaml", "")
    with pytest.raises(AnomalyError) as exc:
        load_train_config({"architecture": "patchcore", "lr": 1e-3})
    assert exc.value.option == "lr"
    assert_one_line(exc, "'lr' is not an option of patchcore", "coreset_ratio")
    user = write(tmp_path / "user.yaml", "architecture: mvtecCAE\ncoreset_ratio: 0.1\n")
    with pytest.raises(AnomalyError) as exc:
        load_train_config({}, str(user))
    assert_one_line(exc, str(user), "'coreset_ratio' is not an option of mvtecCAE")


def test_older_flat_names_of_hyper_parameters_are_accepted(config_dir, tmp_path):
    write(config_dir / "padim.yaml", "")
    user = write(tmp_path / "user.yaml", "architecture: padim\npadim_dims: 7\nlayers: a, b\n")
    c = load_train_config({}, str(user))
    assert c.params["dims"] == 7 and c.params["layers"] == ("a", "b")


def test_none_overrides_are_ignored(config_dir, tmp_path):
    user = write(tmp_path / "user.yaml", "batch_size: 16\nloss: l2\n")
    c = load_train_config({"batch_size": None, "loss": None, "lr": None, "data_dir": None}, str(user))
    assert (c.batch_size, c.params["loss"], c.params["lr"], c.data_dir) == (16, "l2", None, "")


def test_hyphenated_keys_in_yaml(config_dir, tmp_path):
    user = write(tmp_path / "user.yaml", "batch-size: 2\ninput-size: 64\n")
    c = load_train_config({}, str(user))
    assert (c.batch_size, c.input_size) == (2, 64)


def test_lr_set_from_yaml_float(config_dir, tmp_path):
    user = write(tmp_path / "user.yaml", "lr: 1.0e-3\n")
    assert load_train_config({}, str(user)).params["lr"] == pytest.approx(1e-3)


# --------------------------------------------------------------------------- type coercion


def test_numeric_strings_are_coerced(config_dir, tmp_path):
    c = load_train_config({"batch_size": "16", "rotation": "2.5", "input_size": "64"})
    assert c.batch_size == 16 and type(c.batch_size) is int
    assert c.params["rotation"] == 2.5 and type(c.params["rotation"]) is float
    assert c.input_size == 64


def test_int_for_float_field_becomes_float(config_dir, tmp_path):
    user = write(tmp_path / "user.yaml", "lr_finder_end: 10\nbrightness: 0\n")
    c = load_train_config({}, str(user))
    assert c.params["lr_finder_end"] == 10.0 and type(c.params["lr_finder_end"]) is float
    assert c.params["brightness"] == 0.0 and type(c.params["brightness"]) is float


def test_non_numeric_string_for_int_field_is_rejected(config_dir, tmp_path):
    user = write(tmp_path / "user.yaml", "batch_size: eight\n")
    with pytest.raises(AnomalyError) as exc:
        load_train_config({}, str(user))
    assert_one_line(exc, str(user), "batch_size", "eight")


def test_bad_type_on_command_line_names_the_source(config_dir):
    with pytest.raises(AnomalyError) as exc:
        load_train_config({"epochs": "many"})
    assert_one_line(exc, "command line", "epochs")


@pytest.mark.parametrize("text", ["lr: 1e-3\n", "lr: fast\n"])
def test_lr_string_in_yaml_is_coerced_or_rejected(config_dir, tmp_path, text):
    user = write(tmp_path / "user.yaml", text)
    try:
        c = load_train_config({}, str(user))
    except AnomalyError as exc:
        assert "lr" in str(exc)
        return
    assert isinstance(c.params["lr"], float) and c.params["lr"] == pytest.approx(1e-3)


def test_quoted_false_does_not_enable_a_flag(config_dir, tmp_path):
    user = write(tmp_path / "user.yaml", "jit_compile: 'false'\ninspect: 'no'\n")
    try:
        c = load_train_config({}, str(user))
    except AnomalyError:
        return
    assert c.jit_compile is False and c.inspect is False


def test_fractional_value_for_int_field_is_rejected(config_dir, tmp_path):
    user = write(tmp_path / "user.yaml", "batch_size: 8.7\n")
    with pytest.raises(AnomalyError, match="batch_size"):
        load_train_config({}, str(user))


# --------------------------------------------------------------------------- file errors


def test_unknown_option_in_yaml_names_file_and_option(config_dir, tmp_path):
    user = write(tmp_path / "user.yaml", "batch_size: 4\nlearning_rate: 0.1\n")
    with pytest.raises(AnomalyError) as exc:
        load_train_config({}, str(user))
    assert_one_line(exc, str(user), "learning_rate")


def test_extra_is_not_a_settable_option(config_dir, tmp_path):
    user = write(tmp_path / "user.yaml", "extra: {a: 1}\n")
    with pytest.raises(AnomalyError) as exc:
        load_train_config({}, str(user))
    assert_one_line(exc, str(user), "extra")


def test_unknown_option_on_command_line(config_dir):
    with pytest.raises(AnomalyError) as exc:
        load_train_config({"bogus": 1})
    assert_one_line(exc, "bogus", "not an option of mvtecCAE")


def test_unknown_option_in_default_yaml_names_that_file(config_dir):
    path = write(config_dir / "default.yaml", "typo_option: 1\n")
    with pytest.raises(AnomalyError) as exc:
        load_train_config({})
    assert_one_line(exc, str(path), "typo_option")


def test_malformed_yaml(config_dir, tmp_path):
    user = write(tmp_path / "bad.yaml", "batch_size: [4, 8\nloss: : ssim\n")
    with pytest.raises(AnomalyError) as exc:
        load_train_config({}, str(user))
    assert_one_line(exc, str(user))


def test_yaml_that_is_not_a_mapping(config_dir, tmp_path):
    user = write(tmp_path / "list.yaml", "- batch_size\n- 4\n")
    with pytest.raises(AnomalyError) as exc:
        load_train_config({}, str(user))
    assert_one_line(exc, str(user))


def test_missing_config_file(config_dir, tmp_path):
    with pytest.raises(AnomalyError) as exc:
        load_train_config({}, str(tmp_path / "absent.yaml"))
    assert_one_line(exc, str(tmp_path / "absent.yaml"))


def test_empty_yaml_file_changes_nothing(config_dir, tmp_path):
    user = write(tmp_path / "empty.yaml", "# only a comment\n")
    assert load_train_config({}, str(user)) == TrainConfig(params=init_defaults())


# --------------------------------------------------------------------------- validate


@pytest.mark.parametrize("overrides, option", [
    ({"architecture": "superCAE"}, "architecture"),
    ({"loss": "l1"}, "loss"),
    ({"color_mode": "cmyk"}, "color_mode"),
    ({"precision": "float16"}, "precision"),
    ({"input_size": 100}, "input_size"),
    ({"input_size": 0}, "input_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": -4}, "batch_size"),
    ({"epochs": 0}, "epochs"),
    ({"val_split": 0.0}, "val_split"),
    ({"val_split": 1.0}, "val_split"),
    ({"lr": 0.0}, "lr"),
    ({"lr": -1e-3}, "lr"),
])
def test_validate_names_the_option(config_dir, overrides, option):
    with pytest.raises(AnomalyError) as exc:
        load_train_config(overrides)
    assert exc.value.option == option
    assert_one_line(exc, option)
    bad_value = str(next(iter(overrides.values())))
    assert bad_value in str(exc.value)


@pytest.mark.parametrize("argv, shown", [
    (["-a", "superCAE"], "error: -a/--architecture: unknown value 'superCAE'"),
    (["-b", "0"], "error: -b/--batch: expected a positive integer"),
    (["--lr", "-1"], "error: --lr: expected a positive number"),
])
def test_the_command_line_shows_its_flag_for_an_option(config_dir, demo_root, argv, shown, capsys):
    from anomaly.cli import train as train_cli
    from anomaly.cli.common import run

    assert run(train_cli.main, ["-d", str(demo_root), *argv]) == 2
    assert capsys.readouterr().err.startswith(shown)


def test_validate_accepts_every_listed_choice(config_dir):
    from anomaly.models import list_architectures

    for arch in list_architectures():
        assert load_train_config({"architecture": arch}).architecture == arch
    for loss in ("ssim", "l2"):
        assert load_train_config({"loss": loss}).params["loss"] == loss
    assert load_train_config({"color_mode": "rgb"}).channels == 3
    assert load_train_config({"precision": "mixed_bfloat16"}).precision == "mixed_bfloat16"


def test_mssim_needs_a_large_input(config_dir):
    assert MSSIM_MIN_SIZE == 176
    with pytest.raises(AnomalyError) as exc:
        load_train_config({"loss": "mssim", "input_size": 160})
    assert_one_line(exc, "mssim", "loss", "176")
    assert load_train_config({"loss": "mssim", "input_size": 192}).params["loss"] == "mssim"


def test_validate_returns_the_config():
    c = TrainConfig(input_size=64)
    assert c.validate() is c


# --------------------------------------------------------------------------- saved configs


def test_config_from_dict_keeps_unknown_keys_in_extra():
    c = TrainConfig(data_dir="/data/bottle", input_size=128, params={**init_defaults(), "loss": "l2", "lr": 1e-3})
    saved = c.to_dict()
    saved["split"] = {"train": ["train/good/000.png"], "validation": ["train/good/001.png"]}
    saved["versions"] = {"tensorflow": "2.21"}
    # through YAML, as in a model directory's config.yaml
    loaded = config_from_dict(yaml.safe_load(yaml.safe_dump(saved)))
    assert loaded.extra == {"split": saved["split"], "versions": saved["versions"]}
    for f in dataclasses.fields(TrainConfig):
        if f.name != "extra":
            assert getattr(loaded, f.name) == getattr(c, f.name), f.name
    loaded.validate()


def test_config_from_dict_tolerates_missing_keys():
    c = config_from_dict({"loss": "l2", "note": "old run"})
    assert c.params["loss"] == "l2" and c.batch_size == 8
    assert c.extra == {"note": "old run"}


def test_to_dict_config_from_dict_round_trip_keeps_extra():
    c = config_from_dict({"loss": "l2", "split": {"validation": ["train/good/001.png"]}})
    again = config_from_dict(c.to_dict())
    assert again.extra == c.extra and again == c


def test_a_config_yaml_of_the_previous_layout_still_loads():
    """config.yaml before 2026-12 held every detector's option, flat, under older names."""
    old = {"architecture": "knn", "color_mode": "rgb", "loss": "ssim", "lr": None, "backbone": "resnet50",
           "layers": "", "coreset_ratio": 0.002, "knn_k": 5, "knn_dims": 20, "padim_dims": 100,
           "split": {"train": [], "validation": []}}
    c = config_from_dict(old)
    assert c.params == {**init_defaults("knn"), "backbone": "resnet50", "k": 5, "n_dims": 20}
    assert c.extra == {"loss": "ssim", "lr": None, "coreset_ratio": 0.002, "padim_dims": 100,
                       "split": {"train": [], "validation": []}}


def test_input_width_makes_non_square_images(config_dir):
    config = load_train_config({"data_dir": "x", "input_size": 640, "input_width": 128})
    assert config.image_size == (640, 128) and config.input_shape == (640, 128, 1)
    assert load_train_config({"data_dir": "x"}).image_size == (256, 256)
    with pytest.raises(AnomalyError, match="input_width: expected a multiple of 32"):
        load_train_config({"data_dir": "x", "input_width": 100})
    write(config_dir / "cutpaste.yaml", "")  # a detector with a backbone needs its own defaults file
    with pytest.raises(AnomalyError, match="input_width: cutpaste"):
        load_train_config({"data_dir": "x", "architecture": "cutpaste", "input_width": 128})
    with pytest.raises(AnomalyError, match="loss: mssim needs"):
        load_train_config({"data_dir": "x", "loss": "mssim", "input_width": 128})


def test_detector_names_in_any_case_and_a_hint_for_near_misses(config_dir):
    assert load_train_config({"architecture": "Pixel-Gaussian"}).architecture == "pixel-gaussian"
    assert load_train_config({"architecture": "MVTECcae"}).architecture == "mvtecCAE"
    with pytest.raises(AnomalyError, match="did you mean pixel-gaussian"):
        load_train_config({"architecture": "pixel-gausian"})
