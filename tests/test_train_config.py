"""TrainConfig: every bad value is refused up front with its name, TOML round-trips, and the CLI's flag table."""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path

import pytest

from aaclip_med import cli, cli_options
from aaclip_med.config import TrainConfig, load_train_config
from aaclip_med.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"model": ""}, "model='' is empty"),
        ({"image_size": 16}, "image_size=16 is out of range; use 32..2048"),
        ({"text_epochs": -1}, "text_epochs=-1"),
        ({"image_batch_size": 0}, "image_batch_size=0: both must be >= 1"),
        ({"image_lr": math.nan}, "image_lr=nan must be a finite number >= 0"),
        ({"text_lr": -1e-5}, "text_lr=-1e-05 must be a finite number >= 0"),
        ({"image_lr_milestones": (32000, 16000)}, r"image_lr_milestones=\(32000, 16000\) must be increasing"),
        ({"image_lr_milestones": (0,)}, r"image_lr_milestones=\(0,\)"),
        ({"precision": "int8"}, "precision='int8' is not valid for training.*inference only"),
        ({"precision": "fp64"}, "precision='fp64' is not valid for training; use auto, fp32, bf16 or fp16"),
        ({"preset": "liver-ct"}, "preset='liver-ct' is not known; did you mean 'liver_ct'"),
        ({"vv_axis": "rows"}, "vv_axis='rows' is not valid; use 'tokens'"),
        ({"threshold_rule": "fpr:2"}, "Threshold rule 'fpr:2' is not known; use f1, youden or fpr:X"),
        ({"stage1_levels": "first"}, "stage1_levels='first' is not valid; use 'last'"),
    ],
)
def test_bad_values_are_refused_with_their_name(changes: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        dataclasses.replace(TrainConfig(), **changes)
    assert "\n" not in str(info.value)


def test_defaults_are_the_papers_schedule_and_the_config_is_frozen() -> None:
    cfg = TrainConfig()
    assert (cfg.text_epochs, cfg.image_epochs, cfg.text_lr, cfg.image_lr) == (5, 20, 1e-5, 5e-4)
    assert (cfg.text_batch_size, cfg.image_batch_size, cfg.image_lr_milestones) == (16, 2, (16000, 32000))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]
    assert cfg.to_dict()["image_lr_milestones"] == [16000, 32000]


def _toml(data: dict[str, object]) -> str:
    """The smallest TOML writer for a flat TrainConfig dict (None values are left out: they are the default)."""

    def value(v: object) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    return "".join(f"{k} = {value(v)}\n" for k, v in data.items() if v is not None)


def test_toml_round_trip(tmp_path: Path) -> None:
    cfg = TrainConfig(model="aaclip-tiny", backbone_weights="random", image_size=224, text_epochs=0,
                      image_epochs=3, text_lr=2e-5, image_lr_milestones=(10, 20), seed=7, precision="fp32",
                      preset="brain_mri", vv_axis="batch", threshold_rule="fpr:0.05", stage1_levels="all",
                      stage1_cls_loss=True)
    path = tmp_path / "train.toml"
    path.write_text('description = "a training recipe"\n' + _toml(cfg.to_dict()), encoding="utf-8")
    assert load_train_config(path) == cfg
    assert load_train_config(ROOT / "pipelines" / "train_demo.toml").model == "aaclip-tiny"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("text_epoch = 2\n", "Unknown key.*'text_epoch'.*did you mean 'text_epochs'"),
        ("image_epochs = -3\n", "image_epochs=-3"),
        ("case = 'x'\n[train]\nvv_axis = 'rows'\n", "vv_axis='rows'"),
        ("[train]\ntext_epoch = 2\n", r"Unknown key.*'text_epoch'.*\[?train"),
        ("image_epochs = \n", "not a readable TOML file"),
    ],
)
def test_bad_toml_names_the_file_and_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "t.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=needle) as info:
        load_train_config(path)
    assert str(info.value).startswith(str(path))


def test_cli_flag_table_covers_the_config_and_overrides_the_toml(tmp_path: Path) -> None:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    flags = set(cli_options._TRAIN_FLAGS)
    assert flags == fields - {"image_lr_milestones"}  # milestones: TOML only
    assert flags <= set(inspect.signature(cli.train).parameters)  # each flag is a parameter of `train`
    path = tmp_path / "t.toml"
    path.write_text("model = 'aaclip-tiny'\nimage_epochs = 3\nstage1_cls_loss = true\n", encoding="utf-8")
    off = dict.fromkeys(flags)
    off["stage1_cls_loss"] = False  # a switch left off keeps the TOML's value
    cfg = cli_options.train_config(path, {**off, "image_epochs": 7, "seed": 0})
    assert (cfg.model, cfg.image_epochs, cfg.stage1_cls_loss, cfg.seed) == ("aaclip-tiny", 7, True, 0)
    assert cli_options.train_config(None, {**off, "stage1_cls_loss": True}) == TrainConfig(stage1_cls_loss=True)


def test_cli_reads_the_recipe_train_table() -> None:
    """`aaclip-med train --config pipelines/train_demo.toml` reads its [train] table; a flag still overrides it."""
    off = dict.fromkeys(cli_options._TRAIN_FLAGS)
    off["stage1_cls_loss"] = False
    cfg = cli_options.train_config(ROOT / "pipelines" / "train_demo.toml", {**off, "image_epochs": 1})
    assert (cfg.model, cfg.backbone_weights, cfg.image_size, cfg.image_epochs) == ("aaclip-tiny", "random", 224, 1)
