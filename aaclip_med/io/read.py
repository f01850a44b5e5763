"""``read_volume``: route an input to its reader by suffix, then finish the volume the same way for every format.

DICOM (file, folder, zip, DICOMDIR) goes to :mod:`~aaclip_med.io.dicom_series` and
:mod:`~aaclip_med.io.dicom_decode`; NIfTI and the SimpleITK formats to :mod:`~aaclip_med.io.image_file`. The
suffixes come from :mod:`aaclip_med._files`, the one table that folder discovery uses as well. Every reader
returns the stored voxel grid and its exact affine; nothing is resampled and inputs are never modified.
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from aaclip_med._files import DICOM_SUFFIXES, NIFTI_SUFFIXES, VOLUME_SUFFIXES, volume_suffix
from aaclip_med._typing import Array, PathLike
from aaclip_med.errors import ConfigError, DicomSeriesError, UnsupportedFormatError
from aaclip_med.io.dicom_decode import decode_series
from aaclip_med.io.dicom_series import ZipArchives, discover, group_series, iter_datasets, select_series
from aaclip_med.io.image_file import read_nifti, read_sitk
from aaclip_med.volume import Volume, replace_nan

__all__ = ["describe_volume", "guess_modality", "load_source_datasets", "read_dicom_folder", "read_volume"]

logger = logging.getLogger(__name__)

_CT_AIR_FRACTION = 0.10  # CT has air around the body: at least 10 % of voxels below -500 HU ...
_CT_AIR_MIN = -900.0  # ... and a minimum at air/padding level; MRI intensities are (almost) never negative


def guess_modality(data: Array) -> str:
    """CT when >= 10 % of voxels are below -500 and the minimum is <= -900 (HU air), else MR.

    Example:
        >>> guess_modality(np.array([-1000.0, -1000.0, 40.0])), guess_modality(np.array([0.0, 80.0, 300.0]))
        ('CT', 'MR')
    """
    finite = data[np.isfinite(data)]
    if finite.size and float(finite.min()) <= _CT_AIR_MIN and float(np.mean(finite < -500)) >= _CT_AIR_FRACTION:
        return "CT"
    return "MR"


def _read_dicom(path: Path, series: str | int | None, folder: str | None = None) -> tuple[Volume, list[str]]:
    with ZipArchives() as zips:  # a zip is opened once for discovery and decoding
        headers, kind = discover(path, folder, zips)
        found, skipped = group_series(headers)
        if kind == "file" and skipped:
            msg = f"'{path}' is {skipped[0].split(': ', 1)[1]}, not an image; pass an image series (CT/MR)."
            raise UnsupportedFormatError(msg)
        info = select_series(found, skipped, series, str(path))
        decoded = decode_series(info, str(path), zips)
    decoded.meta["dicom_input"] = kind
    decoded.meta["n_files"] = len(info.headers)
    modality = info.modality or None
    vol = Volume(
        decoded.data, decoded.affine, modality, str(path), decoded.meta, decoded.source_files, decoded.phi
    )
    return vol, decoded.warnings


def _check_path(path: Path) -> None:
    if not path.exists():
        msg = f"Input '{path}' does not exist; check the path (DICOM file/folder/zip, .nii/.nii.gz, .nrrd, .mha)."
        raise UnsupportedFormatError(msg)
    if path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
        msg = f"Input folder '{path}' is empty; point at a folder that holds DICOM files."
        raise DicomSeriesError(msg)


def read_volume(
    path: PathLike,
    series: str | int | None = None,
    modality: str | None = None,
    volume_index: int | None = None,
) -> Volume:
    """Read a DICOM file/folder/zip/DICOMDIR, NIfTI, NRRD, MHA or MHD image onto its source voxel grid.

    NaN/inf voxels are replaced by the volume minimum, with a warning (the data never holds NaN).

    Args:
        path: The input. Folders are searched recursively, any file names; zips are read in memory.
        series: DICOM only: SeriesInstanceUID, SeriesNumber or SeriesDescription when there are several series.
        modality: Overrides the modality ("CT"/"MR"); NIfTI/NRRD have none and it is guessed otherwise.
        volume_index: Which volume of a 4D image to read (required for 4D).

    Returns:
        The :class:`Volume`; ``meta["warnings"]`` lists the oddities found (also raised as warnings).

    Raises:
        UnsupportedFormatError: missing, corrupt or unsupported file.
        DicomSeriesError: no image series, several series and no ``series``, or an unknown ``series``.
        GeometryError: 4D without ``volume_index`` or an index out of range.
        ConfigError: ``series`` for a non-DICOM image, or ``volume_index`` for DICOM.

    Example:
        >>> vol = read_volume("study/")  # doctest: +SKIP
        >>> vol.shape, vol.orientation  # doctest: +SKIP
        ((512, 512, 16), 'LPS')
    """
    path = Path(path)
    _check_path(path)
    suffix = volume_suffix(path)
    if suffix in VOLUME_SUFFIXES:
        if series is not None:
            msg = (
                f"series={series!r} only selects among DICOM series, but '{path}' is a single {suffix} image; "
                "drop --series (use --volume-index for a 4D image)."
            )
            raise ConfigError(msg)
        reader = read_nifti if suffix in NIFTI_SUFFIXES else read_sitk
        raw, affine, warns = reader(path, volume_index)
        fmt = "nifti" if suffix in NIFTI_SUFFIXES else "sitk"
        vol = Volume(raw, affine, None, str(path), {"format": fmt, "source_dtype": str(raw.dtype)})
    elif suffix == ".zip" and not zipfile.is_zipfile(path):
        msg = f"'{path}' is not a readable zip archive (no zip directory: truncated or not a zip); re-create it."
        raise UnsupportedFormatError(msg)
    elif path.is_dir() or suffix in ("", *DICOM_SUFFIXES) or zipfile.is_zipfile(path) or _is_dicom_magic(path):
        if volume_index not in (None, 0):
            msg = (
                f"volume_index={volume_index} only applies to 4D NIfTI/NRRD/MHA images, but '{path}' is DICOM; "
                "drop --volume-index (use --series to choose a DICOM series)."
            )
            raise ConfigError(msg)
        vol, warns = _read_dicom(path, series)
    else:
        msg = (
            f"Unsupported file type '{suffix}' for '{path}'; use DICOM (file, folder, zip, DICOMDIR), "
            ".nii/.nii.gz, .nrrd/.nhdr, .mha or .mhd."
        )
        raise UnsupportedFormatError(msg)
    return _finalise(vol, modality, warns)


def read_dicom_folder(path: PathLike, folder: str) -> Volume:
    """The DICOM series stored in sub-folders named ``folder`` of a DICOM folder or zip.

    One structure of a per-structure mask archive, e.g. ``liver`` of 3D-IRCADb's ``MASKS_DICOM.zip``
    (``MASKS_DICOM/liver/image_N``).

    Args:
        path: The DICOM folder or zip.
        folder: The sub-folder name (at any depth).

    Returns:
        The :class:`Volume` of that series.

    Raises:
        DicomSeriesError: no DICOM object in such a folder, or several series there.

    Example:
        >>> liver = read_dicom_folder("3Dircadb1.1/MASKS_DICOM.zip", "liver")  # doctest: +SKIP
    """
    path = Path(path)
    _check_path(path)
    vol, warns = _read_dicom(path, None, folder)
    return _finalise(vol, None, warns)


def _is_dicom_magic(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(132)[128:] == b"DICM"


def _finalise(vol: Volume, modality: str | None, warns: list[str]) -> Volume:
    data, nan_warning = replace_nan(vol.data, vol.source)
    warns = [*warns, *([nan_warning] if nan_warning else [])]
    meta: dict[str, Any] = dict(vol.meta)
    if modality is not None:
        meta["modality_guessed"] = False
        final_modality: str | None = modality.upper()
    elif vol.modality:
        final_modality = vol.modality
    else:
        final_modality = guess_modality(data)
        meta["modality_guessed"] = True
        logger.info("%s has no modality tag; guessed %s from its intensities", vol.source, final_modality)
    meta["warnings"] = warns
    for text in warns:
        warnings.warn(text, stacklevel=3)
    return Volume(data, vol.affine, final_modality, vol.source, meta, vol.source_files, vol.phi)


def describe_volume(vol: Volume) -> dict[str, Any]:
    """Summary for ``aaclip-med info``: geometry, modality, series, value range and read warnings (no PHI).

    Args:
        vol: A volume from :func:`read_volume`.

    Returns:
        A JSON-ready dict: path, format, shape, spacing_mm, orientation, modality, series identifiers,
        value_range, slice_axis, n_slices and warnings.

    Example:
        >>> describe_volume(read_volume("study/"))["spacing_mm"]  # doctest: +SKIP
        [0.7031, 0.7031, 2.5]
    """
    meta = vol.meta
    return {
        "path": vol.source,
        "format": meta.get("format"),
        "shape": list(vol.shape),
        "spacing_mm": [round(s, 4) for s in vol.spacing],
        "orientation": vol.orientation,
        "modality": vol.modality,
        "modality_guessed": bool(meta.get("modality_guessed", False)),
        "series_uid": meta.get("series_uid"),
        "series_number": meta.get("series_number"),
        "series_description": meta.get("series_description"),
        "value_range": [float(vol.data.min()), float(vol.data.max())],
        "slice_axis": vol.slice_axis,
        "n_slices": vol.n_slices,
        "warnings": vol.warnings,
    }


def load_source_datasets(vol: Volume) -> list[Dataset]:
    """The full pydicom datasets of a DICOM volume, in k order (one per file), e.g. for DICOM SEG export.

    Args:
        vol: A volume read from DICOM.

    Returns:
        One dataset (with pixel data) per distinct source file.

    Raises:
        UnsupportedFormatError: the volume was not read from DICOM.

    Example:
        >>> datasets = load_source_datasets(read_volume("study/"))  # doctest: +SKIP
    """
    if not vol.source_files:
        msg = f"'{vol.source}' was not read from DICOM; DICOM SEG export needs a DICOM input."
        raise UnsupportedFormatError(msg)
    return list(iter_datasets(vol.source_files))
