"""One study end to end: read → score → export (NIfTI, DICOM SEG, CSV, PNG, QA, provenance, HTML).

Everything is written into a hidden temporary sibling of the output folder and renamed into place at the end,
so an output folder exists only when complete: an error or Ctrl-C leaves nothing behind, and a batch run can
tell finished cases from partial ones. Outputs never go inside or over the input.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aaclip_med._files import (
    MARKER,
    case_name,
    check_input_exists,
    check_output_folder,
    default_output_dir,
    staged_output,
    written_files,
)
from aaclip_med._typing import PathLike
from aaclip_med.checks import result_warnings, volume_warnings
from aaclip_med.config import ExportConfig, RunConfig
from aaclip_med.errors import ConfigError, GeometryError, OutputError, UnsupportedFormatError
from aaclip_med.inference import VolumeResult, resolve_preset, score_volume
from aaclip_med.organ import OrganMask, read_organ_mask
from aaclip_med.privacy import Naming
from aaclip_med.volume import Volume

if TYPE_CHECKING:
    from collections.abc import Callable

    from aaclip_med.model.aaclip import AACLIP

__all__ = ["MARKER", "RunOutputs", "default_output_dir", "load_model", "naming", "run_study", "staged_output"]

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class RunOutputs:
    """Where a run wrote its files, and the scored result."""

    out_dir: Path
    result: VolumeResult
    volume: Volume
    files: dict[str, Path]


def naming(export: ExportConfig) -> Naming:
    """The naming rule of a run's export settings (:mod:`aaclip_med.privacy`)."""
    return Naming(keep_names=export.include_phi or export.keep_names, base_dir=export.base_dir)


def _dicom_blocker(volume: Volume, cfg: RunConfig) -> str | None:
    """Why the DICOM outputs asked for cannot be made (checked on the headers, before scoring), or ``None``."""
    exp = cfg.export
    if volume.meta.get("format") != "dicom":
        if exp.parametric_map or exp.fractional_seg:
            return "input is not DICOM: no Parametric Map or FRACTIONAL SEG (they reference DICOM images)"
        return None
    if not (exp.dicom_seg or exp.parametric_map or exp.fractional_seg):
        return None
    from aaclip_med.dicom_export import export_blocker

    why = export_blocker(volume.source_files)
    if why is None:
        return None
    return f"no DICOM SEG/Parametric Map written (the NIfTI mask and heatmap hold the result): {why}"


def _check_names(config: RunConfig, model: AACLIP | None) -> None:
    """Fail on an unknown preset or model name before any slow reading or model building."""
    from aaclip_med.presets import get_preset

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
        backend=inf.backend,
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
    overwrite: bool = False,
    organ_mask: PathLike | None = None,
) -> RunOutputs:
    """Score one study and write the run folder (layout: reports/README.md).

    Args:
        input_path: Anything :func:`~aaclip_med.io.read_volume` reads.
        out_dir: Output folder; default ``reports/<input name>/``.
        config: Preset, model, inference and export settings; defaults when ``None``.
        model: An already built model (cohorts build it once); else built from ``config``.
        series: DICOM series selector (UID, number or description).
        case_id: Name used in sheets and the report; default a hash of the input path, or the input's name when
            ``config.export`` keeps names (:mod:`aaclip_med.privacy`).
        volume_index: Volume of a 4D NIfTI to score.
        overwrite: Replace an earlier aaclip-med output in ``out_dir`` (only the files aaclip-med wrote there);
            without it such a folder is refused.
        organ_mask: Organ mask on the image grid (:func:`~aaclip_med.organ.read_organ_mask`; ``config.inference``
            ``organ`` and ``organ_label`` select inside it): scoring happens inside the organ, the mask is
            written as ``organ_mask.nii.gz`` and recorded in ``run.json``.

    Returns:
        The output folder, the result and the written files.

    DICOM outputs that cannot be made (e.g. a series without FrameOfReferenceUID) are checked before scoring;
    everything else is still written and the reason is a warning in ``qa.json`` and the log.

    Raises:
        AACLIPMedError: Bad input, model, weights or output folder; nothing is written then.

    Example:
        >>> out = run_study("datasets/samples/hcc048_ct", "reports/hcc048")  # doctest: +SKIP
    """
    from aaclip_med.io import read_volume

    cfg = config or RunConfig()
    src = Path(input_path)
    check_input_exists(src)
    out = Path(out_dir) if out_dir is not None else default_output_dir(src)
    organ_src = Path(organ_mask) if organ_mask is not None else None
    check_output_folder(out, [src] if organ_src is None else [src, organ_src], overwrite=overwrite)
    _check_names(cfg, model)
    if cfg.inference.mask_outside_organ and organ_src is None:
        msg = f"{src}: mask_outside_organ needs an organ mask; pass --organ-mask (or drop --mask-outside-organ)."
        raise ConfigError(msg)
    names = naming(cfg.export)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    logger.info("reading %s", src)
    volume = read_volume(src, series=series, volume_index=volume_index)
    organ = None
    if organ_src is not None:
        organ = read_organ_mask(organ_src, volume, organ=cfg.inference.organ, label=cfg.inference.organ_label)
    timings["read_s"] = time.perf_counter() - t0
    preset = resolve_preset(cfg.preset, volume)
    cfg = dataclasses.replace(cfg, preset=preset.name)
    blocker = _dicom_blocker(volume, cfg)
    warns = [*volume_warnings(volume), *([blocker] if blocker else [])]
    for text in warns:
        logger.warning("%s", text)
    if model is None:
        t0 = time.perf_counter()
        model = load_model(cfg)
        timings["model_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = score_volume(model, volume, preset, config=cfg.inference, organ=None if organ is None else organ.mask)
    timings["score_s"] = time.perf_counter() - t0
    late = result_warnings(int(result.scored.sum()), volume.n_slices, result.preset)
    for text in late:
        logger.warning("%s", text)
    result.qa["warnings"] = [*result.qa.get("warnings", []), *warns, *late]
    logger.info("writing %s", out)
    with staged_output(out) as tmp:
        t0 = time.perf_counter()
        the_id = case_id or names.case_id(names.path(src), case_name(src))
        files = _export(tmp, volume, result, cfg, model, the_id, timings, dicom=blocker is None, names=names,
                        organ=organ)
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
    *,
    dicom: bool,
    names: Naming,
    organ: OrganMask | None = None,
) -> dict[str, str]:
    from aaclip_med import report
    from aaclip_med.io import write_nifti

    exp = cfg.export
    files = {"heatmap": "heatmap.nii.gz", "mask": "mask.nii.gz"}
    write_nifti(result.heatmap, tmp / files["heatmap"], like=volume, compact=True)
    write_nifti(result.mask, tmp / files["mask"], like=volume)
    if organ is not None:
        files["organ_mask"] = "organ_mask.nii.gz"  # the mask as scored: eval's organ region when labels lack one
        write_nifti(organ.mask, tmp / files["organ_mask"], like=volume)
    if dicom and volume.meta.get("format") == "dicom":
        files.update(_dicom_outputs(tmp, volume, result, cfg, n_levels=len(model.layout.taps)))
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
    result.qa["warnings"] = [names.scrub(w, [volume.source]) for w in result.qa.get("warnings", [])]
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
        "organ_mask": None if organ is None else organ.record(volume.spacing) | {"path": names.path(organ.source)},
        "reference": result.qa.get("reference"),  # normal-reference memory: path, sha256, fusion (or None)
    }
    if exp.include_phi and volume.phi:
        extra["patient"] = dict(volume.phi)
    inputs = [volume.source] if organ is None else [volume.source, organ.source]
    prov = report.provenance(cfg, model.metadata(), inputs, timings, extra=extra, name_input=names.path)
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
            viewer=report.viewer_data(volume, result),
        )
    files["run"] = MARKER
    prov["outputs"] = [*written_files(tmp), MARKER]  # what --overwrite may replace later
    report.write_json(prov, tmp / MARKER)  # last: its presence marks a complete folder
    return files


def _dicom_outputs(
    tmp: Path, volume: Volume, result: VolumeResult, cfg: RunConfig, *, n_levels: int
) -> dict[str, str]:
    from aaclip_med._version import __version__
    from aaclip_med.dicom_export import write_dicom_seg, write_fractional_seg, write_parametric_map
    from aaclip_med.io import load_source_datasets

    sources = load_source_datasets(volume)
    phi = cfg.export.include_phi
    writers: dict[str, tuple[str, bool, Callable[[Path], object]]] = {
        "seg": ("seg.dcm", cfg.export.dicom_seg, lambda path: write_dicom_seg(
            result.mask, sources, path, algorithm_version=__version__, include_phi=phi)),
        "parametric_map": ("heatmap_pm.dcm", cfg.export.parametric_map, lambda path: write_parametric_map(
            result.heatmap, sources, path, include_phi=phi)),
        "fractional_seg": ("heatmap_seg.dcm", cfg.export.fractional_seg, lambda path: write_fractional_seg(
            result.heatmap, sources, path, n_levels=n_levels, algorithm_version=__version__, include_phi=phi)),
    }  # fmt: skip
    out: dict[str, str] = {}
    for key, (name, wanted, write) in writers.items():
        if not wanted:
            continue
        try:
            write(tmp / name)
        except (OutputError, UnsupportedFormatError, GeometryError) as err:  # keep the other outputs
            text = f"no {name} written: {str(err).splitlines()[0]}"
            logger.warning("%s", text)
            result.qa.setdefault("warnings", []).append(text.replace(str(tmp / name), name))
            continue
        out[key] = name
    return out
