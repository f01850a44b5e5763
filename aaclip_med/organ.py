"""Organ masks for scoring: a liver CT is scored inside the liver (DESIGN §0 "not scored" rule, ``--organ-mask``).

An organ mask comes as

- a label file (NIfTI, NRRD, MHA): voxels ``> 0`` are the organ, or ``== label`` (``--organ-label``);
- a DICOM mask series (a file, folder or zip holding one series), read like an image;
- one structure of a folder or zip of structures, chosen with ``organ`` (``--organ liver``): ``<organ>.nii.gz``
  in a TotalSegmentator output folder, or the DICOM series in the ``<organ>/`` sub-folder of 3D-IRCADb's
  ``MASKS_DICOM`` (folder or zip).

The mask must lie on the image's voxel grid: the same shape and affine within :data:`GRID_TOL_MM`. A mask stored
in another axis order or direction of the same grid (e.g. a NIfTI converted from the DICOM series with flipped
rows) is reoriented, which moves voxels without interpolation; any other difference is refused with one line
naming both files. Nothing is ever resampled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aaclip_med._files import VOLUME_SUFFIXES, strip_volume_suffix
from aaclip_med._typing import Array, PathLike
from aaclip_med.errors import ConfigError, DicomSeriesError, GeometryError, UnsupportedFormatError
from aaclip_med.volume import Volume

__all__ = ["GRID_TOL_MM", "OrganMask", "read_organ_mask"]

logger = logging.getLogger(__name__)

GRID_TOL_MM = 1e-3  # a mask on the image's grid matches to float rounding (DICOM positions are text)


@dataclass(frozen=True, eq=False)
class OrganMask:
    """An organ mask on an image's voxel grid, and where it came from (recorded in ``run.json``)."""

    mask: np.ndarray  # (I,J,K) bool on the image grid
    source: str
    organ: str | None = None
    label: int | None = None
    reoriented: bool = False

    def record(self, spacing: tuple[float, float, float]) -> dict[str, Any]:
        """The provenance entry: source, selection, size (voxels and mL) and whether it was reoriented."""
        voxels = int(np.count_nonzero(self.mask))
        ml = round(voxels * float(np.prod(spacing)) / 1000.0, 3)
        return {"path": self.source, "organ": self.organ, "label": self.label, "voxels": voxels,
                "volume_ml": ml, "reoriented": self.reoriented}  # fmt: skip


def _structure_names(path: Path) -> list[str]:
    import zipfile

    if path.is_dir():
        names = [p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
        names += [strip_volume_suffix(p.name) for p in path.iterdir() if p.name.lower().endswith(VOLUME_SUFFIXES)]
    else:
        with zipfile.ZipFile(path) as zf:
            names = [Path(m.filename).parent.name for m in zf.infolist() if not m.is_dir()]
    return sorted(set(names) - {""})


def _read_structure(path: Path, organ: str | None) -> Volume:
    """The mask volume: the file itself, or the structure ``organ`` of a folder or zip of structures."""
    import zipfile

    from aaclip_med.io import read_dicom_folder, read_volume

    container = path.is_dir() or zipfile.is_zipfile(path)
    if organ is None:
        try:
            return read_volume(path)
        except DicomSeriesError as err:
            if not container or "series" not in str(err):
                raise
            listed = ", ".join(_structure_names(path)[:20])
            msg = f"Organ mask {path} holds several mask series; choose one with --organ NAME (found: {listed})."
            raise ConfigError(msg) from err
    if not container:
        msg = (f"--organ {organ} selects a structure inside a folder or zip of masks, but {path} is one file; "
               "drop --organ (use --organ-label N for a label map).")  # fmt: skip
        raise ConfigError(msg)
    files = [path / f"{organ}{s}" for s in VOLUME_SUFFIXES] if path.is_dir() else []
    found = next((f for f in files if f.is_file()), None)
    if found is not None:
        return read_volume(found)
    try:
        return read_dicom_folder(path, organ)
    except DicomSeriesError as err:
        names = _structure_names(path)
        msg = (f"Organ mask {path} has no structure '{organ}' (no {organ}.nii.gz, no DICOM series in a "
               f"'{organ}/' folder); found: {', '.join(names[:20]) or 'nothing'}. Pass one of them to --organ.")
        raise ConfigError(msg) from err


def _on_grid(data: Array, affine: Array, like: Volume, source: str) -> tuple[Array, bool]:
    """``data`` on ``like``'s grid; reoriented when it is the same grid stored in another axis order."""
    reoriented = False
    if data.shape != like.shape or not np.allclose(affine, like.affine, atol=GRID_TOL_MM):
        from nibabel import orientations as ornt

        try:
            turn = ornt.ornt_transform(ornt.io_orientation(affine), ornt.io_orientation(like.affine))
            moved = ornt.apply_orientation(data, turn)
            moved_affine = affine @ ornt.inv_ornt_aff(turn, data.shape)
        except ValueError:  # oblique or degenerate: not a pure reordering
            moved, moved_affine = data, affine
        if moved.shape == like.shape and np.allclose(moved_affine, like.affine, atol=GRID_TOL_MM):
            data, reoriented = moved, True
            logger.info("organ mask %s reoriented onto the image's axis order (no interpolation)", source)
        else:
            offset = _grid_offset(moved_affine, like.affine) if moved.shape == like.shape else ""
            msg = (f"Organ mask {source} (shape {list(data.shape)}) is not on the grid of image {like.source} "
                   f"(shape {list(like.shape)}){offset}; aaclip-med does not resample masks: make the mask on "
                   "this image (e.g. TotalSegmentator on the same file) or resample it onto the image grid.")
            raise GeometryError(msg)
    return data, reoriented


def _grid_offset(affine: Array, other: Array) -> str:
    diff = float(np.abs(np.asarray(affine) - np.asarray(other)).max())
    return f", same shape but position/spacing differ by up to {diff:.3g} mm"


def read_organ_mask(
    path: PathLike, like: Volume, *, organ: str | None = None, label: int | None = None
) -> OrganMask:
    """Read an organ mask and put it on the grid of ``like`` (the image it belongs to).

    Args:
        path: A label file, a DICOM mask series (file, folder, zip), or a folder/zip of structures (``organ``).
        like: The image volume; the mask must share its grid (see the module docstring).
        organ: Structure name inside a folder or zip of structures (TotalSegmentator ``liver``, IRCADb ``liver``).
        label: Keep the voxels equal to this value (a multi-label map); ``None``: every voxel ``> 0``.

    Returns:
        The boolean mask on ``like``'s grid and its provenance.

    Raises:
        GeometryError: the mask is not on the image's grid (the message names both files).
        ConfigError: no such structure, several series and no ``organ``, or the selection is empty.
        UnsupportedFormatError: the file is missing or unreadable.

    Example:
        >>> om = read_organ_mask("seg/", ct, organ="liver")  # doctest: +SKIP
        >>> om.mask.sum()  # doctest: +SKIP
    """
    src = Path(path)
    if not src.exists():
        msg = f"Organ mask {src}: no such file or folder. Check the --organ-mask path."
        raise UnsupportedFormatError(msg)
    volume = _read_structure(src, organ)
    values = np.rint(volume.data) == label if label is not None else volume.data > 0
    mask, reoriented = _on_grid(values, volume.affine, like, str(src))
    if not mask.any():
        what = f"no voxel of label {label}" if label is not None else "no voxel > 0"
        msg = f"Organ mask {src}{f' ({organ})' if organ else ''} holds {what}; check --organ / --organ-label."
        raise ConfigError(msg)
    return OrganMask(np.ascontiguousarray(mask, dtype=bool), str(src), organ, label, reoriented)
