"""Turn raw AA-CLIP heatmaps into masks and slice scores into a volume score.

Everything here is pure numpy/scipy on arrays of the source grid, indexed like ``Volume.data`` (``[i, j, k]``).
Heatmaps are in raw AA-CLIP map units (DESIGN §0): thresholds are applied to them unchanged.

Example:
    >>> import numpy as np
    >>> heat = np.zeros((4, 4, 3), np.float32); heat[1:3, 1:3, 1] = 2.0
    >>> mask = threshold_map(heat, 1.0)
    >>> int(remove_small_components(mask, (0.5, 0.5, 2.0), min_size_mm3=1.0).sum())
    4
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from aaclip_med.errors import ConfigError, GeometryError, did_you_mean

__all__ = [
    "UNSCORED_MARGIN",
    "aggregate_volume_score",
    "mark_unscored",
    "remove_small_components",
    "threshold_map",
    "unscored_value",
]

logger = logging.getLogger(__name__)

VolumeScoreMethod = Literal["max", "topk_mean"]
_METHODS: tuple[str, ...] = ("max", "topk_mean")

# The "not scored" rule (DESIGN §0): a voxel the model never scored (a slice skipped as empty, or outside the
# foreground of a scored slice) holds the lowest scored value of its volume minus this margin, in raw map units.
# So it never outranks a scored voxel whatever the units (trained maps are often all negative), viewers show it as
# the darkest value, the FRACTIONAL SEG maps it to probability 0, and metrics need no special case.
UNSCORED_MARGIN = 1.0

# 26-connectivity: voxels touching by a face, an edge or a corner belong to one component, so a thin oblique
# lesion drawn across slices is not split into one-voxel pieces.
_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


def threshold_map(heatmap: npt.NDArray[np.floating], threshold: float) -> npt.NDArray[np.uint8]:
    """Binarise a heatmap: voxels strictly above ``threshold`` become 1.

    Args:
        heatmap: Raw AA-CLIP map of any shape (NaN counts as below the threshold).
        threshold: Threshold in the heatmap's units (raw map units for AA-CLIP heatmaps).

    Returns:
        A uint8 array of the heatmap's shape holding 0 and 1.

    Raises:
        ConfigError: If ``threshold`` is not a finite number.
    """
    if not math.isfinite(threshold):
        msg = f"Threshold {threshold!r} is not a finite number; pass a value in raw AA-CLIP map units."
        raise ConfigError(msg)
    return (np.asarray(heatmap) > threshold).astype(np.uint8)


def unscored_value(heatmap: npt.NDArray[np.floating], scored: npt.NDArray[np.bool_]) -> float:
    """The value of unscored voxels: ``min(heatmap[scored]) - UNSCORED_MARGIN`` (0.0 when nothing was scored).

    Example:
        >>> unscored_value(np.array([-20.0, -7.0, 5.0]), np.array([True, True, False]))
        -21.0
    """
    values = np.asarray(heatmap)[np.asarray(scored, dtype=bool)]
    if values.size == 0:
        return 0.0
    return float(np.float32(float(values.min()) - UNSCORED_MARGIN))


def mark_unscored(
    heatmap: npt.NDArray[np.floating], scored: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.float32], float]:
    """Apply the "not scored" rule: voxels outside ``scored`` get :func:`unscored_value`.

    Args:
        heatmap: Raw map (any shape).
        scored: Boolean array of the heatmap's shape (or broadcastable to it): True where the model scored.

    Returns:
        ``(map, value)``: a float32 copy with the rule applied, and the value given to unscored voxels.
    """
    heat = np.asarray(heatmap, dtype=np.float32)
    where = np.broadcast_to(np.asarray(scored, dtype=bool), heat.shape)
    value = unscored_value(heat, where)
    return np.where(where, heat, np.float32(value)).astype(np.float32, copy=False), value


def remove_small_components(
    mask: npt.NDArray[np.integer] | npt.NDArray[np.bool_],
    spacing_mm: Sequence[float],
    min_size_mm3: float,
) -> npt.NDArray[np.uint8]:
    """Remove 3D connected components smaller than ``min_size_mm3`` cubic millimetres.

    Components are found with :func:`scipy.ndimage.label` and 26-connectivity (faces, edges and corners touch).
    A component's volume is its voxel count times the voxel volume ``prod(spacing_mm)``, so anisotropic grids
    are measured in physical units.

    Args:
        mask: Binary 3D mask (any non-zero voxel is foreground).
        spacing_mm: Voxel size along each of the mask's three axes, in mm (``Volume.spacing``).
        min_size_mm3: Components with a volume below this are removed; ``<= 0`` keeps everything.

    Returns:
        A uint8 mask of the same shape holding 0 and 1.

    Raises:
        GeometryError: If the mask is not 3D or the spacing does not give three positive sizes.
    """
    arr = np.asarray(mask)
    if arr.ndim != 3:
        msg = f"Mask has shape {arr.shape}; component removal needs a 3D (I, J, K) mask."
        raise GeometryError(msg)
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        msg = f"Spacing {spacing_mm!r} is not three positive sizes in mm; pass Volume.spacing."
        raise GeometryError(msg)
    binary = np.asarray(arr != 0, dtype=np.uint8)
    if min_size_mm3 <= 0 or not binary.any():
        return binary
    labels, n_components = ndimage.label(binary, structure=_STRUCTURE_26)
    voxel_mm3 = spacing[0] * spacing[1] * spacing[2]
    sizes_mm3 = np.bincount(labels.ravel()) * voxel_mm3
    keep = sizes_mm3 >= min_size_mm3
    keep[0] = False  # label 0 is the background
    n_removed = n_components - int(keep.sum())
    logger.debug("removed %d of %d components below %.3g mm3", n_removed, n_components, min_size_mm3)
    return np.asarray(keep[labels], dtype=np.uint8)


def aggregate_volume_score(
    slice_scores: npt.NDArray[np.floating],
    scored: npt.NDArray[np.bool_],
    method: VolumeScoreMethod = "max",
    k: int = 3,
) -> float:
    """Combine per-slice scores into one volume score, using only the slices that were scored.

    Args:
        slice_scores: ``(n_slices,)`` slice scores (skipped slices hold the unscored value and are ignored).
        scored: ``(n_slices,)`` bool, True where the slice had foreground and was scored.
        method: ``"max"`` (the reference image score) or ``"topk_mean"`` (mean of the ``k`` highest scores,
            less sensitive to one noisy slice; all scored slices when fewer than ``k``).
        k: Number of slices averaged by ``"topk_mean"``.

    Returns:
        The volume score, or 0.0 with a warning when no slice was scored.

    Raises:
        ConfigError: If ``method`` is unknown, ``k < 1``, or the two arrays differ in shape.
    """
    if method not in _METHODS:
        hint = did_you_mean(method, _METHODS)
        msg = f"Unknown volume score method {method!r}; {hint}use one of {', '.join(_METHODS)}."
        raise ConfigError(msg)
    if k < 1:
        msg = f"topk={k} is invalid; the volume score needs k >= 1 slices."
        raise ConfigError(msg)
    scores = np.asarray(slice_scores, dtype=np.float64)
    used = np.asarray(scored, dtype=bool)
    if scores.shape != used.shape:
        msg = f"slice_scores shape {scores.shape} != scored shape {used.shape}; pass one flag per slice."
        raise ConfigError(msg)
    values = scores[used]
    if values.size == 0:
        warnings.warn("No slice was scored (no foreground found); volume score set to 0.0.", stacklevel=2)
        return 0.0
    if method == "max":
        return float(values.max())
    top = np.sort(values)[-min(k, values.size) :]
    return float(top.mean())
