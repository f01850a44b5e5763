"""The two AA-CLIP training stages (spec sections 4-5) with per-epoch resumable checkpoints.

Stage 1 trains the text adapter on frozen V-V ("surgery") patch features: ``L_seg`` of the last level (or the sum
over all levels with ``stage1_levels="all"``) plus ``0.1 * (mean_b <t_N, t_A>)^2``, anchors recomputed with
gradient per batch for each preset in it. Stage 2 trains the image adapter with frozen anchors:
``CE(det . T, y) + sum_levels L_seg``. The backbone never receives gradients.

Each epoch ends with an atomic ``torch.save`` of ``out_dir/checkpoints/stage{1,2}_last.pt`` (adapters, optimizer,
scheduler, RNG states, epoch, history, best stage-2 state); a killed run resumes from it bit-identically because
the shuffling generator is restored and augmentation is seeded per (epoch, sample).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from aaclip_med._files import atomic_path
from aaclip_med.model.aaclip import AACLIP
from aaclip_med.model.maps import training_probs
from aaclip_med.model.prompts import build_prompts
from aaclip_med.presets import get_preset
from aaclip_med.training.calibrate import collect_validation
from aaclip_med.training.data import SliceDataset
from aaclip_med.training.losses import ORTH_WEIGHT, detection_loss, orthogonality_loss, seg_loss

__all__ = ["TRAIN_LOG_COLUMNS", "StageConfig", "StageResult", "run_stage"]

logger = logging.getLogger(__name__)

# Columns of a training run's train_log.csv, one row per epoch of either stage, built by run_stage: the loss parts
# (seg; orth in stage 1; cls in stage 2, and in stage 1 with stage1_cls_loss) are epoch means; val_* only in
# stage 2 with a validation split; an empty cell where a stage has no such value.
TRAIN_LOG_COLUMNS = (
    "stage", "epoch", "lr", "loss", "seg", "orth", "cls", "val_pixel_auroc", "val_image_auroc", "seconds",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class StageConfig:
    """Settings of one stage (defaults: spec section 5.3)."""

    stage: int
    epochs: int
    batch_size: int
    lr: float
    milestones: tuple[int, ...] = ()  # MultiStepLR milestones in iterations (stage 2: 16000, 32000)
    gamma: float = 0.5
    betas: tuple[float, float] = (0.5, 0.999)
    vv_axis: str = "tokens"  # stage-1 V-V attention axis ("batch" = reference parity)
    stage1_levels: str = "last"  # "last" = reference (only level 24 survives its loop) | "all"
    stage1_cls_loss: bool = False  # reference: off (README discussion; issue #38)
    seed: int = 0
    progress: bool = True


@dataclass(frozen=True, slots=True)
class StageResult:
    """What a stage leaves behind."""

    history: list[dict[str, Any]]
    best_state: dict[str, torch.Tensor] | None  # stage 2: adapter state of the selected epoch
    best_epoch: int | None  # 1-based


def _autocast(model: AACLIP) -> torch.autocast:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(model.precision)
    if dtype is None:
        return torch.autocast(model.device.type, enabled=False)
    return torch.autocast(model.device.type, dtype=dtype)


def _groups(presets: list[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(presets):
        groups.setdefault(p, []).append(i)
    return groups


def _batch_anchors(anchor_of: Callable[[str], torch.Tensor], presets: list[str]) -> torch.Tensor:
    """Per-sample anchors (B, D, 2), computed once per unique preset."""
    by_preset = {p: anchor_of(p) for p in dict.fromkeys(presets)}
    return torch.stack([by_preset[p] for p in presets])


def _probs(tokens: torch.Tensor, anchors: torch.Tensor, presets: list[str], grid: tuple[int, int],
           size: tuple[int, int]) -> torch.Tensor:
    """Training probabilities for a batch whose samples may use different anchors."""
    out = tokens.new_empty((tokens.shape[0], 2, *size), dtype=torch.float32)
    parts = []
    for idx in _groups(presets).values():
        parts.append((idx, training_probs(tokens[idx], anchors[idx[0]], grid, size)))
    if len(parts) == 1:
        return parts[0][1]
    for idx, probs in parts:
        out = out.index_copy(0, torch.tensor(idx, device=out.device), probs)
    return out


def _prompt_anchors(model: AACLIP) -> Callable[[str], torch.Tensor]:
    def anchor_of(preset: str) -> torch.Tensor:
        normal, abnormal = build_prompts(get_preset(preset).prompts)
        return model.anchors_from_prompts(normal, abnormal).float()

    return anchor_of


def stage1_loss(model: AACLIP, batch: dict[str, Any], cfg: StageConfig) -> dict[str, torch.Tensor]:
    """Stage-1 loss parts for one batch (text adapter trainable)."""
    x, mask = batch["image"].to(model.device), batch["mask"].to(model.device)
    presets = list(batch["preset"])
    with _autocast(model):
        feats = model.surgery_features(x, cfg.vv_axis)  # type: ignore[arg-type]
    anchors = _batch_anchors(_prompt_anchors(model), presets)
    levels = feats if cfg.stage1_levels == "all" else feats[-1:]
    grid, size = model.grid(x), tuple(x.shape[-2:])
    seg = sum((seg_loss(_probs(f, anchors, presets, grid, size), mask) for f in levels), torch.zeros(()))
    parts = {"seg": seg, "orth": ORTH_WEIGHT * orthogonality_loss(anchors)}
    if cfg.stage1_cls_loss:
        with torch.no_grad(), _autocast(model):
            glob = F.normalize(model.clip.encode_image(x).float(), dim=-1)
        parts["cls"] = detection_loss(glob, anchors, batch["label"].to(model.device))
    return parts


def stage2_loss(model: AACLIP, batch: dict[str, Any], cfg: StageConfig) -> dict[str, torch.Tensor]:
    """Stage-2 loss parts for one batch (image adapter trainable, anchors frozen)."""
    x, mask = batch["image"].to(model.device), batch["mask"].to(model.device)
    presets = list(batch["preset"])
    anchors = _batch_anchors(model.text_anchors, presets)
    with _autocast(model):
        seg_tokens, det = model.encode_levels(x)
    grid, size = model.grid(x), tuple(x.shape[-2:])
    seg = sum((seg_loss(_probs(t, anchors, presets, grid, size), mask) for t in seg_tokens), torch.zeros(()))
    return {"seg": seg, "cls": detection_loss(det, anchors, batch["label"].to(model.device))}


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    # numpy's stubs type the default call as the dict overload; at run time it returns the legacy tuple
    np_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    return {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])


def _atomic_save(obj: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def checkpoint_path(out_dir: Path, stage: int) -> Path:
    """Where stage ``stage`` keeps its last checkpoint."""
    return out_dir / "checkpoints" / f"stage{stage}_last.pt"


def _load_adapter_state(model: AACLIP, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for key, value in model.adapter_state().items():
            value.copy_(state[key])


def run_stage(
    model: AACLIP,
    train_ds: SliceDataset,
    val_ds: SliceDataset | None,
    cfg: StageConfig,
    out_dir: Path,
    on_epoch: Callable[[list[dict[str, Any]]], None],
) -> StageResult:
    """Train one stage, resuming from its checkpoint in ``out_dir`` when there is one.

    Args:
        model: The AA-CLIP model (modified in place: the stage's adapter is trained).
        train_ds: Training samples (with the stage's augmentation).
        val_ds: Validation samples (no augmentation), or None. Used in stage 2 for epoch selection.
        cfg: Stage settings.
        out_dir: Run folder (``checkpoints/`` inside).
        on_epoch: Called with the full history after each epoch (writes the logs).

    Returns:
        The stage history and, for stage 2, the selected epoch's adapter state.
    """
    from tqdm.auto import tqdm

    params = model.trainable_parameters(cfg.stage)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.milestones), cfg.gamma)
    generator = torch.Generator().manual_seed(cfg.seed + cfg.stage)
    path = checkpoint_path(out_dir, cfg.stage)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"score": -np.inf, "epoch": None, "state": None}
    start = 0
    if path.is_file():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        _load_adapter_state(model, ckpt["adapters"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"], generator)
        history, best, start = list(ckpt["history"]), dict(ckpt["best"]), int(ckpt["epoch"])
        logger.info("Stage %d: resuming after epoch %d from %s", cfg.stage, start, path)
    loss_fn = stage1_loss if cfg.stage == 1 else stage2_loss
    model.train()
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        train_ds.set_epoch(epoch)
        loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, generator=generator)
        sums: dict[str, float] = {}
        n_batches = 0
        bar = tqdm(loader, desc=f"stage {cfg.stage} epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress)
        for batch in bar:
            parts = loss_fn(model, batch, cfg)
            loss = sum(parts.values(), torch.zeros(()))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # torch leaves Tensor.backward unannotated
            optimizer.step()
            scheduler.step()
            n_batches += 1
            for key, value in {"loss": loss, **parts}.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        row: dict[str, Any] = {"stage": cfg.stage, "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        row.update({k: v / max(n_batches, 1) for k, v in sums.items()})
        if cfg.stage == 2 and val_ds is not None and len(val_ds) > 0:
            model.eval()
            val_loader = DataLoader(val_ds, batch_size=max(cfg.batch_size, 8), shuffle=False)
            row.update(collect_validation(model, val_loader, model.device, cfg.seed, cfg.progress).metrics())
            model.train()
            score = row["val_pixel_auroc"] if np.isfinite(row["val_pixel_auroc"]) else row["val_image_auroc"]
            if np.isfinite(score) and score > best["score"]:
                best = {"score": float(score), "epoch": epoch + 1,
                        "state": {k: v.detach().clone() for k, v in model.adapter_state().items()}}
        row["seconds"] = round(time.perf_counter() - t0, 2)
        history.append(row)
        logger.info("Stage %d epoch %d: %s", cfg.stage, epoch + 1, row)
        _atomic_save({"stage": cfg.stage, "epoch": epoch + 1,
                      "adapters": {k: v.detach().cpu().clone() for k, v in model.adapter_state().items()},
                      "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                      "rng": _rng_state(generator), "history": history, "best": best}, path)
        on_epoch(history)
    model.eval()
    for p in params:
        p.requires_grad_(False)
    return StageResult(history, best["state"], best["epoch"])
