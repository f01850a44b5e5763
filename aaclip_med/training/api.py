"""``aaclip_med.train(...)``: both AA-CLIP stages on the user's labelled images or volumes, one call.

Arguments map one-to-one to the flags of ``aaclip-med train`` (``data`` is the positional argument; ``out_dir``
is ``--out``; every other argument is ``--name-with-dashes``).
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aaclip_med._files import TRAINING_OUTPUTS, check_output_folder
from aaclip_med.config import get_preset
from aaclip_med.errors import ConfigError, OutputError
from aaclip_med.model.factory import check_trainable_precision, create_model
from aaclip_med.model.prompts import build_prompts
from aaclip_med.model.surgery import check_vv_axis
from aaclip_med.training.augment import Augmenter
from aaclip_med.training.calibrate import choose_threshold, collect_validation, parse_threshold_rule
from aaclip_med.training.data import SliceDataset, build_datasets
from aaclip_med.training.layouts import discover_folder, read_manifest
from aaclip_med.training.stages import StageConfig, _load_adapter_state, checkpoint_path, run_stage

__all__ = ["train"]

logger = logging.getLogger(__name__)

ADAPTERS_FILE = "adapters.safetensors"


def _write_logs(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``train_log.jsonl`` and ``train_log.csv`` from the full history (consistent after a resume)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    tmp = out_dir / "train_log.csv.tmp"
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out_dir / "train_log.csv")
    tmp = out_dir / "train_log.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(out_dir / "train_log.jsonl")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(
    data: str | Path,
    out_dir: str | Path,
    model: str = "aaclip-vitl14-336",
    backbone_weights: str | None = None,
    image_size: int | None = None,
    text_epochs: int = 5,
    image_epochs: int = 20,
    text_batch_size: int = 16,
    image_batch_size: int = 2,
    text_lr: float = 1e-5,
    image_lr: float = 5e-4,
    image_lr_milestones: tuple[int, ...] = (16000, 32000),
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    resume: bool = False,
    progress: bool = True,
    preset: str | None = None,
    vv_axis: str = "tokens",
    threshold_rule: str = "f1",
    stage1_levels: str = "last",
    stage1_cls_loss: bool = False,
) -> Path:
    """Train AA-CLIP's text adapter (stage 1) then image adapter (stage 2) and write one adapter checkpoint.

    Args:
        data: A manifest CSV (``case_id,image,mask,label,preset,split``) or a data folder (BMAD, MVTec, VisA,
            ``images/`` + ``labels/`` volumes). Everything is validated before training starts.
        out_dir: Run folder: ``adapters.safetensors``, ``train_log.{csv,jsonl}``, ``checkpoints/``.
        model: Registry name of the backbone configuration.
        backbone_weights: open_clip tag, weight file, or ``random`` (None: the model's default).
        image_size: Training input size (None: the model's).
        text_epochs: Stage-1 epochs (0 skips stage 1: anchors from the untrained text adapter).
        image_epochs: Stage-2 epochs.
        text_batch_size: Stage-1 batch size (the V-V features mix the batch when ``vv_axis="batch"``).
        image_batch_size: Stage-2 batch size.
        text_lr: Stage-1 Adam learning rate.
        image_lr: Stage-2 Adam learning rate.
        image_lr_milestones: Stage-2 iterations at which the learning rate halves.
        seed: Seeds Python, NumPy, torch, the shuffling generators, augmentation and (random backbones) the model.
        device: ``auto``, ``cpu``, ``cuda``...
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (autocast).
        resume: Continue from ``out_dir/checkpoints`` after an interruption.
        progress: Show progress bars.
        preset: Modality preset for cases without one (None: from each volume's modality; ``reference`` for 2D).
        vv_axis: Stage-1 V-V attention axis, ``tokens`` (intended) or ``batch`` (reference parity).
        threshold_rule: ``f1`` (pixel F1-max), ``youden`` or ``fpr:X``, chosen on the validation split.
        stage1_levels: ``last`` (reference) or ``all`` levels in the stage-1 segmentation loss.
        stage1_cls_loss: Add an image-level CE term to stage 1 (the paper's Eq. 4; off in the reference code).

    Returns:
        Path of the written ``adapters.safetensors``.

    Raises:
        ManifestError: bad data (before any training).
        ConfigError: bad options.
        OutputError: ``out_dir`` holds checkpoints of a previous run and ``resume`` is False, holds files that
            are not a training run's, or it is, lies inside or contains the training data.

    Example:
        >>> train("manifest.csv", "runs/t1", model="aaclip-tiny", backbone_weights="random")  # doctest: +SKIP
    """
    check_vv_axis(vv_axis)
    parse_threshold_rule(threshold_rule)
    check_trainable_precision(precision)
    if stage1_levels not in ("last", "all"):
        raise ConfigError(f"stage1_levels={stage1_levels!r} is not valid; use 'last' (reference) or 'all'.")
    out = Path(out_dir)
    if not resume and any(checkpoint_path(out, s).exists() for s in (1, 2)):
        raise OutputError(f"'{out}' holds checkpoints of an earlier run; pass --resume to continue it or choose "
                          "another --out folder.")
    data = Path(data)
    records = read_manifest(data) if data.is_file() else discover_folder(data)
    check_output_folder(out, [r.image for r in records] + ([] if data.is_file() else [data]), overwrite=True,
                        flag="--out", ours=TRAINING_OUTPUTS)  # a foreign non-empty folder is refused
    train_items, val_items = build_datasets(records, preset)
    _seed_everything(seed)
    net = create_model(model, backbone_weights=backbone_weights, device=device, precision=precision,
                       image_size=image_size, seed=seed, adapter_weights=None, backend="eager")  # trainable
    out.mkdir(parents=True, exist_ok=True)  # only now: a bad model, device or precision leaves no folder
    size = net.input_size
    val_ds = SliceDataset(val_items, size) if val_items else None
    logger.info("Training on %d samples (%d anomalous), validating on %d", len(train_items),
                sum(it.label for it in train_items), len(val_items))
    stage_config = functools.partial(StageConfig, vv_axis=vv_axis, seed=seed, progress=progress,
                                     stage1_levels=stage1_levels, stage1_cls_loss=stage1_cls_loss)
    stages = [
        (stage_config(1, text_epochs, text_batch_size, text_lr), Augmenter(False, seed=seed)),
        (stage_config(2, image_epochs, image_batch_size, image_lr, tuple(image_lr_milestones)),
         Augmenter(True, seed=seed + 1)),
    ]
    histories: list[list[dict[str, Any]]] = [[], []]
    results = []
    for i, (cfg, augmenter) in enumerate(stages):
        def log(history: list[dict[str, Any]], i: int = i) -> None:
            histories[i] = history
            _write_logs(out, histories[0] + histories[1])

        results.append(run_stage(net, SliceDataset(train_items, size, augmenter), val_ds, cfg, out, log))
        log(results[-1].history)
    result = results[-1]
    if result.best_state is not None:
        _load_adapter_state(net, result.best_state)
        selection = f"epoch {result.best_epoch}: best validation pixel AUROC"
    else:
        selection = f"epoch {image_epochs}: last epoch (no validation split, or validation metrics undefined)"
        warnings.warn(f"No usable validation split: the last stage-2 epoch is kept ({selection})", stacklevel=2)
    calib_items, calib_source = (
        (val_items, "validation") if val_items else (train_items, "training (no validation)")
    )
    calib = collect_validation(net, torch.utils.data.DataLoader(SliceDataset(calib_items, size), batch_size=8),
                               net.device, seed)
    threshold = choose_threshold(calib, threshold_rule)
    net.threshold = threshold
    presets = sorted({it.preset for it in train_items})
    metadata = {
        "threshold": threshold,
        "threshold_rule": threshold_rule,
        "threshold_source": calib_source,
        "epoch_selection": selection,
        "calibration_metrics": calib.metrics(),
        "prompts": {p: dict(zip(("normal", "abnormal"), build_prompts(get_preset(p).prompts), strict=True))
                    for p in presets},
        "presets": presets,
        "training": {"data": str(data), "n_train": len(train_items), "n_val": len(val_items),
                     "n_train_anomalous": sum(it.label for it in train_items), "text_epochs": text_epochs,
                     "image_epochs": image_epochs, "text_batch_size": text_batch_size,
                     "image_batch_size": image_batch_size, "text_lr": text_lr, "image_lr": image_lr,
                     "image_lr_milestones": list(image_lr_milestones), "seed": seed, "vv_axis": vv_axis,
                     "stage1_levels": stage1_levels, "stage1_cls_loss": stage1_cls_loss, "image_size": size},
    }
    path = Path(net.save_adapters(str(out / ADAPTERS_FILE), metadata))
    logger.info("Wrote %s (threshold %s, %s)", path, threshold, selection)
    return path

