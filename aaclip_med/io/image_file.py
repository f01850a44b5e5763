"""Read volumes (DICOM, NIfTI, NRRD/MHA/MHD) onto their source grid and write NIfTI maps back on it.

``read_volume`` never resamples: the returned :class:`~aaclip_med.volume.Volume` keeps the stored voxel grid and
its exact affine, so ``write_nifti(mask, path, like=volume)`` overlays the input voxel for voxel in any viewer.
Inputs are never modified.
"""

from __future__ import annotations

import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.spatialimages import SpatialImage
from pydicom.dataset import Dataset

from aaclip_med._files import atomic_path
from aaclip_med._typing import Affine, Array, PathLike
from aaclip_med.dicom import discover, group_series, iter_datasets, list_series, select_series
from aaclip_med.dicom_decode import LPS_TO_RAS, decode_series
from aaclip_med.errors import ConfigError, DicomSeriesError, GeometryError, OutputError, UnsupportedFormatError
from aaclip_med.volume import Volume, replace_nan

__all__ = [
    "describe_volume",
    "list_series",
    "load_source_datasets",
    "read_dicom_folder",
    "read_volume",
    "write_nifti",
]

logger = logging.getLogger(__name__)

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
_DICOM_SUFFIXES = ("", ".dcm", ".dicom", ".ima", ".zip")
_CT_AIR_FRACTION = 0.10  # CT has air around the body: at least 10 % of voxels below -500 HU ...
_CT_AIR_MIN = -900.0  # ... and a minimum at air/padding level; MRI intensities are (almost) never negative


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def guess_modality(data: Array) -> str:
    """CT when >= 10 % of voxels are below -500 and the minimum is <= -900 (HU air), else MR."""
    finite = data[np.isfinite(data)]
    if finite.size and float(finite.min()) <= _CT_AIR_MIN and float(np.mean(finite < -500)) >= _CT_AIR_FRACTION:
        return "CT"
    return "MR"


def _check_memory(path: Path, shape: tuple[int, ...]) -> None:
    """Refuse a header whose image could never fit in memory (a corrupt dim field), before allocating it."""
    need = 4 * int(np.prod([max(int(n), 1) for n in shape[:4]], dtype=np.float64))  # read as float32
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    if total and need > total:
        dims = "x".join(str(int(n)) for n in shape)
        msg = (
            f"'{path}' declares a {dims} image ({need / 2**30:,.0f} GiB as float32), more than this machine's "
            f"{total / 2**30:,.0f} GiB of memory; check its header (dim field) or crop the image."
        )
        raise UnsupportedFormatError(msg)


def _nifti_geometry(path: Path, img: SpatialImage) -> tuple[Affine, list[str]]:
    """The affine, with zero voxel sizes replaced by 1 mm, and warnings about missing geometry."""
    affine = np.asarray(img.affine, dtype=np.float64)
    warns: list[str] = []
    header: Any = img.header
    if "sform_code" not in header:  # NIfTI only
        return affine, warns
    codes = (int(header["sform_code"]), int(header["qform_code"]))
    zero = [axis for axis in range(3) if not np.linalg.norm(affine[:3, axis]) > 0]
    raw = _raw_pixdim(path)  # nibabel silently turns pixdim 0 into 1 on load; the file's own value counts
    if codes == (0, 0) and raw is not None:
        zero += [axis for axis in range(3) if not raw[axis] > 0 and axis not in zero]
    for axis in zero:
        norm = np.linalg.norm(affine[:3, axis])
        affine[:3, axis] = affine[:3, axis] / norm if norm > 0 else np.eye(3)[axis]
    if zero:
        warns.append(
            f"{path}: voxel size is 0 along axis {', '.join(str(a) for a in sorted(zero))} (pixdim); "
            "1 mm assumed, "
            "so sizes in mm (spacing, --min-component-mm3) may be wrong. Fix the header."
        )
    if codes == (0, 0):
        warns.append(
            f"{path}: no orientation (sform and qform codes are 0); axes assumed to run along the scanner "
            "axes, so "
            "left/right and the display orientation may be wrong. Fix the header."
        )
    return affine, warns


def _raw_pixdim(path: Path) -> Array | None:
    """pixdim[1:4] as stored in a NIfTI header (before nibabel's fix-ups), or None when unreadable."""
    try:
        with nib.openers.ImageOpener(str(path)) as fh:
            return np.asarray(nib.Nifti1Header.from_fileobj(fh, check=False)["pixdim"][1:4], dtype=np.float64)
    except Exception:  # noqa: BLE001 - NIfTI-2 or odd files: fall back to the loaded affine
        return None


def _nifti_data(path: Path, volume_index: int | None) -> tuple[Array, Affine, list[str]]:
    try:
        nib_log = logging.getLogger("nibabel.global")  # its "pixdim should be non-zero" note: our warning says it
        level, nib_log.level = nib_log.level, logging.ERROR
        try:
            img = nib.load(str(path))
        finally:
            nib_log.setLevel(level)
        if not isinstance(img, SpatialImage):
            msg = f"'{path}' is not a NIfTI image"
            raise TypeError(msg)
        _check_memory(path, img.shape)
        data = np.asanyarray(img.dataobj)
    except UnsupportedFormatError:
        raise
    except MemoryError as err:
        dims = "x".join(str(n) for n in getattr(img, "shape", ()))
        msg = f"'{path}' ({dims} voxels) does not fit in the free memory; close other programs or crop the image."
        raise UnsupportedFormatError(msg) from err
    except Exception as err:  # nibabel raises ImageFileError, EOFError, zlib/gzip errors on corrupt files
        msg = f"'{path}' is not a readable NIfTI file ({type(err).__name__}: {err}); re-export or re-download it."
        raise UnsupportedFormatError(msg.replace("\n", " ")) from err
    affine, warns = _nifti_geometry(path, img)
    return _select_volume(data, path, volume_index), affine, warns


def _select_volume(data: Array, path: Path, volume_index: int | None) -> Array:
    data = data.reshape(data.shape[:3] + tuple(n for n in data.shape[3:] if n != 1)) if data.ndim > 3 else data
    if data.ndim == 2:
        return data[:, :, None]
    if data.ndim == 3:
        if volume_index not in (None, 0):
            msg = f"'{path}' is 3D; volume_index={volume_index} only applies to 4D images (drop --volume-index)."
            raise GeometryError(msg)
        return data
    if data.ndim == 4:
        n = data.shape[3]
        if volume_index is None:
            msg = f"'{path}' is 4D with {n} volumes; pass volume_index=0..{n - 1} (CLI --volume-index)."
            raise GeometryError(msg)
        if not -n <= volume_index < n:
            msg = f"volume_index={volume_index} is out of range for '{path}' with {n} volumes; use 0..{n - 1}."
            raise GeometryError(msg)
        return data[..., volume_index]
    msg = f"'{path}' has {data.ndim} dimensions {data.shape}; only 2D, 3D and 4D (with volume_index) are read."
    raise GeometryError(msg)


def _sitk_data(path: Path, volume_index: int | None) -> tuple[Array, Affine, list[str]]:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        msg = f"'{path}' could not be read by SimpleITK ({str(err).strip().splitlines()[-1]}); check the file."
        raise UnsupportedFormatError(msg) from err
    if img.GetNumberOfComponentsPerPixel() != 1:
        msg = f"'{path}' has {img.GetNumberOfComponentsPerPixel()} components per voxel; pass a scalar image."
        raise UnsupportedFormatError(msg)
    dim = img.GetDimension()
    data = sitk.GetArrayFromImage(img).transpose(tuple(range(dim))[::-1])  # (z,y,x) -> (x,y,z) like nibabel
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    lps = np.eye(4)
    n = min(dim, 3)
    lps[:n, :n] = direction[:n, :n] * np.asarray(img.GetSpacing()[:n])
    lps[:n, 3] = img.GetOrigin()[:n]
    return _select_volume(data, path, volume_index), LPS_TO_RAS @ lps, []


def _read_dicom(path: Path, series: str | int | None, folder: str | None = None) -> tuple[Volume, list[str]]:
    headers, kind = discover(path, folder)
    found, skipped = group_series(headers)
    if kind == "file" and skipped:
        msg = f"'{path}' is {skipped[0].split(': ', 1)[1]}, not an image; pass an image series (CT/MR)."
        raise UnsupportedFormatError(msg)
    info = select_series(found, skipped, series, str(path))
    decoded = decode_series(info, str(path))
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
    suffix = _suffix(path)
    if suffix in _NIFTI_SUFFIXES or suffix in _SITK_SUFFIXES:
        if series is not None:
            msg = (
                f"series={series!r} only selects among DICOM series, but '{path}' is a single {suffix} image; "
                "drop --series (use --volume-index for a 4D image)."
            )
            raise ConfigError(msg)
        reader = _nifti_data if suffix in _NIFTI_SUFFIXES else _sitk_data
        raw, affine, warns = reader(path, volume_index)
        fmt = "nifti" if suffix in _NIFTI_SUFFIXES else "sitk"
        vol = Volume(raw, affine, None, str(path), {"format": fmt, "source_dtype": str(raw.dtype)})
    elif suffix == ".zip" and not zipfile.is_zipfile(path):
        msg = f"'{path}' is not a readable zip archive (no zip directory: truncated or not a zip); re-create it."
        raise UnsupportedFormatError(msg)
    elif path.is_dir() or suffix in _DICOM_SUFFIXES or zipfile.is_zipfile(path) or _is_dicom_magic(path):
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
            ".nii/.nii.gz, .nrrd, .mha or .mhd."
        )
        raise UnsupportedFormatError(msg)
    return _finalise(vol, modality, warns)


def read_dicom_folder(path: PathLike, folder: str) -> Volume:
    """The DICOM series stored in sub-folders named ``folder`` of a DICOM folder or zip.

    One structure of a per-structure mask archive, e.g. ``liver`` of 3D-IRCADb's ``MASKS_DICOM.zip``
    (``MASKS_DICOM/liver/image_N``).

    Raises:
        DicomSeriesError: no DICOM object in such a folder, or several series there.
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


def write_nifti(array: Array, path: PathLike, like: Volume, *, compact: bool = False) -> Path:
    """Write a map or mask on ``like``'s exact grid (qform and sform set to its affine, code 1), atomically.

    Bool and integer arrays are written as uint8 masks, floating arrays as float32 maps, or with ``compact`` as
    int16 with a ``scl_slope`` (no intercept, so 0 stays exactly 0): ``value = stored * slope`` where
    ``slope = max|array| / 32767``, an error of at most ``slope / 2`` (1/65534 of the largest magnitude) per voxel,
    for half the bytes and a much better gzip ratio. Every NIfTI reader applies the slope.

    Args:
        array: Array of ``like.shape``.
        path: Output ``.nii`` or ``.nii.gz`` path; its folder is created.
        like: The volume the array belongs to.
        compact: Store a floating map as scaled int16 instead of float32.

    Returns:
        The written path.

    Raises:
        GeometryError: ``array`` does not have ``like.shape``.
        OutputError: the path is not writable or not a NIfTI name.

    Example:
        >>> write_nifti(mask, "out/mask.nii.gz", like=vol)  # doctest: +SKIP
    """
    path = Path(path)
    arr = np.asarray(array)
    if arr.shape != like.shape:
        msg = f"Cannot write {path}: array shape {arr.shape} differs from the grid {like.shape} of {like.source}."
        raise GeometryError(msg)
    if _suffix(path) not in _NIFTI_SUFFIXES:
        msg = f"Output '{path}' must end with .nii or .nii.gz."
        raise OutputError(msg)
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.uint8)
    else:
        arr, _ = replace_nan(arr, str(path))
    slope = float(np.abs(arr).max()) / 32767.0 if compact and arr.dtype != np.uint8 else 0.0
    if slope > 0:
        arr = np.clip(np.round(arr / np.float32(slope)), -32767, 32767).astype(np.int16)
    img = nib.Nifti1Image(arr, like.affine)
    if slope > 0:
        img.header.set_slope_inter(slope, 0.0)
    img.set_qform(like.affine, code=1)
    img.set_sform(like.affine, code=1)
    img.header.set_xyzt_units("mm")
    try:
        with atomic_path(path) as tmp:
            nib.save(img, tmp)
    except OSError as err:
        msg = f"Cannot write '{path}' ({err.strerror}); choose a writable output folder."
        raise OutputError(msg) from err
    return path


def describe_volume(vol: Volume) -> dict[str, Any]:
    """Summary for ``aaclip-med info``: geometry, modality, series, value range and read warnings (no PHI)."""
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

    Raises:
        UnsupportedFormatError: the volume was not read from DICOM.
    """
    if not vol.source_files:
        msg = f"'{vol.source}' was not read from DICOM; DICOM SEG export needs a DICOM input."
        raise UnsupportedFormatError(msg)
    return list(iter_datasets(vol.source_files))
