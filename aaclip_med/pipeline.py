"""One study end to end: read → score → export (NIfTI, DICOM SEG, CSV, PNG, QA, provenance, HTML).

Everything is written into a hidden temporary sibling of the output folder and renamed into place at the end,
so an output folder exists only when complete: an error or Ctrl-C leaves nothing behind, and a batch run can
tell finished cases from partial ones. Outputs never go inside or over the input.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aaclip_med._files import check_outside_inputs
from aaclip_med._typing import PathLike
from aaclip_med.case_folder import MARKER, case_name, staged_output
from aaclip_med.config import RunConfig
from aaclip_med.errors import OutputError, UnsupportedFormatError
from aaclip_med.inference import VolumeResult, resolve_preset, score_volume
from aaclip_med.volume import Volume

if TYPE_CHECKING:
    from aaclip_med.model.aaclip import AACLIP

__all__ = ["RunOutputs", "default_output_dir", "load_model", "run_study", "staged_output"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutputs:
    """Where a run wrote its files, and the scored result."""

    out_dir: Path
    result: VolumeResult
    volume: Volume
    files: dict[str, Path]


def default_output_dir(input_path: PathLike) -> Path:
    """``reports/<input name>/`` relative to the working folder (DESIGN §0)."""
    return Path("reports") / case_name(input_path)


def _check_output(input_path: Path, out_dir: Path) -> None:
    check_outside_inputs(out_dir, [input_path])
    out = out_dir.resolve()
    ancestor = next(p for p in (out, *out.parents) if p.exists())
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        msg = (
            f"Output folder {out_dir} cannot be created: {ancestor} is not a writable folder. "
            "Choose a writable -o/--out folder."
        )
        raise OutputError(msg)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        msg = (
            f"Output {out_dir} exists and is not an aaclip-med output folder (no {MARKER}); refusing to replace "
            "it. Choose another -o/--out folder or remove it."
        )
        raise OutputError(msg)


def _check_names(config: RunConfig, model: AACLIP | None) -> None:
    """Fail on an unknown preset or model name before any slow reading or model building."""
    from aaclip_med.config import get_preset

    if config.preset is not None:
        get_preset(config.preset)
    if model is None:
        from aaclip_med.model.factory import get_spec

        get_spec(config.inference.model)


def load_model(config: RunConfig) -> AACLIP:
    """Build the model a run config names (``create_model`` with its inference fields)."""
    from aaclip_med.model.factory import create_model

    inf = config.inference
    return create_model(
        inf.model,
        backbone_weights=inf.backbone_weights,
        adapter_weights=inf.adapter_weights,
        device=inf.device,
        precision=inf.precision,
        image_size=inf.image_size,
        seed=inf.seed,
        trust_pickle=inf.trust_pickle,
    )


def run_study(
    input_path: PathLike,
    out_dir: PathLike | None = None,
    *,
    config: RunConfig | None = None,
    model: AACLIP | None = None,
    series: str | None = None,
    case_id: str | None = None,
    volume_index: int | None = None,
) -> RunOutputs:
    """Score one study and write the run folder (layout: reports/README.md).

    Args:
        input_path: Anything :func:`~aaclip_med.io.read_volume` reads.
        out_dir: Output folder; default ``reports/<input name>/``.
        config: Preset, model, inference and export settings; defaults when ``None``.
        model: An already built model (cohorts build it once); else built from ``config``.
        series: DICOM series selector (UID, number or description).
        case_id: Name used in sheets and the report; default the input's name.
        volume_index: Volume of a 4D NIfTI to score.

    Returns:
        The output folder, the result and the written files.

    Raises:
        AACLIPMedError: Bad input, model, weights or output folder; nothing is written then.

    Example:
        >>> out = run_study("datasets/samples/hcc048_ct", "reports/hcc048")  # doctest: +SKIP
    """
    from aaclip_med.io import read_volume

    cfg = config or RunConfig()
    src = Path(input_path)
    if not src.exists():
        msg = f"{src}: no such file or folder. Check the path."
        raise UnsupportedFormatError(msg)
    out = Path(out_dir) if out_dir is not None else default_output_dir(src)
    _check_output(src, out)
    _check_names(cfg, model)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    volume = read_volume(src, series=series, volume_index=volume_index)
    timings["read_s"] = time.perf_counter() - t0
    preset = resolve_preset(cfg.preset, volume)
    cfg = dataclasses.replace(cfg, preset=preset.name)
    if model is None:
        t0 = time.perf_counter()
        model = load_model(cfg)
        timings["model_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = score_volume(model, volume, preset, config=cfg.inference)
    timings["score_s"] = time.perf_counter() - t0
    with staged_output(out) as tmp:
        t0 = time.perf_counter()
        files = _export(tmp, volume, result, cfg, model, case_id or case_name(src), timings)
        timings["export_s"] = time.perf_counter() - t0
    logger.info("wrote %s (volume score %.4g, %d slices flagged)", out, result.score, int(result.flagged.sum()))
    return RunOutputs(out_dir=out, result=result, volume=volume, files={k: out / v for k, v in files.items()})


def _export(
    tmp: Path,
    volume: Volume,
    result: VolumeResult,
    cfg: RunConfig,
    model: AACLIP,
    case_id: str,
    timings: dict[str, float],
) -> dict[str, str]:
    from aaclip_med import report
    from aaclip_med.io import write_nifti

    exp = cfg.export
    files = {"heatmap": "heatmap.nii.gz", "mask": "mask.nii.gz"}
    write_nifti(result.heatmap, tmp / files["heatmap"], like=volume)
    write_nifti(result.mask, tmp / files["mask"], like=volume)
    if volume.meta.get("format") == "dicom":
        if exp.dicom_seg or exp.parametric_map or exp.fractional_seg:
            files.update(_dicom_outputs(tmp, volume, result, cfg, n_levels=len(model.layout.taps)))
    elif exp.parametric_map or exp.fractional_seg:
        logger.warning("input is not DICOM: no Parametric Map or FRACTIONAL SEG (they reference DICOM images)")
    positions = [
        report.slice_position_mm(volume.affine, volume.shape, result.slice_axis, k)[0]
        for k in range(volume.n_slices)
    ]
    rows = report.slice_rows(
        case_id,
        result.slice_scores,
        result.scored,
        result.threshold,
        positions_mm=positions,
        mask=result.mask,
        slice_axis=result.slice_axis,
    )
    files["slices"] = "slices.csv"
    report.write_sheet(rows, tmp / files["slices"], columns=list(report.SLICE_COLUMNS))
    overlays = []
    if exp.overlays:
        overlays = report.write_volume_overlays(volume, result, tmp / "overlays", n=exp.overlays)
    files["qa"] = "qa.json"
    report.write_json(result.qa, tmp / files["qa"])
    extra = {
        "case_id": case_id,
        "score": result.score,
        "threshold": result.threshold,
        "n_flagged": int(result.flagged.sum()),
        "untrained_backbone": result.untrained_backbone,
        "window": result.qa.get("window"),
        "score_region": result.qa.get("score_region"),
        "unscored_value": result.unscored_value,
        "reference": result.qa.get("reference"),  # normal-reference memory: path, sha256, fusion (or None)
    }
    if exp.include_phi and volume.phi:
        extra["patient"] = dict(volume.phi)
    prov = report.provenance(cfg, model.metadata(), [volume.source], timings, extra=extra)
    if exp.html:
        files["report"] = "report.html"
        report.write_case_html(
            tmp / files["report"],
            case_id=case_id,
            overlays=overlays,
            slice_scores=result.slice_scores,
            scored=result.scored,
            threshold=result.threshold,
            score=result.score,
            qa=result.qa,
            provenance=prov,
            untrained=result.untrained_backbone,
            preset=result.preset,
            flagged=result.flagged,
        )
    files["run"] = MARKER
    report.write_json(prov, tmp / MARKER)  # last: its presence marks a complete folder
    return files


def _dicom_outputs(
    tmp: Path, volume: Volume, result: VolumeResult, cfg: RunConfig, *, n_levels: int
) -> dict[str, str]:
    from aaclip_med._version import __version__
    from aaclip_med.dicom_export import write_dicom_seg, write_fractional_seg, write_parametric_map
    from aaclip_med.io import load_source_datasets

    sources = load_source_datasets(volume)
    out: dict[str, str] = {}
    if cfg.export.dicom_seg:
        out["seg"] = "seg.dcm"
        write_dicom_seg(
            result.mask,
            sources,
            tmp / out["seg"],
            algorithm_version=__version__,
            include_phi=cfg.export.include_phi,
        )
    if cfg.export.parametric_map:
        out["parametric_map"] = "heatmap_pm.dcm"
        write_parametric_map(
            result.heatmap, sources, tmp / out["parametric_map"], include_phi=cfg.export.include_phi
        )
    if cfg.export.fractional_seg:
        out["fractional_seg"] = "heatmap_seg.dcm"
        write_fractional_seg(
            result.heatmap,
            sources,
            tmp / out["fractional_seg"],
            n_levels=n_levels,
            algorithm_version=__version__,
            include_phi=cfg.export.include_phi,
        )
    return out
