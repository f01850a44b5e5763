"""Frozen configuration dataclasses (:class:`RunConfig`, :class:`TrainConfig`) and their TOML loading.

The per-modality table (window, foreground rule, prompts, blur) lives in :mod:`aaclip_med.presets`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from aaclip_med.errors import ConfigError, did_you_mean
from aaclip_med.presets import MODALITY_PRESETS, get_preset

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "ExportConfig",
    "InferenceConfig",
    "RunConfig",
    "TrainConfig",
    "VV_AXES",
    "load_run_config",
    "load_train_config",
    "parse_threshold_rule",
]

_Config = TypeVar("_Config", bound="DataclassInstance")  # RunConfig and its tables, built by _build

ScoreRegion = Literal["foreground", "image"]
Fusion = Literal["fused", "memory", "text"]  # how a normal-reference memory map meets the text map

# Accepted ``precision`` values (InferenceConfig and aaclip_med.model.precision.resolve_precision): "auto" resolves
# per device (on CPUs without AMX to a guarded int8, aaclip_med.model.guard); bf16/fp16 are autocast; int8 is
# dynamic int8 quantisation of the vision linears, CPU only.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16", "int8")
# Accepted ``backend`` values (engines of the vision path, aaclip_med.model.backends): "auto" picks by measurement.
BACKENDS: tuple[str, ...] = ("auto", "eager", "cast", "compile", "openvino")
# Stage-1 V-V attention axes (TrainConfig.vv_axis, aaclip_med.model.surgery): "tokens" as intended, "batch" as the
# reference code (parity only).
VV_AXES: tuple[str, ...] = ("tokens", "batch")
STAGE1_LEVELS: tuple[str, ...] = ("last", "all")  # "last": the reference's loss (only level 24 survives its loop)
_SIZES = (32, 2048)  # model input sizes accepted for scoring and training (inclusive)
_SIZE_RULE = f"image_size={{}} is out of range; use {_SIZES[0]}..{_SIZES[1]} (or leave it unset)"


def _size_ok(size: int) -> bool:
    return _SIZES[0] <= size <= _SIZES[1]



@dataclass(frozen=True, slots=True)
class InferenceConfig:
    """How volumes are scored."""

    model: str = "aaclip-vitl14-336"  # the paper's model; needs backbone weights
    backbone_weights: str | None = None  # open_clip tag ("openai"), a file, or "random" (untrained on purpose)
    adapter_weights: str | None = None  # our .safetensors or a reference checkpoint folder
    image_size: int | None = None  # None: the model's own input size (518 for the paper's model)
    device: str = "auto"  # cuda when present, else cpu
    precision: str = "auto"  # fp16 on CUDA, bf16 on AMX CPUs, other CPUs int8 while its guard holds (PRECISIONS)
    backend: str = "auto"  # engine of the vision path (BACKENDS): auto = measured fastest, eager = plain PyTorch
    batch_size: int = 8  # slices per forward pass; memory stays flat in volume length
    threshold: float | None = None  # None: the checkpoint's calibrated threshold (raw map units, DESIGN 0)
    volume_score: Literal["max", "topk_mean"] = "max"  # max of slice scores, as the reference image score
    # where a slice's map is scored: "foreground" (slice score = max inside the body/brain, heat outside it is
    # "not scored"), or "image" (the reference's whole-image max, air included; for paper reproduction)
    score_region: ScoreRegion = "foreground"
    # organ masks (--organ-mask, manifest column organ_mask): when given, scoring happens inside the organ only
    organ: str | None = None  # structure of a folder/zip of masks: TotalSegmentator "liver", IRCADb MASKS_DICOM
    organ_label: int | None = None  # keep this value of a multi-label map (None: every voxel > 0)
    mask_outside_organ: bool = False  # BMAD liver input: the image outside the organ is blanked before the model
    topk: int = 3  # slices averaged by "topk_mean"; less sensitive to one noisy slice than "max"
    min_component_mm3: float = 0.0  # 3D components smaller than this are removed from the mask (0: keep all)
    seed: int = 0  # seeds a random backbone so that demo/test runs are reproducible
    trust_pickle: bool = False  # full-pickle .pth weights can run code when loaded: only for files you trust
    progress: bool = True
    # normal-reference mode (aaclip_med.reference): a memory from `aaclip-med reference build`, how its map is
    # fused with the text map (z-scores vs the reference's normals, w*memory + (1-w)*text), and its blur in patches
    reference: str | None = None
    fusion: Fusion = "fused"
    fusion_weight: float = 0.5  # memory weight; 0.5 = the equal average of MVFA-AD / APRIL-GAN few-shot
    memory_blur: float = 0.0  # Gaussian sigma in patches (0: none, the sharp nearest-neighbour map; benchmarks/)

    def __post_init__(self) -> None:
        """Refuse values that would only fail (or silently misbehave) after the slow model build."""
        if self.threshold is not None and not math.isfinite(self.threshold):
            bad = f"threshold={self.threshold!r} is not a finite number; pass a value in raw AA-CLIP map units"
        elif self.batch_size < 1 or self.topk < 1:
            bad = f"batch_size={self.batch_size}, topk={self.topk}: both must be >= 1"
        elif self.image_size is not None and not _size_ok(self.image_size):
            bad = _SIZE_RULE.format(self.image_size)
        elif not math.isfinite(self.min_component_mm3) or self.min_component_mm3 < 0:
            bad = f"min_component_mm3={self.min_component_mm3!r} must be a finite number >= 0"
        elif self.precision not in PRECISIONS:
            bad = f"precision={self.precision!r} is not valid; use {', '.join(PRECISIONS)}"
        elif self.backend not in BACKENDS:
            bad = f"backend={self.backend!r} is not valid; use {', '.join(BACKENDS)}"
        elif self.volume_score not in ("max", "topk_mean"):
            bad = f"volume_score={self.volume_score!r} is not valid; use max or topk_mean"
        elif self.organ_label is not None and self.organ_label < 0:
            bad = f"organ_label={self.organ_label} must be >= 0 (a label value of the organ mask)"
        elif self.score_region not in ("foreground", "image"):
            bad = f"score_region={self.score_region!r} is not valid; use foreground or image"
        elif self.fusion not in ("fused", "memory", "text"):
            bad = f"fusion={self.fusion!r} is not valid; use fused, memory or text"
        elif not (math.isfinite(self.fusion_weight) and 0 <= self.fusion_weight <= 1):
            bad = f"fusion_weight={self.fusion_weight!r} must be in [0, 1] (the memory's weight in the fused map)"
        elif not (math.isfinite(self.memory_blur) and self.memory_blur >= 0):
            bad = f"memory_blur={self.memory_blur!r} must be >= 0 (Gaussian sigma in patches; 0: no blur)"
        else:
            return
        msg = f"Invalid inference setting: {bad}."
        raise ConfigError(msg)


@dataclass(frozen=True, slots=True)
class ExportConfig:
    """Which files a run writes beside the NIfTI heatmap and mask."""

    dicom_seg: bool = True  # BINARY DICOM SEG of the mask, for DICOM inputs
    parametric_map: bool = False  # the float heatmap as a DICOM Parametric Map, for DICOM inputs
    fractional_seg: bool = False  # the heatmap as a FRACTIONAL (probability) DICOM SEG, for DICOM inputs
    overlays: int = 6  # PNG overlays of the top-scoring slices (0: none)
    html: bool = True
    include_phi: bool = False  # never copy patient name/ID/birth date (nor input names) into outputs unless asked
    keep_names: bool = False  # record input paths as given and name cases after their files (aaclip_med.privacy)
    base_dir: str | None = None  # record input paths relative to this folder (aaclip_med.privacy)


@dataclass(frozen=True, slots=True)
class RunConfig:
    """A full run: preset, model and export settings, as written to ``run.json``."""

    preset: str | None = None  # None: from the DICOM Modality tag or the NIfTI intensity guess
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain JSON-serialisable data."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """How ``aaclip-med train`` (:func:`aaclip_med.train`) trains both AA-CLIP stages (defaults: spec section 5.3).

    The fields map one-to-one onto the flags of ``aaclip-med train`` (``--text-epochs`` sets ``text_epochs``) and
    onto the keys of a training TOML (:func:`load_train_config`); the checkpoint metadata records them
    (``training``). Override one field with ``dataclasses.replace(cfg, seed=1)``.

    Example:
        >>> TrainConfig(model="aaclip-tiny", backbone_weights="random", image_epochs=2).image_epochs
        2
    """

    model: str = "aaclip-vitl14-336"  # registry name of the backbone configuration
    backbone_weights: str | None = None  # open_clip tag, weight file, or "random" (None: the model's default)
    image_size: int | None = None  # training input size (None: the model's)
    text_epochs: int = 5  # stage 1 (text adapter); 0 skips it: anchors from the untrained text adapter
    image_epochs: int = 20  # stage 2 (image adapter)
    text_batch_size: int = 16  # stage-1 batch; the V-V features mix the batch when vv_axis="batch"
    image_batch_size: int = 2
    text_lr: float = 1e-5  # Adam learning rates
    image_lr: float = 5e-4
    image_lr_milestones: tuple[int, ...] = (16000, 32000)  # stage-2 iterations at which the learning rate halves
    seed: int = 0  # Python, NumPy, torch, shuffling, augmentation and (random backbones) the model
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    precision: str = "auto"  # auto, fp32, bf16 or fp16 (autocast); int8 is inference only
    preset: str | None = None  # for cases without one (None: each volume's modality; "reference" for 2D images)
    vv_axis: str = "tokens"  # stage-1 V-V attention axis (VV_AXES): "tokens" (intended) or "batch" (parity)
    threshold_rule: str = "f1"  # f1 (pixel F1-max), youden or fpr:X, chosen on the validation split
    stage1_levels: str = "last"  # STAGE1_LEVELS: "last" (reference) or "all" levels in the stage-1 loss
    stage1_cls_loss: bool = False  # image-level CE in stage 1 (the paper's Eq. 4; off in the reference code)

    def __post_init__(self) -> None:
        """Refuse values that would only fail (or silently misbehave) after the data and the model are loaded."""
        milestones = self.image_lr_milestones
        lrs = {"text_lr": self.text_lr, "image_lr": self.image_lr}
        bad_lr = next((f"{k}={v!r}" for k, v in lrs.items() if not (math.isfinite(v) and v >= 0)), None)
        if not self.model:
            bad = "model='' is empty; pass a registry name (see `aaclip-med weights list`)"
        elif self.image_size is not None and not _size_ok(self.image_size):
            bad = _SIZE_RULE.format(self.image_size)
        elif self.text_epochs < 0 or self.image_epochs < 0:
            bad = f"text_epochs={self.text_epochs}, image_epochs={self.image_epochs}: both must be >= 0"
        elif self.text_batch_size < 1 or self.image_batch_size < 1:
            sizes = f"text_batch_size={self.text_batch_size}, image_batch_size={self.image_batch_size}"
            bad = f"{sizes}: both must be >= 1"
        elif bad_lr is not None:
            bad = f"{bad_lr} must be a finite number >= 0 (an Adam learning rate, e.g. 1e-5)"
        elif any(m < 1 for m in milestones) or list(milestones) != sorted(set(milestones)):
            bad = f"image_lr_milestones={milestones!r} must be increasing iteration counts >= 1 ([16000, 32000])"
        elif self.precision not in PRECISIONS or self.precision == "int8":
            bad = (f"precision={self.precision!r} is not valid for training; use auto, fp32, bf16 or fp16 (int8 "
                   "is inference only: quantised layers have no gradient)")
        elif self.preset is not None and self.preset not in MODALITY_PRESETS:
            bad = (f"preset={self.preset!r} is not known; {did_you_mean(self.preset, MODALITY_PRESETS)}"
                   f"use one of {', '.join(MODALITY_PRESETS)} or leave it unset")
        elif self.vv_axis not in VV_AXES:
            bad = f"vv_axis={self.vv_axis!r} is not valid; use 'tokens' (intended) or 'batch' (reference parity)"
        elif self.stage1_levels not in STAGE1_LEVELS:
            bad = f"stage1_levels={self.stage1_levels!r} is not valid; use 'last' (reference) or 'all'"
        else:
            parse_threshold_rule(self.threshold_rule)
            return
        msg = f"Invalid training setting: {bad}."
        raise ConfigError(msg)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain JSON-serialisable data (milestones as a list)."""
        return {**dataclasses.asdict(self), "image_lr_milestones": list(self.image_lr_milestones)}


def parse_threshold_rule(rule: str) -> tuple[str, float | None]:
    """Parse a threshold rule, ``f1``, ``youden`` or ``fpr:X``, into ``(kind, target)``.

    Raises:
        ConfigError: any other value, or an FPR outside (0, 1).

    Example:
        >>> parse_threshold_rule("fpr:0.05")
        ('fpr', 0.05)
    """
    text = rule.strip().lower()
    if text in ("f1", "youden"):
        return text, None
    if text.startswith("fpr:"):
        try:
            target = float(text[4:])
        except ValueError:
            target = math.nan
        if 0.0 < target < 1.0:
            return "fpr", target
    msg = f"Threshold rule '{rule}' is not known; use f1, youden or fpr:X with 0 < X < 1 (e.g. fpr:0.05)."
    raise ConfigError(msg)


def _build(cls: type[_Config], data: Mapping[str, Any], where: str) -> _Config:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        msg = (
            f"Unknown key(s) {unknown} in {f'[{where}]' if where else 'the top level'}; "
            f"{did_you_mean(unknown[0], names)}"
            f"known: {', '.join(names)}. Fix the TOML file."
        )
        raise ConfigError(msg)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        target = names[key].type
        if isinstance(value, dict):
            sub = {"inference": InferenceConfig, "export": ExportConfig}.get(key)
            if sub is None:
                msg = f"[{where}.{key}] must be a value, not a table ({target}). Fix the TOML file."
                raise ConfigError(msg)
            kwargs[key] = _build(sub, value, f"{where}.{key}" if where else key)
        else:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    try:
        return cls(**kwargs)
    except TypeError as err:
        msg = f"Invalid {f'[{where}] table' if where else 'top level'}: {err}. Fix the TOML file."
        raise ConfigError(msg) from err


def _build_from_file(cls: type[_Config], data: Mapping[str, Any], where: str, path: Path) -> _Config:
    """:func:`_build`, with the file named in front of any error."""
    try:
        return _build(cls, data, where)
    except ConfigError as err:
        msg = f"{path}: {err}"
        raise ConfigError(msg) from err


def _read_toml(path: Path, example: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        msg = f"{path}: config not found. Check the path."
        raise ConfigError(msg) from err
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as err:
        msg = f"{path}: not a readable TOML file ({err}). Fix it; see {example} for an example."
        raise ConfigError(msg) from err
    data.pop("description", None)
    return data


def load_run_config(path: str | Path) -> RunConfig:
    """Read a run configuration TOML (``preset``, ``[inference]``, ``[export]``) into a :class:`RunConfig`.

    Raises:
        ConfigError: the file is missing, not valid TOML, or has unknown keys or bad values.

    Example:
        >>> cfg = load_run_config("pipelines/brain_mri.toml")  # doctest: +SKIP
    """
    path = Path(path)
    data = _read_toml(path, "pipelines/liver_ct.toml")
    cfg = _build_from_file(RunConfig, data, "", path)
    if cfg.preset is not None:
        get_preset(cfg.preset)
    return cfg


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a training TOML into a TrainConfig.

    The settings are the :class:`TrainConfig` fields, either at the top level (``description`` allowed) or in a
    ``[train]`` table, as in ``pipelines/train_demo.toml``; with a ``[train]`` table the file's other keys belong
    to its owner (a recipe's data paths) and are not read here.

    Args:
        path: The TOML file.

    Raises:
        ConfigError: the file is missing, not valid TOML, or has unknown keys or bad values.

    Example:
        >>> cfg = load_train_config("pipelines/train_demo.toml")  # doctest: +SKIP
    """
    path = Path(path)
    data = _read_toml(path, "pipelines/train_demo.toml")
    table = "train" if isinstance(data.get("train"), dict) else ""
    if table:
        data = data[table]
    return _build_from_file(TrainConfig, data, table, path)
