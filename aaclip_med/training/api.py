"""``aaclip_med.train(data, out_dir, config)``: both AA-CLIP stages on the user's labelled images or volumes.

The settings are one :class:`~aaclip_med.config.TrainConfig`, whose fields are the flags of ``aaclip-med train``
(``data`` is its positional argument, ``out_dir`` is ``--out``; ``--resume`` and ``--no-progress`` say how to
run, not what to train, so they stay arguments).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aaclip_med._files import TRAINING_OUTPUTS, atomic_path, check_output_folder
from aaclip_med.config import TrainConfig
from aaclip_med.errors import OutputError
from aaclip_med.manifest import read_manifest
from aaclip_med.model.factory import create_model
from aaclip_med.model.prompts import build_prompts
from aaclip_med.presets import get_preset
from aaclip_med.training.augment import Augmenter
from aaclip_med.training.calibrate import choose_threshold, collect_validation
from aaclip_med.training.data import SliceDataset, build_datasets
from aaclip_med.training.layouts import discover_folder
from aaclip_med.training.stages import (
    TRAIN_LOG_COLUMNS,
    StageConfig,
    _load_adapter_state,
    checkpoint_path,
    run_stage,
)

__all__ = ["train"]

logger = logging.getLogger(__name__)

ADAPTERS_FILE = "adapters.safetensors"


def _write_logs(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``train_log.jsonl`` and ``train_log.csv`` from the full history (consistent after a resume).

    ``train_log.csv`` has the columns :data:`~aaclip_med.training.stages.TRAIN_LOG_COLUMNS` (empty cells where a
    stage has no such value); ``train_log.jsonl`` has each row's own keys.
    """
    with atomic_path(out_dir / "train_log.csv") as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=TRAIN_LOG_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    with atomic_path(out_dir / "train_log.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(
    data: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train AA-CLIP's text adapter (stage 1) then image adapter (stage 2) and write one adapter checkpoint.

    Args:
        data: A manifest CSV (``case_id,image,mask,label,preset,split``) or a data folder (BMAD, MVTec, VisA,
            ``images/`` + ``labels/`` volumes). Everything is validated before training starts.
        out_dir: Run folder: ``adapters.safetensors``, ``train_log.{csv,jsonl}``, ``checkpoints/``.
        config: What to train and how (None: :class:`~aaclip_med.config.TrainConfig` defaults, the paper's
            schedule for ``aaclip-vitl14-336``). It is recorded in the checkpoint metadata (``training``).
        resume: Continue from ``out_dir/checkpoints`` after an interruption (same ``config``).
        progress: Show progress bars.

    Returns:
        Path of the written ``adapters.safetensors``.

    Raises:
        ManifestError: bad data (before any training).
        ConfigError: options the model refuses (unknown model, device).
        OutputError: ``out_dir`` holds checkpoints of a previous run and ``resume`` is False, holds files that
            are not a training run's, or it is, lies inside or contains the training data.

    Example:
        >>> cfg = TrainConfig(model="aaclip-tiny", backbone_weights="random", image_epochs=2)
        >>> train("manifest.csv", "runs/t1", cfg)  # doctest: +SKIP
    """
    cfg = config if config is not None else TrainConfig()
    out = Path(out_dir)
    if not resume and any(checkpoint_path(out, s).exists() for s in (1, 2)):
        msg = (
            f"'{out}' holds checkpoints of an earlier run; pass --resume to continue it or choose "
                          "another --out folder."
        )
        raise OutputError(msg)
    data = Path(data)
    records = read_manifest(data) if data.is_file() else discover_folder(data)
    check_output_folder(out, [r.image for r in records] + ([] if data.is_file() else [data]), overwrite=True,
                        flag="--out", ours=TRAINING_OUTPUTS)  # a foreign non-empty folder is refused
    train_items, val_items = build_datasets(records, cfg.preset)
    _seed_everything(cfg.seed)
    net = create_model(cfg.model, backbone_weights=cfg.backbone_weights, device=cfg.device,
                       precision=cfg.precision, image_size=cfg.image_size, seed=cfg.seed, adapter_weights=None,
                       backend="eager")  # trainable
    out.mkdir(parents=True, exist_ok=True)  # only now: a bad model, device or precision leaves no folder
    size = net.input_size
    val_ds = SliceDataset(val_items, size) if val_items else None
    logger.info("Training on %d samples (%d anomalous), validating on %d", len(train_items),
                sum(it.label for it in train_items), len(val_items))
    stage = StageConfig(1, cfg.text_epochs, cfg.text_batch_size, cfg.text_lr, vv_axis=cfg.vv_axis, seed=cfg.seed,
                        progress=progress, stage1_levels=cfg.stage1_levels, stage1_cls_loss=cfg.stage1_cls_loss)
    stages = [
        (stage, Augmenter(False, seed=cfg.seed)),
        (dataclasses.replace(stage, stage=2, epochs=cfg.image_epochs, batch_size=cfg.image_batch_size,
                             lr=cfg.image_lr, milestones=tuple(cfg.image_lr_milestones)),
         Augmenter(True, seed=cfg.seed + 1)),
    ]
    histories: list[list[dict[str, Any]]] = [[], []]
    results = []
    for i, (stage_cfg, augmenter) in enumerate(stages):
        def log(history: list[dict[str, Any]], i: int = i) -> None:
            histories[i] = history
            _write_logs(out, histories[0] + histories[1])

        results.append(run_stage(net, SliceDataset(train_items, size, augmenter), val_ds, stage_cfg, out, log))
        log(results[-1].history)
    result = results[-1]
    if result.best_state is not None:
        _load_adapter_state(net, result.best_state)
        selection = f"epoch {result.best_epoch}: best validation pixel AUROC"
    else:
        selection = f"epoch {cfg.image_epochs}: last epoch (no validation split, or validation metrics undefined)"
        warnings.warn(f"No usable validation split: the last stage-2 epoch is kept ({selection})", stacklevel=2)
    calib_items, calib_source = (
        (val_items, "validation") if val_items else (train_items, "training (no validation)")
    )
    calib = collect_validation(net, torch.utils.data.DataLoader(SliceDataset(calib_items, size), batch_size=8),
                               net.device, cfg.seed)
    threshold = choose_threshold(calib, cfg.threshold_rule)
    net.threshold = threshold
    presets = sorted({it.preset for it in train_items})
    metadata = {
        "threshold": threshold,
        "threshold_rule": cfg.threshold_rule,
        "threshold_source": calib_source,
        "epoch_selection": selection,
        "calibration_metrics": calib.metrics(),
        "prompts": {p: dict(zip(("normal", "abnormal"), build_prompts(get_preset(p).prompts), strict=True))
                    for p in presets},
        "presets": presets,
        "training": {**cfg.to_dict(), "image_size": size, "data": str(data), "n_train": len(train_items),
                     "n_val": len(val_items), "n_train_anomalous": sum(it.label for it in train_items)},
    }
    path = Path(net.save_adapters(str(out / ADAPTERS_FILE), metadata))
    logger.info("Wrote %s (threshold %s, %s)", path, threshold, selection)
    return path
