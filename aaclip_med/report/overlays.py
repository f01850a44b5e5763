"""Overlay PNGs: a windowed grayscale slice, the anomaly heat map above a display floor and the mask contour.

Matplotlib is used through :class:`matplotlib.figure.Figure` and the Agg canvas directly, so no pyplot state is
created and the caller's backend (a notebook's inline backend, say) is left alone. The heat colours are
on a fixed scale in map units, the threshold +- :data:`HEAT_HALF_SPAN` (:func:`heat_scale`), shown by a colour bar
with the threshold marked, so that the same colour is the same map value in every report. Heat is drawn
only where the model scored (``VolumeResult.scored_voxels``: inside the foreground), and the grey image uses the
window the model saw (``VolumeResult.window``, from :func:`aaclip_med.intensity.window_bounds`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

import numpy as np

from aaclip_med._files import atomic_path
from aaclip_med._typing import Array, PathLike
from aaclip_med.errors import ConfigError, GeometryError
from aaclip_med.intensity import foreground_mask, foreground_values, window_bounds
from aaclip_med.presets import ForegroundRule, ModalityPreset, WindowConfig, get_preset

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from aaclip_med.inference import VolumeResult
    from aaclip_med.volume import Volume

__all__ = [
    "HEAT_HALF_SPAN",
    "UNTRAINED_CAPTION",
    "OverlaySlice",
    "WindowSpec",
    "heat_scale",
    "slice_position_mm",
    "top_slices",
    "volume_overlay_slices",
    "window_limits",
    "write_overlays",
    "write_volume_overlays",
]

logger = logging.getLogger(__name__)

UNTRAINED_CAPTION = "UNTRAINED BACKBONE \u2014 not a diagnostic result"
# (lo, hi) in stored units, a window, a preset or a preset name, or None (slice 1-99 percentiles)
WindowSpec: TypeAlias = "tuple[float, float] | WindowConfig | ModalityPreset | str | None"
_WORLD_AXES = ("x", "y", "z")  # RAS+ world axes of Volume.affine
_MASK_COLOUR = "#00e5ff"
# The heat colours run from threshold - HEAT_HALF_SPAN to threshold + HEAT_HALF_SPAN map units, whatever the
# volume: the same colour is the same map value in every report of a model. At the default threshold of a
# 4-level model (2.0), +-4 map units is a cosine-similarity difference of +-0.02 per level (50 * 0.02 * 4).
HEAT_HALF_SPAN = 4.0


def heat_scale(threshold: float) -> tuple[float, float]:
    """The fixed heat colour range ``(floor, top)`` in map units: the threshold +- :data:`HEAT_HALF_SPAN`.

    Heat at or below the floor is not drawn; heat above the top has the top colour.

    Example:
        >>> heat_scale(2.0)
        (-2.0, 6.0)
    """
    return float(threshold) - HEAT_HALF_SPAN, float(threshold) + HEAT_HALF_SPAN


class OverlaySlice(NamedTuple):
    """One slice to render, every 2D array in display orientation (as ``Volume.get_slice`` returns it).

    Attributes:
        slice_index: Slice index along the slice axis (shown in the caption and the file name).
        image: The intensity slice, in stored units (HU for CT).
        heat: The raw anomaly map of the slice (map units), or None for an image-only overlay.
        mask: The binary anomaly mask of the slice, or None.
        position_mm: World position of the slice centre along ``position_axis``, or None.
        score: The slice score in map units, or None.
        position_axis: Name of the world axis of ``position_mm`` (``x``, ``y`` or ``z`` of RAS+).
    """

    slice_index: int
    image: Array
    heat: Array | None = None
    mask: Array | None = None
    position_mm: float | None = None
    score: float | None = None
    position_axis: str = "z"


def window_limits(image: Array, window: WindowSpec = None) -> tuple[float, float]:
    """Return the display intensity range ``(lo, hi)`` of a slice.

    Args:
        image: The 2D slice in stored units.
        window: ``(lo, hi)`` in stored units; a :class:`WindowConfig`, a preset or a preset name (its window:
            ``hu`` limits as they are, ``percentile`` or ``zscore`` limits over the slice's foreground, by
            :func:`aaclip_med.intensity.window_bounds`, as the model sees a slice with ``scope="image"``); None
            for the slice's 1-99 percentiles.

    Returns:
        ``(lo, hi)`` with ``hi > lo``.

    Raises:
        ConfigError: ``window`` is neither a pair nor a window, preset or preset name.

    Example:
        >>> window_limits(np.zeros((4, 4)), (-200, 250))
        (-200.0, 250.0)
    """
    foreground = ForegroundRule()
    if isinstance(window, str | ModalityPreset):
        preset = get_preset(window)
        config: object = preset.window
        foreground = preset.foreground
    else:
        config = WindowConfig("percentile", 1.0, 99.0) if window is None else window
    values = np.asarray(image, dtype=np.float64)
    values = np.where(np.isfinite(values), values, np.nan)
    if not np.isfinite(values).any():
        values = np.zeros(1)
    values = np.nan_to_num(values, nan=float(np.nanmin(values)))
    if isinstance(config, WindowConfig):
        per_slice = config.mode != "hu" and window is not None  # a preset's window: over the slice's foreground
        fg = foreground_mask(values, foreground) if per_slice else np.ones(values.shape, bool)
        limits = list(window_bounds(foreground_values(values, fg), config))
    elif isinstance(config, Sequence) and len(config) == 2:
        limits = list(config)
    else:
        msg = f"Display window {window!r} is not understood; pass (lo, hi), a WindowConfig or a preset name."
        raise ConfigError(msg)
    lo, hi = float(limits[0]), float(limits[1])
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def top_slices(slice_scores: Array, scored: Array, n: int = 6) -> list[int]:
    """Return the indices of the ``n`` highest-scoring scored slices, highest first.

    Args:
        slice_scores: ``(n_slices,)`` slice scores.
        scored: ``(n_slices,)`` bool, True where the slice was scored (skipped slices are never picked).
        n: How many slices to return at most.

    Returns:
        Slice indices sorted by decreasing score (ties by index).

    Example:
        >>> top_slices(np.array([0.1, 0.9, 0.5]), np.array([True, True, False]), n=2)
        [1, 0]
    """
    scores = np.asarray(slice_scores, dtype=np.float64)
    candidates = np.flatnonzero(np.asarray(scored, dtype=bool))
    order = sorted(candidates.tolist(), key=lambda k: (-scores[k], k))
    return order[: max(n, 0)]


def slice_position_mm(affine: Array, shape: Sequence[int], axis: int, index: float) -> tuple[float, str]:
    """Return the world position (mm) of a slice centre along the world axis closest to the slice axis.

    Args:
        affine: The 4x4 voxel-to-RAS+ affine.
        shape: The volume shape.
        axis: The voxel slice axis.
        index: The slice index along ``axis``.

    Returns:
        ``(position_mm, world_axis_name)``, e.g. ``(-12.5, "z")`` for an axial slice.
    """
    affine = np.asarray(affine, dtype=np.float64)
    centre = (np.asarray(shape[:3], dtype=np.float64) - 1.0) / 2.0
    centre[axis] = index
    world = affine[:3, :3] @ centre + affine[:3, 3]
    world_axis = int(np.argmax(np.abs(affine[:3, axis])))
    return float(world[world_axis]), _WORLD_AXES[world_axis]


def volume_overlay_slices(volume: Volume, result: VolumeResult, indices: Sequence[int]) -> list[OverlaySlice]:
    """Cut the image, heat map and mask of the given slices in the same display orientation.

    Args:
        volume: The scored volume.
        result: Its :class:`~aaclip_med.inference.VolumeResult`.
        indices: Slice indices along ``result.slice_axis``.

    Returns:
        One :class:`OverlaySlice` per index.
    """
    axis = result.slice_axis
    heat = np.asarray(result.heatmap, dtype=np.float32)
    if result.scored_voxels is not None:  # heat only where the model scored (inside the foreground)
        heat = np.where(result.scored_voxels, heat, np.float32(np.nan))
    heat_volume = volume.with_data(heat)
    mask_volume = volume.with_data(np.asarray(result.mask, dtype=np.float32))
    slices = []
    for k in indices:
        position, world_axis = slice_position_mm(volume.affine, volume.shape, axis, k)
        slices.append(
            OverlaySlice(
                slice_index=int(k),
                image=volume.get_slice(k, axis),
                heat=heat_volume.get_slice(k, axis),
                mask=mask_volume.get_slice(k, axis),
                position_mm=position,
                score=float(result.slice_scores[k]),
                position_axis=world_axis,
            )
        )
    return slices


def write_volume_overlays(
    volume: Volume, result: VolumeResult, out_dir: PathLike, *, n: int = 6, window: WindowSpec = None
) -> list[Path]:
    """Write overlays of the ``n`` top-scoring scored slices of a volume.

    The heat colours follow the fixed scale :func:`heat_scale` around ``result.threshold`` (map units, the same
    in every report); voxels the model did not score (outside the foreground, skipped slices) get no heat.

    Args:
        volume: The scored volume.
        result: Its result.
        out_dir: Folder for the PNGs (created if needed).
        n: Number of slices.
        window: Display window (see :func:`window_limits`); None takes the window the model saw
            (``result.window``, or the preset's per-slice window when the preset derives one per slice).

    Returns:
        The PNG paths, highest-scoring slice first.
    """
    indices = top_slices(result.slice_scores, result.scored, n)
    if not indices:
        logger.info("No scored slice in %s; no overlays written", volume.source)
        return []
    if window is None:
        window = result.window if result.window is not None else result.preset
    return write_overlays(
        volume_overlay_slices(volume, result, indices),
        out_dir,
        window=window,
        threshold=float(result.threshold),
        untrained=result.untrained_backbone,
    )


def write_overlays(
    slices: Sequence[OverlaySlice],
    out_dir: PathLike,
    *,
    window: WindowSpec = None,
    heat_range: tuple[float, float] | None = None,
    threshold: float | None = None,
    untrained: bool = False,
    cmap: str = "inferno",
    size_px: int = 500,
    dpi: int = 100,
) -> list[Path]:
    """Write one ``slice_<index>.png`` per slice: window, heat, mask contour, colour bar, caption and legend.

    Args:
        slices: The slices (tuples with the fields of :class:`OverlaySlice` are accepted).
        out_dir: Folder for the PNGs (created if needed).
        window: Display window for the image (see :func:`window_limits`).
        heat_range: ``(floor, top)`` of the heat colours in map units; heat at or below ``floor`` is not drawn.
            None: :func:`heat_scale` of ``threshold`` (fixed units), else the 90th percentile and the maximum
            of the heat over all given slices.
        threshold: The map threshold, marked on the colour bar.
        untrained: Put the untrained-backbone warning on every image.
        cmap: Matplotlib colour map of the heat.
        size_px: Image width in pixels; the height is 1.2 times the width (colour bar and caption band).
        dpi: Rendering resolution.

    Returns:
        The written paths, in the order of ``slices``.

    Raises:
        GeometryError: A slice's heat map or mask does not have the image's shape.

    Example:
        >>> img = np.random.rand(64, 64)
        >>> write_overlays([OverlaySlice(3, img, img)], "overlays")  # doctest: +SKIP
        [PosixPath('overlays/slice_0003.png')]
    """
    items = [OverlaySlice(*s) for s in slices]
    for item in items:
        for name, arr in (("heat map", item.heat), ("mask", item.mask)):
            if arr is not None and np.shape(arr) != np.shape(item.image):
                msg = (
                    f"Overlay of slice {item.slice_index}: {name} shape {np.shape(arr)} differs from the image "
                    f"shape {np.shape(item.image)}; cut both with the same Volume.get_slice axis."
                )
                raise GeometryError(msg)
    if heat_range is None:
        heats = [s.heat for s in items if s.heat is not None]
        heat_range = heat_scale(threshold) if threshold is not None else _default_heat_range(heats)
    style = _Style(heat_range, threshold, untrained, cmap, size_px, dpi)
    out = Path(out_dir)
    return [_render(item, out / f"slice_{item.slice_index:04d}.png", window, style) for item in items]


def _default_heat_range(heats: list[Array]) -> tuple[float, float]:
    if not heats:
        return (0.0, 1.0)
    values = np.concatenate([np.asarray(h, dtype=np.float64).ravel() for h in heats])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (0.0, 1.0)
    return float(np.percentile(values, 90)), float(values.max())


def _heat_rgba(heat: Array, heat_range: tuple[float, float], cmap: str) -> Array:
    from matplotlib import colormaps

    floor, top = heat_range
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float64), nan=floor)
    norm = np.clip((heat - floor) / max(top - floor, 1e-12), 0.0, 1.0)
    rgba = colormaps[cmap](norm)
    # Opacity grows with the heat so the anatomy stays readable under weak responses.
    rgba[..., 3] = np.where(heat > floor, 0.35 + 0.45 * norm, 0.0)
    return rgba


def _caption(item: OverlaySlice) -> str:
    parts = [f"slice {item.slice_index}"]
    if item.position_mm is not None:
        parts.append(f"{item.position_axis} = {item.position_mm:.1f} mm")
    if item.score is not None:
        parts.append(f"score {item.score:.4g}")
    return "   |   ".join(parts)


class _Style(NamedTuple):
    heat_range: tuple[float, float]
    threshold: float | None
    untrained: bool
    cmap: str
    size_px: int
    dpi: int


def _colour_bar(fig: Figure, style: _Style) -> None:
    """A horizontal colour bar in map units under the image, the threshold marked in cyan."""
    from matplotlib import colormaps

    floor, top = style.heat_range
    bar = fig.add_axes((0.1, 0.165, 0.8, 0.028))
    bar.imshow(np.linspace(0.0, 1.0, 256)[None, :], aspect="auto", cmap=colormaps[style.cmap],
               extent=(floor, top, 0.0, 1.0))  # fmt: skip
    bar.set_yticks([])
    bar.tick_params(axis="x", colors="white", labelsize=10, length=3, pad=2)
    for spine in bar.spines.values():
        spine.set_color("#888888")
    if style.threshold is not None and floor <= style.threshold <= top:
        bar.axvline(style.threshold, color=_MASK_COLOUR, linewidth=2.5)
        bar.text(style.threshold, 1.25, f"threshold {style.threshold:.4g}", color=_MASK_COLOUR, fontsize=10,
                 ha="center", va="bottom", transform=bar.get_xaxis_transform())  # fmt: skip


def _render(item: OverlaySlice, path: Path, window: WindowSpec, style: _Style) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image = np.nan_to_num(np.asarray(item.image, dtype=np.float64))
    lo, hi = window_limits(image, window)
    width_in = style.size_px / style.dpi
    fig = Figure(figsize=(width_in, 1.2 * width_in), dpi=style.dpi, facecolor="black")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.26, 1.0, 0.7))
    ax.set_axis_off()
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    if item.heat is not None:
        ax.imshow(_heat_rgba(item.heat, style.heat_range, style.cmap), interpolation="nearest")
        _colour_bar(fig, style)
    if item.mask is not None and np.any(np.asarray(item.mask) > 0):
        ax.contour(
            (np.asarray(item.mask) > 0).astype(np.float32), levels=[0.5], colors=_MASK_COLOUR, linewidths=1.5
        )
    if style.untrained:
        fig.text(
            0.5, 0.98, UNTRAINED_CAPTION, ha="center", va="center", color="#ff5050", fontsize=12, fontweight="bold"
        )
    fig.text(0.5, 0.075, _caption(item), ha="center", va="center", color="white", fontsize=12)
    legend = "heat: map units (colour bar)" if item.heat is not None else ""
    if item.mask is not None:
        legend += "   cyan outline: mask"
    fig.text(0.5, 0.03, legend.strip(), ha="center", va="center", color="#dddddd", fontsize=11)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=style.dpi, facecolor="black")
    logger.debug("Wrote overlay %s", path)
    return path
