"""Single-file images: NIfTI (read and write, with nibabel) and NRRD/NHDR, MHA/MHD (read, with SimpleITK).

The readers return the stored array (a 4D image reduced to one volume by ``volume_index``) and its exact RAS
affine; :func:`write_nifti` writes a map or mask back onto a volume's grid. Nothing is resampled, and a header
whose image could not fit in memory is refused before anything is allocated.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.spatialimages import SpatialImage

from aaclip_med._files import NIFTI_SUFFIXES, atomic_path, volume_suffix
from aaclip_med._typing import Affine, Array, PathLike
from aaclip_med.errors import GeometryError, OutputError, UnsupportedFormatError
from aaclip_med.io.dicom_decode import LPS_TO_RAS
from aaclip_med.volume import Volume, replace_nan

__all__ = ["read_nifti", "read_sitk", "write_nifti"]

logger = logging.getLogger(__name__)

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
            header = nib.Nifti1Header.from_fileobj(fh, check=False)
        return np.asarray(header["pixdim"][1:4], dtype=np.float64)
    except Exception:  # noqa: BLE001 - NIfTI-2 or odd files: fall back to the loaded affine
        return None


def _unreadable(path: Path, err: Exception) -> UnsupportedFormatError:
    msg = f"'{path}' is not a readable NIfTI file ({type(err).__name__}: {err}); re-export or re-download it."
    return UnsupportedFormatError(msg.replace("\n", " "))


def _load_nifti(path: Path) -> SpatialImage:
    """``nib.load`` with nibabel's "pixdim should be non-zero" note silenced (our warning says it)."""
    nib_log = logging.getLogger("nibabel.global")
    level, nib_log.level = nib_log.level, logging.ERROR
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises ImageFileError, EOFError, zlib/gzip errors on corrupt files
        raise _unreadable(path, err) from err
    finally:
        nib_log.setLevel(level)
    if not isinstance(img, SpatialImage):
        raise _unreadable(path, TypeError(f"{type(img).__name__} is not a NIfTI image"))
    return img


def read_nifti(path: Path, volume_index: int | None) -> tuple[Array, Affine, list[str]]:
    """The stored array, its affine and geometry warnings of a NIfTI file (nibabel).

    Args:
        path: A ``.nii`` or ``.nii.gz`` file.
        volume_index: Which volume of a 4D image (``None`` for 2D/3D).

    Returns:
        The array (I, J, K) in its stored dtype, the RAS affine (zero voxel sizes replaced by 1 mm) and warnings
        about missing geometry.

    Raises:
        UnsupportedFormatError: a corrupt file, or a header declaring more voxels than memory holds.
        GeometryError: a 4D image without ``volume_index``, or an index out of range.
    """
    img = _load_nifti(path)
    _check_memory(path, img.shape)
    try:
        data = np.asanyarray(img.dataobj)
    except MemoryError as err:
        dims = "x".join(str(n) for n in img.shape)
        msg = f"'{path}' ({dims} voxels) does not fit in the free memory; close other programs or crop the image."
        raise UnsupportedFormatError(msg) from err
    except Exception as err:  # nibabel raises EOFError, zlib/gzip errors on truncated data
        raise _unreadable(path, err) from err
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


def read_sitk(path: Path, volume_index: int | None) -> tuple[Array, Affine, list[str]]:
    """The stored array and RAS affine of an NRRD/NHDR, MHA or MHD image (SimpleITK, LPS converted to RAS).

    Args:
        path: The image file (a detached header's data file is found by SimpleITK).
        volume_index: Which volume of a 4D image (``None`` for 2D/3D).

    Returns:
        The array (I, J, K) in its stored dtype, the RAS affine and an empty warning list.

    Raises:
        UnsupportedFormatError: an unreadable file or more than one component per voxel.
        GeometryError: a 4D image without ``volume_index``, or an index out of range.
    """
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        msg = f"'{path}' could not be read by SimpleITK ({str(err).strip().splitlines()[-1]}); check the file."
        raise UnsupportedFormatError(msg) from err
    components = img.GetNumberOfComponentsPerPixel()  # SimpleITK ships no annotations
    if components != 1:
        msg = f"'{path}' has {components} components per voxel; pass a scalar image."
        raise UnsupportedFormatError(msg)
    dim = img.GetDimension()
    data = sitk.GetArrayFromImage(img).transpose(tuple(range(dim))[::-1])  # (z,y,x) -> (x,y,z) like nibabel
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    lps = np.eye(4)
    n = min(dim, 3)
    lps[:n, :n] = direction[:n, :n] * np.asarray(img.GetSpacing()[:n])
    lps[:n, 3] = img.GetOrigin()[:n]
    return _select_volume(data, path, volume_index), LPS_TO_RAS @ lps, []


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
    if volume_suffix(path) not in NIFTI_SUFFIXES:
        msg = f"Output '{path}' must end with .nii or .nii.gz."
        raise OutputError(msg)
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.uint8)
    else:
        arr, _ = replace_nan(arr, str(path))
    slope = float(np.abs(arr).max()) / 32767.0 if compact and arr.dtype != np.uint8 else 0.0
    if slope > 0:
        arr = np.clip(np.round(arr / np.float32(slope)), -32767, 32767).astype(np.int16)
    img = nib.Nifti1Image(arr, like.affine)  # nibabel ships no annotations
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
