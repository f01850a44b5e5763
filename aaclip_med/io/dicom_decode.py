"""Decode a DICOM image series into a float32 volume with its RAS affine.

Slices (files or frames of an enhanced multi-frame object) are sorted by ImagePositionPatient projected on the
slice normal (never by file name or InstanceNumber), mapped to modality units (CT: HU) by pydicom's
``apply_modality_lut`` (RescaleSlope/Intercept or a Modality LUT Sequence; per frame in enhanced objects) and
stacked nibabel-style: ``data[i, j, k]`` with i the column index (along the IOP row direction), j the row index
and k along the normal. The affine columns are ``row_dir * col_spacing``, ``col_dir * row_spacing`` and
``normal * slice_spacing``, with the origin at the first slice's IPP, converted from LPS to RAS.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut

from aaclip_med._typing import Affine, Array
from aaclip_med.errors import DicomSeriesError, UnsupportedFormatError
from aaclip_med.io.dicom_series import SeriesInfo, ZipArchives, archives_for, read_dataset

__all__ = ["DecodedSeries", "decode_series"]

logger = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_PLUGINS = {  # transfer syntax UID prefix -> pip packages whose pydicom plugin decodes it
    "1.2.840.10008.1.2.4.5": "pylibjpeg pylibjpeg-libjpeg (or pillow)",
    "1.2.840.10008.1.2.4.7": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.8": "pylibjpeg pylibjpeg-libjpeg (or pyjpegls)",
    "1.2.840.10008.1.2.4.9": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.20": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",
}


@dataclass
class _Frame:
    ref: str
    pixels: Array  # 2D (rows, cols), rescaled float32
    ipp: Array
    iop: Array
    pixel_spacing: tuple[float, float]  # (between rows, between columns)


@dataclass
class DecodedSeries:
    """A decoded series: data (I, J, K), RAS affine, per-k file refs, meta, PHI and warnings."""

    data: Array
    affine: Affine
    source_files: tuple[str, ...]
    meta: dict[str, Any]
    phi: dict[str, str]
    warnings: list[str] = field(default_factory=list)


def _group_items(ds: Dataset, frame: int, sequence: str) -> list[Dataset]:
    """The items of a functional group macro for one frame: the per-frame one first, then the shared one."""
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        groups.append(per_frame[frame])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    return [items[0] for group in groups if (items := group.get(sequence))]


def _group_value(ds: Dataset, frame: int, sequence: str, attr: str) -> Any:  # noqa: ANN401 - a DICOM value
    """Attribute from the per-frame functional group, falling back to the shared one (enhanced objects)."""
    return next((item[attr].value for item in _group_items(ds, frame, sequence) if attr in item), ds.get(attr))


def _modality_lut(raw: Array, ds: Dataset, frame: int, ref: str) -> Array:
    """Stored values to modality units (CT: HU) with pydicom's ``apply_modality_lut``, as float32.

    The Modality LUT module of an enhanced object is the frame's Pixel Value Transformation item (per-frame,
    else shared); other objects carry it at the top level (RescaleSlope/Intercept or a Modality LUT Sequence).
    A broken rescale (a slope of 0 or empty, or only one of the pair) takes slope 1 and intercept 0 for the bad
    part, so a missing value neither blanks the image nor stops the read.
    """
    module = next(iter(_group_items(ds, frame, "PixelValueTransformationSequence")), ds)
    slope, intercept = module.get("RescaleSlope"), module.get("RescaleIntercept")
    rescale = "RescaleSlope" in module or "RescaleIntercept" in module
    if rescale and not module.get("ModalityLUTSequence") and not (slope and intercept is not None):
        module = Dataset()
        module.RescaleSlope, module.RescaleIntercept = slope or 1.0, intercept or 0.0
    try:
        return np.asarray(apply_modality_lut(raw, module), dtype=np.float32)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as err:
        msg = f"'{ref}' has an unusable Modality LUT ({type(err).__name__}: {err}); re-export the file."
        raise UnsupportedFormatError(msg.replace("\n", " ")) from err


def _pixels(ds: Dataset, ref: str) -> Array:
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        msg = f"'{ref}' has no PixelData (SOP class {ds.get('SOPClassUID', '?')}); pass an image series."
        raise UnsupportedFormatError(msg)
    syntax = ds.file_meta.get("TransferSyntaxUID", "")
    try:
        arr = np.asarray(ds.pixel_array)
    except (NotImplementedError, RuntimeError, ImportError) as err:
        plugin = next((p for prefix, p in _PLUGINS.items() if str(syntax).startswith(prefix)), None)
        hint = f"install {plugin}" if plugin else "convert it to an uncompressed transfer syntax (e.g. dcmdjpeg)"
        name = getattr(syntax, "name", syntax)
        msg = f"'{ref}' uses transfer syntax {name} which no installed pydicom plugin decodes; {hint}. ({err})"
        raise UnsupportedFormatError(msg.replace("\n", " ")) from err
    except (ValueError, EOFError, OSError, KeyError, AttributeError) as err:
        msg = f"'{ref}' has truncated or inconsistent pixel data ({err}); re-export or re-download the file."
        raise UnsupportedFormatError(msg.replace("\n", " ")) from err
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        arr = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # colour -> luminance
    return arr


def _frames(ds: Dataset, ref: str, warns: list[str]) -> list[_Frame]:
    raw = _pixels(ds, ref)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    raw = raw.reshape((n, *raw.shape[-2:]))
    enhanced = "PerFrameFunctionalGroupsSequence" in ds
    frames = []
    for f in range(n):
        ipp = _group_value(ds, f, "PlanePositionSequence", "ImagePositionPatient")
        iop = _group_value(ds, f, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _group_value(ds, f, "PixelMeasuresSequence", "PixelSpacing") or ds.get("ImagerPixelSpacing")
        if ipp is None or iop is None:
            if n > 1 and not enhanced:
                msg = f"'{ref}' is multi-frame without per-frame positions; convert it to a series or to NIfTI."
                raise DicomSeriesError(msg)
            warns.append(f"{ref}: no ImagePositionPatient/ImageOrientationPatient; identity geometry assumed")
            ipp, iop = ipp or [0.0, 0.0, 0.0], iop or [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        if spacing is None:
            warns.append(f"{ref}: no PixelSpacing; 1 mm assumed")
            spacing = [1.0, 1.0]
        pixels = _modality_lut(raw[f], ds, f, ref)
        frames.append(
            _Frame(
                ref,
                pixels,
                np.asarray(ipp, float),
                np.asarray(iop, float),
                (float(spacing[0]), float(spacing[1])),
            )
        )
    return frames


def _sorted_positions(
    frames: list[_Frame], normal: Array, source: str, warns: list[str]
) -> tuple[list[_Frame], Array]:
    """Sort by position along the normal, drop duplicated positions and warn about gaps/unequal spacing."""
    pos = np.array([f.ipp @ normal for f in frames])
    order = np.argsort(pos, kind="stable")
    frames, pos = [frames[i] for i in order], pos[order]
    if len(pos) < 2:
        return frames, pos
    keep = np.concatenate([[True], np.diff(pos) > 1e-3])
    if not keep.all():
        dups = sorted({frames[i].ref for i in np.flatnonzero(~keep)})
        warns.append(
            f"{source}: {int((~keep).sum())} slices share a position with another and were dropped: {dups[:3]}"
        )
        frames, pos = [f for f, k in zip(frames, keep, strict=True) if k], pos[keep]
    if len(pos) < 2:
        return frames, pos
    diffs = np.diff(pos)
    med = float(np.median(diffs))
    gaps = np.flatnonzero(diffs > 1.5 * med)
    if gaps.size:
        missing = int(sum(round(diffs[g] / med) - 1 for g in gaps))
        warns.append(
            f"{source}: about {missing} missing slices (gaps > 1.5x the median spacing {med:.3g} mm at "
            f"{[round(float(pos[g]), 2) for g in gaps][:5]} mm); the volume treats spacing as uniform"
        )
    elif np.ptp(diffs) > max(0.01 * med, 1e-3):
        warns.append(
            f"{source}: unequal slice spacing {float(diffs.min()):.4g}..{float(diffs.max()):.4g} mm; median used"
        )
    return frames, pos


def _slice_spacing(ds: Dataset, pos: Array) -> float:
    if len(pos) > 1:
        return float(np.median(np.diff(pos)))
    for attr in ("SpacingBetweenSlices", "SliceThickness"):
        value = ds.get(attr)
        if value:
            return abs(float(value))
    return 1.0


def _geometry(
    frames: list[_Frame], ds: Dataset, source: str, warns: list[str]
) -> tuple[list[_Frame], Array, Affine]:
    iop = frames[0].iop
    if any(not np.allclose(f.iop, iop, atol=1e-4) for f in frames):
        msg = (
            f"'{source}': slices have different ImageOrientationPatient (e.g. a localizer); pick one orientation."
        )
        raise DicomSeriesError(msg)
    if any(f.pixels.shape != frames[0].pixels.shape for f in frames):
        msg = f"'{source}': slices have different Rows/Columns; select a series with one image size."
        raise DicomSeriesError(msg)
    row = iop[:3] / np.linalg.norm(iop[:3])
    col = iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row, col)
    frames, pos = _sorted_positions(frames, normal, source, warns)
    row_spacing, col_spacing = frames[0].pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = row * col_spacing
    lps[:3, 1] = col * row_spacing
    lps[:3, 2] = normal * _slice_spacing(ds, pos)
    lps[:3, 3] = frames[0].ipp
    return frames, pos, LPS_TO_RAS @ lps


def _text(ds: Dataset, attr: str) -> str:
    value = ds.get(attr)
    return "" if value is None else str(value)


def _meta(ds: Dataset, info: SeriesInfo) -> dict[str, Any]:
    sop = ds.get("SOPClassUID")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    return {
        "format": "dicom",
        "series_uid": info.uid,
        "series_number": info.number,
        "series_description": info.description,
        "study_uid": _text(ds, "StudyInstanceUID"),
        "sop_class": getattr(sop, "name", str(sop or "")),
        "transfer_syntax": getattr(syntax, "name", str(syntax or "")),
        "manufacturer": _text(ds, "Manufacturer"),
        "body_part": _text(ds, "BodyPartExamined"),
        "image_type": list(ds.get("ImageType", []) or []),
        "slice_thickness": float(ds.SliceThickness) if ds.get("SliceThickness") else None,
        "rescale_type": _text(ds, "RescaleType"),
    }


def decode_series(info: SeriesInfo, source: str, archives: ZipArchives | None = None) -> DecodedSeries:
    """Read the pixel data of a series and build the volume on its source grid.

    ``archives``: the open archives of the read in progress (the one discovery used); ``None`` opens its own.

    Raises:
        UnsupportedFormatError: missing, truncated or undecodable pixel data (names the plugin to install).
        DicomSeriesError: slices that cannot form one grid (mixed orientation or size).
    """
    warns: list[str] = []
    with archives_for(archives) as zips:
        first = read_dataset(info.headers[0].ref, archives=zips)
        frames = _frames(first, info.headers[0].ref, warns)
        for header in info.headers[1:]:
            frames.extend(_frames(read_dataset(header.ref, archives=zips), header.ref, warns))
    frames, pos, affine = _geometry(frames, first, source, warns)
    data = np.stack([f.pixels.T for f in frames], axis=-1)
    meta = _meta(first, info)
    meta["slice_positions_mm"] = [round(float(p), 4) for p in pos]
    phi = {k: _text(first, k) for k in ("PatientName", "PatientID", "PatientBirthDate") if k in first}
    logger.info("read DICOM series %s: %s slices of %s", info.uid, data.shape[2], data.shape[:2])
    return DecodedSeries(data, affine, tuple(f.ref for f in frames), meta, phi, warns)
