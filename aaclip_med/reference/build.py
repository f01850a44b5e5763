"""Build a normal-reference memory from a site's normal studies (``aaclip-med reference build``).

Sources: normal volumes, a folder of them (:func:`~aaclip_med.discovery.discover`), or a manifest (rows with
label 0, and rows with a mask; rows labelled 1 without a mask are skipped). Of a source with a mask, ``mask_rule``
keeps the slices without mask voxels (``slices``, default) or every slice's patches more than one patch away from
the mask (``patches``: more normal anatomy when lesions span the middle slices, as in BRATS). Each volume goes
through the scoring preprocessing (the foreground rule of :func:`~aaclip_med.inference.score_volume`, one window
per volume, :func:`~aaclip_med.transforms.slice_transform`); the model's adapted patch tokens at every level are
kept where the patch is at least half foreground.

Window (``window``, stored in the memory; scoring with the memory preprocesses the study with the same rule):
``full`` (default) replaces a percentile or z-score window by the whole range of the volume's foreground (0-100th
percentile, one window per volume); fixed HU windows stay. A memory is a novelty detector and should see a lesion
brighter than any normal tissue as such. Measured on BRATS FLAIR (benchmarks/README.md): with the ``brain_mri``
window (0.5-99.5th percentile) normal brain sits mid-grey and the random-backbone memory map ranked tumour *below*
normal brain (inside-brain AUROC 0.13-0.45 on unseen cases); with ``full`` it gives 0.98-0.99. ``preset`` keeps the
preset's window.

Subsampling: a uniform random sample (seeded) of at most ``max_patches`` patches, drawn while streaming (each patch
gets a random key and the smallest keys stay), so memory never exceeds the bound plus one batch. Not a greedy
coreset: k-center greedy costs O(candidates x bound x D) (about 10^13 FLOPs for a ViT-L site memory, hours on a
CPU), and in the measurements from 1 to all reference slices changed inside-brain AUROC by < 0.03
(benchmarks/README.md), so the density a random sample keeps is enough.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from aaclip_med._typing import PathLike
from aaclip_med._version import __version__
from aaclip_med.discovery import load_cases
from aaclip_med.errors import ConfigError, ManifestError
from aaclip_med.intensity import foreground_mask, volume_window
from aaclip_med.model.aaclip import AACLIP
from aaclip_med.model.maps import level_anomaly_maps
from aaclip_med.presets import ModalityPreset, WindowConfig, get_preset
from aaclip_med.reference.calibration import Candidates, calibrate
from aaclip_med.reference.memory import PatchMemory, identity, save_memory
from aaclip_med.transforms import slice_transform

__all__ = [
    "FULL_WINDOW",
    "MASK_RULES",
    "WINDOW_RULES",
    "ReferenceSource",
    "build_reference",
    "memory_preset",
    "reference_sources",
]

logger = logging.getLogger(__name__)

MASK_RULES = ("slices", "patches")  # what a source's mask removes: its slices, or the patches near it
PATCH_FOREGROUND = 0.5  # a patch joins the memory when at least half of its pixels are foreground
WINDOW_RULES = ("full", "preset")  # the memory's window: the foreground's whole range, or the preset's own
FULL_WINDOW = WindowConfig("percentile", 0.0, 100.0, scope="volume")


@dataclass(frozen=True, slots=True)
class ReferenceSource:
    """One normal study: the image, and a mask whose slices are left out (None: every slice is normal)."""

    image: Path
    mask: Path | None = None
    series: str | None = None
    where: str = ""


def reference_sources(inputs: Sequence[PathLike]) -> list[ReferenceSource]:
    """The normal studies named by ``inputs`` (volumes, folders, manifests), by the rules of the module docstring.

    Raises:
        ManifestError: an input does not exist, or nothing normal is left.
    """
    out: list[ReferenceSource] = []
    for item in inputs:
        for case in load_cases(item):
            if case.label == 1 and case.mask is None:
                logger.warning("%s: labelled 1 without a mask: not a normal reference, skipped", case.where)
                continue
            out.append(ReferenceSource(case.image, case.mask, case.series, case.where or str(case.image)))
    if not out:
        msg = f"No normal study in {', '.join(map(str, inputs))}: give volumes, label-0 manifest rows or masks."
        raise ManifestError(msg)
    return out


def memory_preset(preset: str | ModalityPreset, window: str = "full") -> ModalityPreset:
    """``preset`` with the window a memory uses under ``window`` (module docstring): ``full`` or ``preset``.

    Raises:
        ConfigError: ``window`` is not one of :data:`WINDOW_RULES`.

    Example:
        >>> memory_preset("brain_mri").window.upper, memory_preset("liver_ct").window.upper
        (100.0, 250.0)
    """
    preset = get_preset(preset)
    if window not in WINDOW_RULES:
        msg = f"window={window!r} is not a memory window rule; use {' or '.join(WINDOW_RULES)}."
        raise ConfigError(msg)
    if window == "preset" or preset.window.mode == "hu":
        return preset
    return dataclasses.replace(preset, window=FULL_WINDOW)


def _normal_slices(
    source: ReferenceSource, preset: ModalityPreset, mask_rule: str
) -> tuple[Any, np.ndarray, list[int], Any, Any]:
    """The volume, its foreground, the normal scored slices, the window and the lesion mask (as scored)."""
    from aaclip_med.io import read_volume

    volume = read_volume(source.image, series=source.series)
    axis, n = volume.slice_axis, volume.n_slices
    fg = foreground_mask(volume.data, preset.foreground, slice_axis=axis)
    fraction = np.moveaxis(fg, axis, -1).reshape(-1, n).mean(axis=0)
    todo = [k for k in range(n) if fraction[k] >= preset.foreground.min_fraction]
    lesion = None
    if source.mask is not None:
        mask = read_volume(source.mask)
        if mask.shape != volume.shape:
            msg = f"{source.where}: mask grid {mask.shape} differs from the image's {volume.shape}; resample it."
            raise ManifestError(msg)
        lesion = volume.with_data((np.asarray(mask.data) > 0).astype(np.float32))
        if mask_rule == "slices":
            hit = np.asarray(np.moveaxis(lesion.data, axis, -1).reshape(-1, n).max(axis=0)) > 0
            todo = [k for k in todo if not hit[k]]
    return volume, fg, todo, volume_window(volume.data, fg, preset.window), lesion


def _patch_fraction(plane: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """(rows, cols) fraction of each patch's pixels that are set (area pooling of the slice onto the grid)."""
    t = torch.as_tensor(np.ascontiguousarray(plane, dtype=np.float32))[None, None]
    return F.interpolate(t, size=grid, mode="area")[0, 0]


def _normal_patches(fg: np.ndarray, lesion: np.ndarray | None, grid: tuple[int, int]) -> torch.Tensor:
    """(rows*cols,) bool: patches >= :data:`PATCH_FOREGROUND` foreground and at least one patch from any lesion."""
    keep = _patch_fraction(fg, grid) >= PATCH_FOREGROUND
    if lesion is not None and lesion.any():
        near = F.max_pool2d((_patch_fraction(lesion, grid) > 0).float()[None, None], 3, 1, 1)[0, 0] > 0
        keep &= ~near
    return keep.flatten()


def _encode(model: AACLIP, x: torch.Tensor, preset: ModalityPreset) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-level tokens (B,N,D) and the grid text map summed over levels (B,N), as scoring computes them."""
    anchors = model.text_anchors(preset)
    with torch.inference_mode():
        x = x.to(model.device, torch.float32)
        seg, _ = model.encode(x, preset)  # the one vision path of scoring (backend, int8 guard)
        grid = model.grid(x)
        text = level_anomaly_maps(seg, anchors, grid, grid, preset.blur_kernel, preset.blur_sigma).sum(0)
    return [t.float().cpu() for t in seg], text.flatten(1).cpu()


def build_reference(
    inputs: Sequence[PathLike] | PathLike,
    output: PathLike,
    *,
    model: AACLIP,
    preset: str | ModalityPreset,
    max_patches: int = 20000,
    max_slices: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    mask_rule: str = "slices",
    window: str = "full",
) -> PatchMemory:
    """Collect normal patch tokens, subsample, calibrate and write the memory file.

    Args:
        inputs: Normal volumes, folders or manifests (module docstring).
        output: The ``.safetensors`` file to write (atomically).
        model: The model the memory is for; scoring must use the same model, adapters and input size.
        preset: The scoring preset (window, foreground, prompts); scoring must use the same one.
        max_patches: Patches kept per level (uniform random sample beyond it).
        max_slices: Use at most this many normal slices, drawn at random (seeded) over all sources; None: all.
        seed: Seeds the slice draw and the patch sample.
        batch_size: Slices per forward pass.
        mask_rule: For sources with a mask: ``slices`` (only slices without mask voxels) or ``patches`` (every
            slice, patches more than one patch away from the mask).
        window: The memory's window rule, ``full`` (default) or ``preset`` (module docstring); scoring with the
            memory uses it.

    Returns:
        The memory as written (``source``/``sha256`` set).

    Raises:
        ConfigError: a bound below 1, an unknown ``mask_rule`` or ``window``.
        ManifestError: no normal slice with foreground in the inputs.

    Example:
        >>> build_reference(["normals/"], "ref.safetensors", model=m, preset="brain_mri")  # doctest: +SKIP
    """
    from aaclip_med.reference.memory import load_memory
    from aaclip_med.report.run_json import input_record

    if max_patches < 1 or (max_slices is not None and max_slices < 1) or batch_size < 1:
        msg = f"max_patches={max_patches}, max_slices={max_slices}, batch_size={batch_size}: each must be >= 1."
        raise ConfigError(msg)
    preset_obj = memory_preset(preset, window)
    paths: list[PathLike] = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)  # type: ignore[arg-type]
    sources = reference_sources(paths)
    if mask_rule not in MASK_RULES:
        msg = f"mask_rule={mask_rule!r} is not valid; use {' or '.join(MASK_RULES)}."
        raise ConfigError(msg)
    plans = [_normal_slices(src, preset_obj, mask_rule) for src in sources]
    chosen = _draw_slices([len(p[2]) for p in plans], max_slices, seed)
    gen = torch.Generator().manual_seed(seed)
    pool = Candidates(max_patches, gen)
    transform = slice_transform(preset_obj, model.input_size)
    records, n_slices = [], 0
    for v, (src, (volume, fg, todo, bounds, lesion)) in enumerate(zip(sources, plans, strict=True)):
        picked = [todo[i] for i in chosen[v]]
        fg_vol = volume.with_data(fg.astype(np.float32))
        n_before = pool.n_seen
        for start in range(0, len(picked), batch_size):
            ks = picked[start : start + batch_size]
            x = torch.stack([transform(volume.get_slice(k), bounds) for k in ks])
            seg, text = _encode(model, x, preset_obj)
            grid = model.grid(x)
            for b, k in enumerate(ks):
                les = None if lesion is None else lesion.get_slice(k) > 0
                keep = _normal_patches(fg_vol.get_slice(k) > 0, les, grid)
                pool.add([t[b][keep] for t in seg], text[b][keep], volume_id=v, slice_id=n_slices)
                n_slices += 1
        records.append({**input_record(src.image), "mask": None if src.mask is None else str(src.mask),
                        "n_slices": len(picked), "n_patches": pool.n_seen - n_before})  # fmt: skip
    if pool.n_seen == 0:
        msg = f"No normal slice with foreground in {', '.join(map(str, paths))}; check the inputs and --preset."
        raise ManifestError(msg)
    levels, group = pool.memory()
    w = preset_obj.window
    meta: dict[str, Any] = {
        "identity": identity(model.metadata()),
        "model": model.spec.name,
        "preset": preset_obj.name,
        "input_size": model.input_size,
        "precision": model.precision,
        "untrained_backbone": model.untrained_backbone,
        "window": {"mode": w.mode, "lower": w.lower, "upper": w.upper, "scope": w.scope},
        "window_rule": window,
        "patch_rule": f"adapted seg tokens of patches >= {PATCH_FOREGROUND:g} foreground, every level",
        "mask_rule": mask_rule,
        "sources": records,
        "n_slices": n_slices,
        "n_patches_collected": pool.n_seen,
        "n_patches": int(group.numel()),
        "subsample": {
            "method": "uniform random (streaming keys)",
            "bound": max_patches,
            "seed": seed,
            "max_slices": max_slices,
        },  # fmt: skip
        "calibration": calibrate(pool),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "aaclip_med_version": __version__,
    }
    save_memory(output, PatchMemory(tuple(levels), group, meta))
    logger.info("wrote %s: %d of %d normal patches from %d slices", output, group.numel(), pool.n_seen, n_slices)
    return load_memory(output)


def _draw_slices(counts: list[int], max_slices: int | None, seed: int) -> list[list[int]]:
    """Per source, the indices (into its normal slices) to use: all, or ``max_slices`` drawn over all sources."""
    if max_slices is None or max_slices >= sum(counts):
        return [list(range(c)) for c in counts]
    flat = [(v, i) for v, c in enumerate(counts) for i in range(c)]
    pick = torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed))[:max_slices].tolist()
    out: list[list[int]] = [[] for _ in counts]
    for j in sorted(pick):
        out[flat[j][0]].append(flat[j][1])
    return out
