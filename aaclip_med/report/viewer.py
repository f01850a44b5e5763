"""Data of the report's slice viewer: every slice as compact 8-bit arrays, and the fixed heat colour scale.

The viewer in ``report.html`` is a small vanilla-JS canvas viewer (``templates/viewer.js``, no library): it needs
no licence file and no build, weighs about 10 kB and shows exactly the arrays written here, so the page stays one
self-contained file. Each channel is a ``uint8`` array of shape ``(n_slices, rows, cols)`` in display orientation
(as :meth:`Volume.get_slice` cuts it), compressed with zlib and base64-encoded; the browser inflates it with
``DecompressionStream``. Volumes wider than ``max_px`` are block-reduced in-plane (image: mean, heat: max of the
scored voxels, masks: any), which keeps a 512x512x130 CT under the 15 MB budget (about 11 MB for a noisy
synthetic CT with noisy heat; the bundled 512x512x16 sample gives a 2 MB page).

Channels:
    image: intensities mapped linearly from ``image_range`` (stored units, HU for CT) to 0..255; the range holds
        the window the model saw and the volume's 0.5-99.5 percentiles, so the window slider can widen it.
    heat: 0 = not scored (outside the foreground, skipped slices), 1 = at or below the colour floor, 2..255 =
        the map from the floor to the top of :func:`~aaclip_med.report.overlays.heat_scale` (map units, fixed:
        reports compare).
    mask, reference: 0/1.
"""

from __future__ import annotations

import base64
import math
import zlib
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from aaclip_med._typing import Array
from aaclip_med.report.overlays import heat_scale, slice_position_mm, window_limits
from aaclip_med.volume import DisplayPlan, display_plan

if TYPE_CHECKING:
    from aaclip_med.volume import Volume

__all__ = ["MAX_VIEWER_PX", "ScoredVolume", "heat_lut", "viewer_data"]

MAX_VIEWER_PX = 256  # in-plane size above which the viewer's slices are block-reduced
# coronal and sagittal views are offered when the slice spacing is at most this many in-plane spacings
MAX_REFORMAT_RATIO = 4.0
_CT_WINDOWS = (("soft tissue (W400 L40)", -160.0, 240.0), ("liver (W150 L60)", -15.0, 135.0),
               ("lung (W1500 L-600)", -1350.0, 150.0), ("bone (W1800 L400)", -500.0, 1300.0))  # fmt: skip


class ScoredVolume(Protocol):
    """What the viewer reads of a result.

    A :class:`~aaclip_med.inference.VolumeResult`, or one read back from a run folder by ``eval`` (which imports
    no model).
    """

    @property
    def heatmap(self) -> Array:
        """``(I, J, K)`` float32 map in raw AA-CLIP units on the source grid."""

    @property
    def mask(self) -> Array:
        """``(I, J, K)`` uint8 anomaly mask."""

    @property
    def scored_voxels(self) -> Array | None:
        """``(I, J, K)`` bool score region of the scored slices; None: every voxel."""

    @property
    def scored(self) -> Array:
        """``(n_slices,)`` bool: which slices went through the model."""

    @property
    def slice_scores(self) -> Array:
        """``(n_slices,)`` float32 slice scores in map units."""

    @property
    def threshold(self) -> float:
        """The mask threshold in map units."""

    @property
    def slice_axis(self) -> int:
        """The voxel axis the slices are taken along."""

    @property
    def window(self) -> tuple[float, float] | None:
        """The intensity window the model saw; None when windowed per slice."""


def _pack(array: Array) -> str:
    return base64.b64encode(zlib.compress(np.ascontiguousarray(array, dtype=np.uint8).tobytes(), 6)).decode()


def _reduce(stack: Array, factor: int, how: str) -> Array:
    """Block-reduce ``(n, rows, cols)`` in-plane by ``factor`` (``mean`` or ``max``; edges repeated to fit)."""
    if factor == 1:
        return stack
    n, rows, cols = stack.shape
    pad = ((0, 0), (0, -rows % factor), (0, -cols % factor))
    blocks = np.pad(stack, pad, mode="edge").reshape(n, -1, factor, (cols + pad[2][1]) // factor, factor)
    reduced: Array = blocks.mean(axis=(2, 4), dtype=np.float32) if how == "mean" else blocks.max(axis=(2, 4))
    return reduced


def _stack(data: Array, plan: DisplayPlan) -> Array:
    """``(n_slices, rows, cols)``: every slice in display orientation, as :meth:`Volume.get_slice` cuts it."""
    stack = np.moveaxis(np.asarray(data), plan.axis, 0)
    if plan.transpose:
        stack = stack.transpose(0, 2, 1)
    return stack[:, :: -1 if plan.flip_rows else 1, :: -1 if plan.flip_cols else 1]


def _to_byte(values: Array, lo: float, hi: float, offset: int = 0) -> Array:
    scaled = (np.asarray(values, dtype=np.float64) - lo) / max(hi - lo, 1e-12) * (255 - offset) + offset
    return np.clip(np.rint(np.nan_to_num(scaled, nan=offset)), offset, 255).astype(np.uint8)


def _heat_bytes(heat: Array, threshold: float) -> Array:
    floor, top = heat_scale(threshold)
    codes = _to_byte(np.maximum(heat, floor), floor, top, offset=1)  # at or below the floor: 1
    codes[~np.isfinite(heat)] = 0  # not scored (-inf)
    return codes


def _windows(volume: Volume, result: ScoredVolume, stack: Array) -> list[dict[str, Any]]:
    window = result.window if result.window is not None else window_limits(stack, None)
    name = "as the model saw it" if result.window is not None else "volume 1-99 % (model: per slice)"
    out = [{"name": name, "lo": float(window[0]), "hi": float(window[1])}]
    if str(volume.modality).upper() == "CT":
        out += [{"name": n, "lo": lo, "hi": hi} for n, lo, hi in _CT_WINDOWS]
    return out


def _positions(volume: Volume, plane_axis: int, count: int, factor: int, flip: bool) -> list[float]:
    """World position (mm) of each display row (or column) after block reduction, along its world axis."""
    size = volume.shape[plane_axis]
    centres = [min(k * factor + (factor - 1) / 2, size - 1) for k in range(count)]
    indices = [size - 1 - c if flip else c for c in centres]
    return [round(slice_position_mm(volume.affine, volume.shape, plane_axis, i)[0], 2) for i in indices]


def viewer_data(
    volume: Volume, result: ScoredVolume, *, reference: Array | None = None, max_px: int = MAX_VIEWER_PX
) -> dict[str, Any]:
    """Everything the report's slice viewer shows, as JSON-ready values (see the module docstring).

    Args:
        volume: The scored volume.
        result: Its result (heat only inside ``scored_voxels``, the window the model saw, scores, mask).
        reference: A reference mask on the volume's grid (eval), shown as a second contour.
        max_px: In-plane size above which slices are block-reduced by an integer factor.

    Returns:
        A dict for :func:`~aaclip_med.report.write_case_html` (``viewer=``).
    """
    axis = result.slice_axis
    plan = display_plan(volume.affine, axis)
    keep = result.scored_voxels
    if keep is None:  # no voxel map: the skipped slices are the unscored ones
        keep = np.expand_dims(np.asarray(result.scored, bool), tuple(a for a in range(3) if a != axis))
    heat = np.where(keep, np.asarray(result.heatmap, dtype=np.float32), -np.inf)
    image = _stack(np.nan_to_num(np.asarray(volume.data, dtype=np.float32)), plan)
    factor = max(1, math.ceil(max(image.shape[1:]) / max_px))
    image = _reduce(image, factor, "mean")
    windows = _windows(volume, result, image)
    finite = image[np.isfinite(image)]
    lo, hi = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0))
    lo, hi = min(float(lo), windows[0]["lo"]), max(float(hi), windows[0]["hi"])
    windows.append({"name": "whole stored range", "lo": lo, "hi": hi})
    channels = {
        "image": _to_byte(image, lo, hi),
        "heat": _heat_bytes(_reduce(_stack(heat, plan), factor, "max"), result.threshold),
        "mask": _reduce(_stack(np.asarray(result.mask) > 0, plan), factor, "max"),
    }
    if reference is not None:
        channels["reference"] = _reduce(_stack(np.asarray(reference) > 0, plan), factor, "max")
    a, b = (x for x in range(3) if x != axis)
    row_ax, col_ax = (b, a) if plan.transpose else (a, b)
    spacing = volume.spacing
    in_plane = min(spacing[row_ax], spacing[col_ax])
    n, rows, cols = channels["image"].shape
    positions = [slice_position_mm(volume.affine, volume.shape, axis, k) for k in range(n)]
    scores = np.asarray(result.slice_scores, dtype=np.float64)
    return {
        "shape": [n, rows, cols],
        "factor": factor,
        "spacing_mm": [spacing[axis], spacing[row_ax] * factor, spacing[col_ax] * factor],
        "reformat": bool(spacing[axis] <= MAX_REFORMAT_RATIO * in_plane * factor) and n > 1,
        "axis_name": positions[0][1],
        "positions_mm": [round(p, 2) for p, _ in positions],
        "row_positions_mm": _positions(volume, row_ax, rows, factor, plan.flip_rows),
        "col_positions_mm": _positions(volume, col_ax, cols, factor, plan.flip_cols),
        "scores": [float(f"{s:.7g}") for s in scores],  # float32 precision
        "scored": [bool(s) for s in np.asarray(result.scored, bool)],
        "threshold": float(result.threshold),
        "heat_scale": list(heat_scale(result.threshold)),
        "image_range": [lo, hi],
        "unit": "HU" if str(volume.modality).upper() == "CT" else "stored units",
        "windows": windows,
        "heat_lut": heat_lut(),
        "channels": {name: _pack(arr) for name, arr in channels.items()},
    }


def heat_lut(cmap: str = "inferno") -> str:
    """The heat colour map as 256 ``rrggbb`` hex triplets in one string (the viewer's and overlays' colours)."""
    from matplotlib import colormaps

    rgb: Array = np.rint(colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)
    return rgb.tobytes().hex()
