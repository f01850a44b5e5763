"""The :class:`Volume` container and the 3D <-> 2D slice round trip.

A volume is a float32 array indexed like nibabel (``data[i, j, k]``) plus the affine mapping ``(i, j, k, 1)`` to
RAS+ millimetres. This module is the only place with axis logic: :meth:`Volume.iter_slices` cuts the volume along
the voxel axis closest to the superior-inferior world axis and presents each slice in radiological display
orientation (anterior up, patient right on the image left); :func:`stack_slices` is its exact inverse.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np

from aaclip_med._typing import Affine, Array, Array2D, Array3D
from aaclip_med.errors import GeometryError, UnsupportedFormatError

__all__ = ["Volume", "display_plan", "replace_nan", "stack_slices"]

logger = logging.getLogger(__name__)

# For a slice whose normal is closest to world axis w (RAS: 0=x R, 1=y A, 2=z S): the world axes shown along the
# image rows (top to bottom) and columns (left to right). Both run from the positive end: anterior/superior at the
# top, patient right (axial, coronal) or anterior (sagittal) on the left, as radiology viewers show them.
_DISPLAY_AXES = {2: (1, 0), 1: (2, 0), 0: (2, 1)}


class DisplayPlan(NamedTuple):
    """How one voxel plane becomes a display image: ``img = flip(transpose?(plane))``."""

    axis: int  # voxel axis the slices are cut along
    transpose: bool  # rows of the display image follow the plane's second in-plane axis
    flip_rows: bool
    flip_cols: bool


def _directions(affine: Affine) -> Array:
    """Unit world direction (RAS) of each voxel axis, as the columns of a 3x3 matrix."""
    lin = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(lin, axis=0)
    if np.any(norms == 0):
        msg = f"Affine has a zero-length voxel axis (column norms {norms.tolist()}); fix the file's geometry."
        raise GeometryError(msg)
    return np.asarray(lin / norms, dtype=np.float64)


def superior_axis(affine: Affine) -> int:
    """Voxel axis whose direction is closest to the superior-inferior world axis."""
    return int(np.argmax(np.abs(_directions(affine)[2])))


def display_plan(affine: Affine, axis: int | None = None) -> DisplayPlan:
    """Flips and transpose that bring a voxel plane cut along ``axis`` into radiological display orientation.

    Args:
        affine: 4x4 voxel-to-RAS affine.
        axis: Voxel axis to cut along; ``None`` picks the one closest to superior-inferior.

    Returns:
        The :class:`DisplayPlan`.
    """
    dirs = _directions(affine)
    axis = superior_axis(affine) if axis is None else axis
    if axis not in (0, 1, 2):
        msg = f"Slice axis {axis} is not a voxel axis; use 0, 1, 2 or None (closest to superior-inferior)."
        raise GeometryError(msg)
    a, b = (ax for ax in range(3) if ax != axis)
    row_world, col_world = _DISPLAY_AXES[int(np.argmax(np.abs(dirs[:, axis])))]
    keep = abs(dirs[row_world, a]) + abs(dirs[col_world, b])
    swap = abs(dirs[row_world, b]) + abs(dirs[col_world, a])
    transpose = swap > keep
    row_ax, col_ax = (b, a) if transpose else (a, b)
    # the top row sits at the positive end of the row world axis, so the row index must run towards negative
    return DisplayPlan(axis, bool(transpose), bool(dirs[row_world, row_ax] > 0), bool(dirs[col_world, col_ax] > 0))


def _plane(data: Array, index: int, axis: int) -> Array:
    # basic indexing is a view; np.take copies element-wise and is ~100x slower on Fortran-ordered NIfTI data
    return data[(slice(None),) * axis + (index,)]


def _to_display(plane: Array, plan: DisplayPlan) -> Array:
    img = plane.T if plan.transpose else plane
    if plan.flip_rows:
        img = img[::-1, :]
    if plan.flip_cols:
        img = img[:, ::-1]
    return img


def _from_display(img: Array, plan: DisplayPlan) -> Array:
    if plan.flip_cols:
        img = img[:, ::-1]
    if plan.flip_rows:
        img = img[::-1, :]
    return img.T if plan.transpose else img


def replace_nan(data: Array, source: str) -> tuple[Array3D, str | None]:
    """Return float32 data with NaN/inf replaced by the finite minimum, and the warning text (or ``None``).

    Raises:
        UnsupportedFormatError: no voxel is finite.

    NaN carries no intensity, so it is treated as background: the smallest finite value keeps windows and
    foreground rules meaningful, where 0 could sit inside the tissue range of CT (HU) or z-scored MRI.
    """
    out = np.asarray(data, dtype=np.float32)
    bad = ~np.isfinite(out)
    if not bad.any():
        return out, None
    finite = out[~bad]
    if not finite.size:
        msg = f"'{source}' holds no finite voxel value (all NaN/inf); re-export the image from its source."
        raise UnsupportedFormatError(msg)
    fill = float(finite.min())
    out = np.where(bad, np.float32(fill), out).astype(np.float32)
    text = f"{source}: {int(bad.sum())} NaN/inf voxels replaced by the volume minimum {fill:g}"
    return out, text


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image on its source voxel grid.

    Attributes:
        data: float32 array (I, J, K), indexed like nibabel.
        affine: 4x4 float64 mapping (i, j, k, 1) to RAS+ millimetres (DICOM LPS converted).
        modality: DICOM Modality ("CT", "MR", ...) or the guess for NIfTI (see ``meta["modality_guessed"]``).
        source: The input path as given.
        meta: Non-identifying metadata (series UID/number/description, format, slice positions, warnings, ...).
        source_files: DICOM only: one file reference per k (zip members as ``"x.zip::member"``).
        phi: PatientName / PatientID / PatientBirthDate, kept apart from ``meta`` so outputs never copy them.

    Example:
        >>> vol = Volume(np.zeros((4, 5, 3), np.float32), np.eye(4), "MR", "x.nii.gz", {})
        >>> vol.orientation, vol.slice_axis, vol.n_slices
        ('RAS', 2, 3)
    """

    data: Array3D
    affine: Affine
    modality: str | None
    source: str
    meta: Mapping[str, Any]
    source_files: tuple[str, ...] = ()
    phi: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        data = np.asarray(self.data, dtype=np.float32)
        affine = np.asarray(self.affine, dtype=np.float64)
        if data.ndim != 3:
            msg = f"{self.source}: volume data must be 3D (I, J, K), got shape {data.shape}; select one volume."
            raise GeometryError(msg)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            msg = f"{self.source}: affine must be a finite 4x4 matrix, got {affine.tolist()}; fix the header."
            raise GeometryError(msg)
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "affine", affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxel grid shape (I, J, K)."""
        i, j, k = self.data.shape
        return (i, j, k)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each voxel axis."""
        x, y, z = (float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))
        return (x, y, z)

    @property
    def orientation(self) -> str:
        """Axis codes of the voxel axes, e.g. ``"LPS"`` for a usual axial DICOM series."""
        return "".join(str(c) for c in nib.aff2axcodes(self.affine))

    @property
    def slice_axis(self) -> int:
        """Voxel axis closest to the superior-inferior world axis (the model's slicing axis)."""
        return superior_axis(self.affine)

    @property
    def n_slices(self) -> int:
        """Number of slices along :attr:`slice_axis`."""
        return int(self.data.shape[self.slice_axis])

    @property
    def warnings(self) -> list[str]:
        """Warnings recorded while reading (missing slices, NaN replaced, ...)."""
        return list(self.meta.get("warnings", []))

    def get_slice(self, index: int, axis: int | None = None) -> Array2D:
        """One slice in radiological display orientation (see :func:`display_plan`).

        Args:
            index: Slice index along the axis.
            axis: Voxel axis; ``None`` is :attr:`slice_axis`.

        Returns:
            A contiguous float32 2D array.
        """
        plan = display_plan(self.affine, axis)
        if not 0 <= index < self.data.shape[plan.axis]:
            msg = f"Slice {index} out of range 0..{self.data.shape[plan.axis] - 1} along axis {plan.axis}."
            raise GeometryError(msg)
        return np.ascontiguousarray(_to_display(_plane(self.data, index, plan.axis), plan))

    def iter_slices(self, axis: int | None = None) -> Iterator[Array2D]:
        """Yield every slice along ``axis`` (default :attr:`slice_axis`) in display orientation, in k order.

        Example:
            >>> vol = Volume(np.zeros((4, 5, 3), np.float32), np.eye(4), "MR", "x", {})
            >>> [s.shape for s in vol.iter_slices()]
            [(5, 4), (5, 4), (5, 4)]
        """
        plan = display_plan(self.affine, axis)
        for index in range(self.data.shape[plan.axis]):
            yield np.ascontiguousarray(_to_display(_plane(self.data, index, plan.axis), plan))

    def with_data(self, data: Array) -> Volume:
        """A copy with other voxel values on the same grid.

        Raises:
            GeometryError: ``data`` does not have this volume's shape.
        """
        if tuple(np.shape(data)) != self.shape:
            msg = f"{self.source}: new data shape {np.shape(data)} differs from the volume grid {self.shape}."
            raise GeometryError(msg)
        return dataclasses.replace(self, data=np.asarray(data, dtype=np.float32))


def stack_slices(maps: Iterable[Array], like: Volume, axis: int | None = None) -> Array:
    """Stack 2D maps in display orientation back onto ``like``'s voxel grid: the inverse of ``iter_slices``.

    Args:
        maps: One 2D array per slice, in the order :meth:`Volume.iter_slices` yields them, each with the shape
            of the display slice.
        like: The volume the slices came from.
        axis: The axis given to ``iter_slices`` (``None``: ``like.slice_axis``).

    Returns:
        Array of ``like.shape`` with the dtype of the maps.

    Raises:
        GeometryError: wrong number of maps or a map of the wrong shape.
    """
    plan = display_plan(like.affine, axis)
    planes = [_from_display(np.asarray(m), plan) for m in maps]
    expected = tuple(n for ax, n in enumerate(like.shape) if ax != plan.axis)
    if len(planes) != like.shape[plan.axis]:
        msg = (
            f"stack_slices got {len(planes)} maps for {like.shape[plan.axis]} slices of {like.source}; "
            "pass one map per slice of iter_slices."
        )
        raise GeometryError(msg)
    bad = next((p.shape for p in planes if p.shape != expected), None)
    if bad is not None:
        msg = f"stack_slices: a map has plane shape {bad}, expected {expected}; inverse_resize maps first."
        raise GeometryError(msg)
    return np.stack(planes, axis=plan.axis)
