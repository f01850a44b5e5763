"""Command-line plumbing: exit codes, the one-line error wrapper, the flags of ``run``/``batch`` and ``train``.

Kept apart from :mod:`aaclip_med.cli` (the commands); light imports only, so ``--help`` stays fast.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from aaclip_med._logging import configure_logging
from aaclip_med.errors import AACLIPMedError

if TYPE_CHECKING:
    from aaclip_med.config import RunConfig, TrainConfig

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USAGE = 2  # bad input, flag, path or weights: one `error:` line, nothing written
EXIT_CASES_FAILED = 3  # `batch` ran to the end but some cases failed: failures.csv says why


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``message`` as one red ``error:`` line on stderr and exit with ``code``.

    Args:
        message: What went wrong and how to fix it (one line).
        code: The exit code; :data:`EXIT_USAGE` (2) unless stated.

    Raises:
        typer.Exit: always, carrying ``code``.
    """
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv: debug).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.")]


def user_errors(func: F) -> F:
    """Turn library errors into one line + exit 2, and Ctrl-C into exit 130; add ``-v``/``-q`` to the command.

    ``-v``/``-q`` work before the command (``aaclip-med -q run X``) and after it (``aaclip-med run X -q``).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, verbose: int = 0, quiet: bool = False, **kwargs: Any) -> object:
        if verbose or quiet:
            configure_logging(-1 if quiet else verbose)
        try:
            return func(*args, **kwargs)
        except AACLIPMedError as err:
            fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
        except KeyboardInterrupt:
            fail("interrupted; no partial outputs were left behind", code=130)

    sig = inspect.signature(func, eval_str=True)
    options = (("verbose", 0, VerboseOpt), ("quiet", False, QuietOpt))
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
             for name, default, annotation in options]  # fmt: skip
    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), *extra])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**func.__annotations__, "verbose": VerboseOpt, "quiet": QuietOpt}
    return wrapper  # type: ignore[return-value]


# Flags `run` and `batch` share, and the RunConfig field each one sets; switches only ever turn a setting on.
_SCORING_KEYS = {
    "preset": "preset", "model": "inference.model", "adapter_weights": "inference.adapter_weights",
    "backbone_weights": "inference.backbone_weights", "threshold": "inference.threshold",
    "device": "inference.device", "precision": "inference.precision", "batch_size": "inference.batch_size",
    "image_size": "inference.image_size", "min_component_mm3": "inference.min_component_mm3",
    "progress": "inference.progress", "trust_pickle": "inference.trust_pickle",
    "parametric_map": "export.parametric_map", "fractional_seg": "export.fractional_seg",
    "include_phi": "export.include_phi", "keep_names": "export.keep_names", "base_dir": "export.base_dir",
    "no_seg": "export.dicom_seg", "no_report": "export.html", "overlays": "export.overlays",
    "score_region": "inference.score_region", "backend": "inference.backend", "organ": "inference.organ",
    "organ_label": "inference.organ_label", "mask_outside_organ": "inference.mask_outside_organ",
    "reference": "inference.reference", "fusion": "inference.fusion", "fusion_weight": "inference.fusion_weight",
    "memory_blur": "inference.memory_blur",
}  # fmt: skip
_SWITCHES = frozenset(
    {"trust_pickle", "parametric_map", "fractional_seg", "include_phi", "keep_names", "mask_outside_organ"}
)
_OFF_SWITCHES = frozenset({"no_seg", "no_report"})  # --no-X: given turns X off, absent keeps the config's value


def scoring_flags(params: Mapping[str, Any]) -> dict[str, Any]:
    """The scoring flags among a command's parameters (``locals()`` of `run`/`batch`; names as the table's)."""
    return {name: value for name, value in params.items() if name in _SCORING_KEYS and name != "progress"}


def scoring_config(config: Path | None, **flags: Any) -> RunConfig:
    """The RunConfig of `run` and `batch`: ``--config`` (or defaults) with the scoring flags given laid over it."""
    import dataclasses

    from aaclip_med.config import RunConfig, load_run_config

    cfg = load_run_config(config) if config is not None else RunConfig()
    sections: dict[str, Any] = {"inference": cfg.inference, "export": cfg.export}
    top: dict[str, Any] = {}
    for flag, value in flags.items():
        if flag in _SWITCHES:
            value = True if value else None
        elif flag in _OFF_SWITCHES:
            value = False if value else None
        elif flag == "base_dir" and value is not None:
            value = str(value)
        if value is None:  # not given: the config's value stays
            continue
        section, _, name = _SCORING_KEYS[flag].rpartition(".")
        if section:
            sections[section] = dataclasses.replace(sections[section], **{name: value})
        else:
            top[name] = value
    return dataclasses.replace(cfg, **top, **sections)


# Flags of `train`, each named as the TrainConfig field it sets (image_lr_milestones is set in the TOML only).
_TRAIN_FLAGS = (
    "model", "backbone_weights", "image_size", "text_epochs", "image_epochs", "text_batch_size",
    "image_batch_size", "text_lr", "image_lr", "seed", "device", "precision", "preset", "vv_axis",
    "threshold_rule", "stage1_levels", "stage1_cls_loss",
)  # fmt: skip


def train_config(config: Path | None, params: Mapping[str, Any]) -> TrainConfig:
    """The TrainConfig of `train`: ``--config`` (or the defaults) with the flags given laid over it.

    Args:
        config: A training TOML (:func:`~aaclip_med.config.load_train_config`), or None.
        params: The command's parameters (``locals()``); a flag left at None (a switch left off) keeps the value.

    Raises:
        ConfigError: a bad TOML or a bad value, named with the rule and the fix.
    """
    import dataclasses

    from aaclip_med.config import TrainConfig, load_train_config

    cfg = load_train_config(config) if config is not None else TrainConfig()
    given = {name: params[name] for name in _TRAIN_FLAGS if params.get(name) is not None}
    if not given.get("stage1_cls_loss", True):  # a switch only turns its setting on
        del given["stage1_cls_loss"]
    return dataclasses.replace(cfg, **given)


# Options shared by `run` and `batch` (one definition each, flags map one-to-one onto RunConfig fields).
InputArg = Annotated[
    Path, typer.Argument(metavar="INPUT", help="DICOM (file, folder, DICOMDIR, zip), NIfTI, NRRD, MHA.")
]
ConfigOpt = Annotated[Path | None, typer.Option(help="Run config TOML (e.g. pipelines/liver_ct.toml).")]
ModelOpt = Annotated[str | None, typer.Option(help="Model name (see `aaclip-med weights list`).")]
AdapterOpt = Annotated[str | None, typer.Option(help="Adapters: .safetensors or a reference checkpoint dir.")]
BackboneOpt = Annotated[str | None, typer.Option(help="'openai', a CLIP weights file, or 'random' (untrained).")]
PresetOpt = Annotated[
    str | None, typer.Option(help="brain_mri, liver_ct, ct, mri, reference (default: by modality).")
]
ThresholdOpt = Annotated[float | None, typer.Option(help="Mask threshold, raw map units (default: checkpoint).")]
DeviceOpt = Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N.")]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        help="auto (CUDA fp16; AMX CPU bf16, or guarded int8 where a one-block probe finds it > 1.1x faster; "
        "other CPUs int8 while its accuracy guard on the first slices holds, else fp32), fp32, bf16, fp16, "
        "int8 (CPU, no guard). fp32 skips the guard."
    ),
]
BatchOpt = Annotated[int | None, typer.Option(min=1, help="Slices per forward pass.")]
SizeOpt = Annotated[int | None, typer.Option(min=32, help="Model input size override (e.g. 224 for speed).")]
ComponentOpt = Annotated[float | None, typer.Option(min=0, help="Drop mask components smaller than this (mm³).")]
ParametricMapOpt = Annotated[bool, typer.Option("--parametric-map", help="Also a DICOM Parametric Map.")]
FractionalSegOpt = Annotated[
    bool, typer.Option("--fractional-seg", help="Also a FRACTIONAL DICOM SEG of the heatmap (probability).")
]
PickleOpt = Annotated[bool, typer.Option("--trust-pickle", help="Allow full-pickle .pth weights (can run code).")]
PhiOpt = Annotated[
    bool, typer.Option("--include-phi", help="Keep patient name/ID/birth date and input names in outputs.")
]
KeepNamesOpt = Annotated[
    bool, typer.Option("--keep-names", help="Record input paths as given; name cases after their files.")
]
BaseDirOpt = Annotated[
    Path | None, typer.Option(help="Record input paths relative to this folder (default: as hashes).")
]
NoSegOpt = Annotated[bool, typer.Option("--no-seg", help="No DICOM SEG of the mask (seg.dcm).")]
NoReportOpt = Annotated[bool, typer.Option("--no-report", help="No report.html.")]
OverlaysOpt = Annotated[
    int | None, typer.Option(min=0, help="PNG overlays of the top slices (0: none; default 6).")
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace an earlier output in OUT (files you added are kept).")
]
NoProgressOpt = Annotated[bool, typer.Option("--no-progress", help="Hide progress bars.")]
BackendOpt = Annotated[str | None, typer.Option(help="Vision engine: auto, eager, cast, compile, openvino.")]
OrganOpt = Annotated[
    str | None, typer.Option(help="Structure in a folder/zip of organ masks (TotalSegmentator or IRCADb 'liver').")
]
OrganLabelOpt = Annotated[int | None, typer.Option(min=0, help="Organ = this value of a label map (default > 0).")]
ReferenceOpt = Annotated[str | None, typer.Option(help="Normal-reference memory (`aaclip-med reference build`).")]
FusionOpt = Annotated[str | None, typer.Option(help="With --reference: fused (default), memory or text map.")]
FusionWeightOpt = Annotated[float | None, typer.Option(min=0, max=1, help="Memory weight in the fused map (0.5).")]
MemoryBlurOpt = Annotated[float | None, typer.Option(min=0, help="Memory-map blur sigma in patches (0: none).")]
MaskInputOpt = Annotated[
    bool, typer.Option("--mask-outside-organ", help="Blank the input outside the organ (BMAD liver input).")
]
RegionOpt = Annotated[
    str | None, typer.Option(help="Slice score: max inside the foreground (default) or the whole image (ref.).")
]


def check_paths(*inputs: Path | None) -> None:
    """Refuse missing inputs before the slow imports (a typo costs < 1 s, not 10)."""
    from aaclip_med._files import check_input_exists

    for path in inputs:
        if path is not None:
            check_input_exists(path)


def heavy_imports(what: str) -> None:
    """Say what the next seconds of silence are: importing torch/open_clip/MONAI (several seconds cold)."""
    if not {"torch", "monai"} <= set(sys.modules):
        logging.getLogger("aaclip_med").info("loading %s (torch, MONAI) ...", what)
