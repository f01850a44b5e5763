"""Intensity rules without torch: the foreground (body/brain) and the intensity window of a volume.

:func:`window_bounds` is the one function that sets the window: the model's input (:mod:`aaclip_med.transforms`)
and the overlays' grey image (:mod:`aaclip_med.report.overlays`) both take their bounds from it. With the default
``scope="volume"`` the bounds come once from the foreground of the whole volume (:func:`volume_window`, DESIGN §0
"Window per volume"); ``scope="image"`` (the ``reference`` preset) derives them slice by slice.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from aaclip_med._typing import Array
from aaclip_med.errors import ConfigError
from aaclip_med.presets import ForegroundRule, WindowConfig

__all__ = ["body_mask", "foreground_mask", "foreground_values", "volume_window", "window_bounds"]

logger = logging.getLogger(__name__)

_RELATIVE_TOP_PERCENTILE = 99.5  # robust top of the range for relative foreground thresholds
_FILL_SHARE = 0.2  # one exact value on over 20 % of voxels is a background fill, not tissue
_BODY_OPENING = 2  # in-plane opening iterations (3x3 cross): cuts bridges up to ~4 voxels to the table/blankets


def foreground_mask(data: Array, rule: ForegroundRule, slice_axis: int = -1) -> Array:
    """Boolean mask of foreground voxels; thresholds are computed over the whole array given.

    ``absolute``: ``data > threshold``. ``relative``: when one value fills over 20 % of the array (the zero
    background of skull-stripped or z-scored MRI, whose brain voxels can be negative), every other value is
    foreground; otherwise ``data > vmin + threshold * (p99.5 - vmin)`` (air is the dark end of raw MRI).
    ``rule.body``: then only the body is kept (:func:`body_mask`; holes are filled in planes across
    ``slice_axis``).

    Example:
        >>> foreground_mask(np.array([-1000.0, 40.0]), ForegroundRule("absolute", -500.0)).tolist()
        [False, True]
    """
    arr = np.asarray(data, dtype=np.float32)
    if rule.mode == "absolute":
        fg = arr > rule.threshold
    elif rule.mode == "relative":
        if arr.size == 0:
            return np.zeros(arr.shape, bool)
        fill = _fill_value(arr)
        if fill is not None:
            fg = arr != fill
        else:
            vmin = float(arr.min())
            top = float(np.percentile(arr, _RELATIVE_TOP_PERCENTILE))
            fg = arr > vmin + rule.threshold * (top - vmin)
    else:
        msg = f"Unknown foreground mode '{rule.mode}'; use 'absolute' or 'relative'."
        raise ConfigError(msg)
    return body_mask(fg, slice_axis) if rule.body else fg


def body_mask(tissue: Array, slice_axis: int = -1) -> Array:
    """The patient's body in a tissue mask: the largest connected component, holes filled slice by slice.

    An in-plane opening first cuts thin bridges (the CT table, blankets, cables touching the skin), so they fall
    into other components; the largest component is then dilated back by the opening (closing its edge) and
    every plane across ``slice_axis`` has its holes filled (lungs and bowel gas are inside the body).

    Example:
        >>> t = np.zeros((9, 12), bool); t[1:6, 1:8] = True; t[3, 3] = False; t[8, :] = True  # body + table
        >>> m = body_mask(t); bool(m[3, 3]), bool(m[8, 5])
        (True, False)
    """
    fg = np.asarray(tissue, dtype=bool)
    if not fg.any():
        return fg
    axis = slice_axis % fg.ndim if fg.ndim == 3 else None
    plane = ndimage.generate_binary_structure(2, 1)
    structure = plane if axis is None else np.expand_dims(plane, axis)
    opened = ndimage.binary_opening(fg, structure, iterations=_BODY_OPENING)
    was_opened = bool(opened.any())  # else a body thinner than the opening: keep it unopened
    body = opened if was_opened else fg
    labels, n = ndimage.label(body)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        body = labels == int(np.argmax(sizes))
    if was_opened:  # give back the opening's erosion at the body's edge, inside the tissue only
        body = ndimage.binary_dilation(body, structure, iterations=_BODY_OPENING) & fg
    if axis is None:
        return np.asarray(ndimage.binary_fill_holes(body), dtype=bool)
    moved = np.moveaxis(body, axis, 0)
    filled = np.stack([ndimage.binary_fill_holes(p) for p in moved])
    return np.moveaxis(filled, 0, axis)


def _fill_value(arr: Array) -> float | None:
    """The value that fills over :data:`_FILL_SHARE` of the array (a background constant), if any."""
    sample = arr.ravel()[:: max(1, arr.size // 1_000_000)]  # ~1e6 voxels are plenty to find a fill value
    values, counts = np.unique(sample, return_counts=True)
    order = np.argsort(counts)[::-1]
    top = counts[order[0]]
    runner_up = counts[order[1]] if counts.size > 1 else 0
    dominant = top > _FILL_SHARE * sample.size and top > 2 * runner_up  # a fill, not a tie of few values
    return float(values[order[0]]) if dominant else None


def window_bounds(values: Array, cfg: WindowConfig) -> tuple[float, float]:
    """The window ``(lo, hi)`` in stored units: the one function that sets what the model (and the overlay) sees.

    Args:
        values: The foreground intensities the bounds are taken over: the whole volume's (``scope="volume"``) or
            one slice's (``scope="image"``). Ignored for ``hu`` windows.
        cfg: The preset's window.

    Returns:
        ``(lo, hi)``; ``hi <= lo`` means the values are constant (no contrast).

    Example:
        >>> window_bounds(np.arange(101.0), WindowConfig("percentile", 1.0, 99.0))
        (1.0, 99.0)
    """
    if cfg.mode == "hu":
        return float(cfg.lower), float(cfg.upper)
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return 0.0, 0.0
    if cfg.mode == "percentile":
        lo, hi = (float(v) for v in np.percentile(arr, [cfg.lower, cfg.upper]))
        return lo, hi
    if cfg.mode == "zscore":
        mean, std = float(arr.mean()), float(arr.std())
        return mean + cfg.lower * std, mean + cfg.upper * std
    msg = f"Unknown window mode '{cfg.mode}'; use 'hu', 'percentile' or 'zscore'."
    raise ConfigError(msg)


def foreground_values(data: Array, fg: Array) -> Array:
    """The intensities a window is derived from: the foreground's, or every value when it has under 2 voxels."""
    arr = np.asarray(data)
    mask = np.asarray(fg, dtype=bool)
    return arr[mask] if np.count_nonzero(mask) > 1 else arr.ravel()


def volume_window(data: Array, fg: Array, cfg: WindowConfig) -> tuple[float, float] | None:
    """The window of a whole volume (DESIGN §0): bounds over its foreground, or None for ``scope="image"``.

    Args:
        data: The volume (any shape) in stored units.
        fg: Its foreground mask (:func:`foreground_mask`).
        cfg: The preset's window.

    Returns:
        ``(lo, hi)`` to give every slice, or None when each slice derives its own (the reference rendering).
    """
    if cfg.mode != "hu" and cfg.scope == "image":
        return None
    return window_bounds(foreground_values(data, fg) if cfg.mode != "hu" else np.zeros(0), cfg)
