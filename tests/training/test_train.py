"""Training loops: one step lowers the loss, only adapters change, resume equals an uninterrupted run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aaclip_med.config import TrainConfig
from aaclip_med.errors import ConfigError, OutputError
from aaclip_med.manifest import read_manifest
from aaclip_med.model.factory import create_model
from aaclip_med.training import train
from aaclip_med.training.augment import Augmenter
from aaclip_med.training.data import SliceDataset, build_datasets
from aaclip_med.training.stages import TRAIN_LOG_COLUMNS, StageConfig, run_stage, stage1_loss, stage2_loss
from tests.training.conftest import SIZE

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _model() -> torch.nn.Module:
    return create_model("aaclip-tiny", backbone_weights="random", image_size=SIZE, precision="fp32", device="cpu")


def _batch(manifest: Path) -> dict[str, object]:
    train_items, _ = build_datasets(read_manifest(manifest), None)
    ds = SliceDataset(train_items[:4], SIZE)
    return torch.utils.data.default_collate([ds[i] for i in range(4)])


@pytest.mark.parametrize(("stage", "loss_fn", "lr"), [(1, stage1_loss, 1e-3), (2, stage2_loss, 5e-4)])
def test_one_step_lowers_the_loss(manifest_2d: Path, stage: int, loss_fn, lr: float) -> None:
    model, batch = _model(), _batch(manifest_2d)
    cfg = StageConfig(stage, 1, 4, lr)
    params = model.trainable_parameters(stage)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr, betas=cfg.betas)
    before = sum(loss_fn(model, batch, cfg).values())
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = sum(loss_fn(model, batch, cfg).values())
    assert float(after) < float(before)


def test_only_adapters_change(manifest_2d: Path, tmp_path: Path) -> None:
    model = _model()
    train_items, _ = build_datasets(read_manifest(manifest_2d), None)
    backbone = {k: v.clone() for k, v in model.clip.state_dict().items()}
    adapters = {k: v.clone() for k, v in model.adapter_state().items()}
    for stage, aug in ((1, Augmenter(False)), (2, Augmenter(True))):
        cfg = StageConfig(stage, 1, 4, 1e-3, progress=False)
        run_stage(model, SliceDataset(train_items, SIZE, aug), None, cfg, tmp_path, lambda h: None)
    after = model.clip.state_dict()
    assert all(torch.equal(backbone[k], after[k]) for k in backbone)
    changed = {k for k, v in model.adapter_state().items() if not torch.equal(adapters[k], v)}
    assert any(k.startswith("text_adapter.") for k in changed)
    assert any(k.startswith("image_adapter.") for k in changed)


TINY = TrainConfig(model="aaclip-tiny", backbone_weights="random", image_size=SIZE, text_epochs=1, image_epochs=1,
                   precision="fp32")


def _train(manifest: Path, out: Path, image_epochs: int, resume: bool = False) -> Path:
    cfg = TrainConfig(model="aaclip-tiny", backbone_weights="random", image_size=SIZE, text_epochs=1,
                      image_epochs=image_epochs, text_batch_size=4, image_batch_size=3, precision="fp32", seed=5)
    return train(manifest, out, cfg, progress=False, resume=resume)


def test_resume_equals_uninterrupted_run(manifest_2d: Path, tmp_path: Path) -> None:
    text = manifest_2d.read_text().replace(",val\n", ",test\n")  # no validation: the last epoch is kept
    manifest = manifest_2d.with_name("noval.csv")
    manifest.write_text(text)
    full = load_file(_train(manifest, tmp_path / "full", 2))
    _train(manifest, tmp_path / "part", 1)  # "killed" after epoch 1 of stage 2
    with pytest.raises(OutputError, match="--resume"):
        _train(manifest, tmp_path / "part", 2)
    resumed = load_file(_train(manifest, tmp_path / "part", 2, resume=True))
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    rows = [json.loads(line) for line in (tmp_path / "part" / "train_log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in rows] == [(1, 1), (2, 1), (2, 2)]


def test_train_writes_checkpoint_with_threshold(manifest_2d: Path, tmp_path: Path) -> None:
    from aaclip_med.model.weights import read_adapters

    with pytest.raises(ConfigError, match="precision='int8'.*inference only"):
        train(manifest_2d, tmp_path / "int8", dataclasses.replace(TINY, precision="int8"))
    assert not (tmp_path / "int8").exists()
    with pytest.raises(OutputError, match="contains it .*c0.png.*Choose another --out folder"):
        train(manifest_2d, tmp_path, TINY)  # holds the training images
    assert not (tmp_path / "checkpoints").exists()
    cfg = dataclasses.replace(TINY, text_batch_size=6, image_batch_size=6)
    path = train(manifest_2d, tmp_path / "run", cfg, progress=False)
    meta = read_adapters(path).metadata
    assert meta["training"] == {**cfg.to_dict(), "data": str(manifest_2d), "n_train": 6, "n_val": 4,
                                "n_train_anomalous": 3}  # the whole config, as a dict
    assert meta["threshold_source"] == "validation" and isinstance(meta["threshold"], float)
    assert meta["epoch_selection"].startswith("epoch 1") and "reference" in meta["prompts"]
    model = create_model("aaclip-tiny", backbone_weights="random", image_size=SIZE, adapter_weights=path)
    assert model.threshold == meta["threshold"]
    header = (tmp_path / "run" / "train_log.csv").read_text().splitlines()[0]
    assert tuple(header.split(",")) == TRAIN_LOG_COLUMNS
