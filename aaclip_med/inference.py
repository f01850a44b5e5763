"""Score a volume slice by slice with AA-CLIP and reassemble a 3D anomaly map on the source grid.

The loop is ours (about 40 lines) rather than MONAI's ``SliceInferer``, because AA-CLIP returns a per-slice score
beside the map; ``SliceInferer`` stays a test oracle for the map path. Slices stream through the model in
batches, so memory beyond the output arrays does not grow with the number of slices.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from aaclip_med._typing import SliceScorer
from aaclip_med.config import InferenceConfig
from aaclip_med.errors import ConfigError, GeometryError
from aaclip_med.postprocess import (
    UNSCORED_MARGIN,
    aggregate_volume_score,
    mark_unscored,
    remove_small_components,
    threshold_map,
)
from aaclip_med.presets import ModalityPreset, get_preset, preset_for_modality
from aaclip_med.transforms import foreground_mask, inverse_resize, slice_transform, volume_window
from aaclip_med.volume import Volume, stack_slices

if TYPE_CHECKING:
    import torch

__all__ = ["VolumeResult", "default_threshold", "resolve_preset", "score_volume"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class VolumeResult:
    """What :func:`score_volume` returns; maps are on the source voxel grid of the input volume.

    The "not scored" rule (DESIGN §0): voxels outside :attr:`scored_voxels` (slices skipped as empty, and the
    air around the foreground with ``score_region="foreground"``) hold :attr:`unscored_value`, the lowest scored
    value minus :data:`~aaclip_med.postprocess.UNSCORED_MARGIN`; skipped slices' scores hold it too. Every output
    (NIfTI heatmap, Parametric Map, FRACTIONAL SEG, slices.csv) and consumer (eval, overlays, summaries) uses it.
    """

    score: float  # volume score: max (or top-k mean) of the scored slices' scores
    slice_scores: np.ndarray  # (n_slices,) float32: max of the map in the score region; unscored_value if skipped
    scored: np.ndarray  # (n_slices,) bool: the slice had foreground and went through the model
    heatmap: np.ndarray  # (I,J,K) float32 raw AA-CLIP map (DESIGN §0 units); unscored_value outside scored_voxels
    mask: np.ndarray  # (I,J,K) uint8: heatmap > threshold inside scored_voxels, small components removed
    threshold: float
    slice_axis: int
    preset: str
    qa: dict[str, Any] = field(default_factory=dict)
    untrained_backbone: bool = False
    scored_voxels: np.ndarray | None = None  # (I,J,K) bool: the score region of the scored slices (None: all)
    unscored_value: float = 0.0
    window: tuple[float, float] | None = None  # intensity window the model saw (None: per slice, reference)

    @property
    def flagged(self) -> np.ndarray:
        """(n_slices,) bool: scored slices with a voxel in the mask.

        With no component cleanup this is exactly ``slice score > threshold``, since the slice score is the
        maximum of the same map inside the same region the mask is cut from; a slice whose only voxels above the
        threshold fall in a component removed by ``min_component_mm3`` is not flagged.
        """
        other = tuple(a for a in range(3) if a != self.slice_axis)
        return np.asarray(self.scored, dtype=bool) & np.asarray(self.mask, dtype=bool).any(axis=other)


def default_threshold(n_levels: int) -> float:
    """Threshold used when neither the checkpoint nor the user gives one.

    Each level map is ``50·(s_abn − s_nor) + 0.5``; it exceeds 0.5 exactly where the abnormal anchor is closer
    than the normal one. Summed over ``n_levels`` levels, ``0.5·n_levels`` marks "abnormal on average".
    """
    return 0.5 * n_levels


def resolve_preset(preset: str | ModalityPreset | None, volume: Volume) -> ModalityPreset:
    """The preset given, or the default for the volume's modality (``CT`` -> ``ct``, ``MR`` -> ``mri``)."""
    if preset is None:
        name = preset_for_modality(volume.modality)
        logger.info("preset '%s' chosen from modality %s", name, volume.modality)
        return get_preset(name)
    return get_preset(preset)


def _batches(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def score_volume(
    model: SliceScorer,
    volume: Volume,
    preset: str | ModalityPreset | None = None,
    *,
    config: InferenceConfig | None = None,
    progress: bool | None = None,
    organ: np.ndarray | None = None,
) -> VolumeResult:
    """Score every slice of ``volume`` and reassemble the anomaly map, mask and scores.

    Args:
        model: A model from :func:`aaclip_med.create_model` (any :class:`~aaclip_med._typing.SliceScorer`).
        volume: A volume from :func:`aaclip_med.read_volume`.
        preset: Modality preset name or object; ``None`` picks it from the volume's modality.
        config: Batch size, threshold, volume-score rule, component cleanup; defaults when ``None``.
        progress: Show a progress bar; ``None`` uses ``config.progress``.
        organ: Organ mask on the volume's grid (:func:`~aaclip_med.organ.read_organ_mask`), or None. Given, it is
            the score region: slice and volume scores, heatmap and mask come from inside it, and slices without
            organ are not scored; ``config.mask_outside_organ`` also blanks the input outside it (BMAD liver).

    Returns:
        A :class:`VolumeResult` whose heatmap and mask share the volume's grid (write them with
        ``write_nifti(..., like=volume)``).

    Raises:
        UnknownModalityError: ``preset`` is unknown, or ``None`` and the modality has no default preset.
        GeometryError: ``organ`` does not have the volume's shape.
        ConfigError: ``config.mask_outside_organ`` without an organ mask.

    Example:
        >>> res = score_volume(model, read_volume("study/"), "liver_ct")  # doctest: +SKIP
        >>> res.score, res.mask.sum()  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    cfg = config or InferenceConfig()
    preset_obj = resolve_preset(preset, volume)
    reference = None
    if cfg.reference is not None:  # normal-reference mode (aaclip_med.reference)
        from aaclip_med.reference import attach_reference

        model = reference = attach_reference(model, cfg, preset_obj)
        preset_obj = reference.scoring_preset(preset_obj)  # the memory's window
    axis = volume.slice_axis
    n = volume.n_slices
    fg = foreground_mask(volume.data, preset_obj.foreground, slice_axis=axis)
    fg_fraction = np.moveaxis(fg, axis, -1).reshape(-1, n).mean(axis=0)
    todo = [k for k in range(n) if fg_fraction[k] >= preset_obj.foreground.min_fraction]
    bounds = volume_window(volume.data, fg, preset_obj.window)
    transform = slice_transform(preset_obj, model.input_size)
    region = fg if cfg.score_region == "foreground" else np.ones(fg.shape, bool)
    if organ is not None or cfg.mask_outside_organ:
        region, todo, volume_in = _organ_region(volume, organ, todo, cfg.mask_outside_organ)
    else:
        volume_in = volume
    region_slices = volume.with_data(region.astype(np.float32))

    maps: list[np.ndarray | None] = [None] * n
    slice_scores = np.zeros(n, dtype=np.float32)
    show = cfg.progress if progress is None else progress
    bar = tqdm(total=len(todo), desc=f"scoring {volume.source}", unit="slice", disable=not show, leave=False)
    with bar:
        for batch in _batches(todo, cfg.batch_size):
            images = [volume_in.get_slice(k, axis) for k in batch]
            x = _stack([transform(img, bounds) for img in images])
            out = model.score_slices(x, preset_obj)
            for k, img, m in zip(batch, images, out.maps.float().cpu().numpy(), strict=True):
                full = maps[k] = inverse_resize(m, img.shape)
                inside = region_slices.get_slice(k, axis) > 0
                slice_scores[k] = float(full[inside].max()) if inside.any() else float(full.max())
            bar.update(len(batch))
    shapes = _slice_shapes(volume, axis)
    filled = [m if m is not None else np.zeros(shapes, np.float32) for m in maps]
    raw = stack_slices(filled, like=volume, axis=axis)
    scored = np.zeros(n, dtype=bool)
    scored[todo] = True
    scored_voxels = region & np.expand_dims(scored, tuple(a for a in range(3) if a != axis))
    heatmap, unscored = mark_unscored(raw, scored_voxels)
    slice_scores[~scored] = unscored

    threshold, threshold_source = _pick_threshold(cfg, model, preset_obj.name)
    mask = threshold_map(heatmap, threshold) & scored_voxels.astype(np.uint8)
    if cfg.min_component_mm3 > 0:
        mask = remove_small_components(mask, volume.spacing, cfg.min_component_mm3)
    qa = _qa(volume, preset_obj, scored, threshold, threshold_source)
    qa.update(
        window={"mode": preset_obj.window.mode, "scope": preset_obj.window.scope, "lower": preset_obj.window.lower,
                "upper": preset_obj.window.upper, "bounds": None if bounds is None else [*bounds]},
        score_region="organ" if organ is not None else cfg.score_region,
        mask_outside_organ=cfg.mask_outside_organ,
        foreground_fraction=float(fg.mean()) if fg.size else 0.0,
        unscored_value=unscored,
        unscored_rule=f"not scored (skipped slice, outside the score region): lowest scored - {UNSCORED_MARGIN:g}",
    )  # fmt: skip
    if organ is not None:
        qa.update(organ_fraction=float(region.mean()), n_organ_slices=len(todo))
    if reference is not None:
        qa["reference"] = reference.describe()
    return VolumeResult(
        score=aggregate_volume_score(slice_scores, scored, method=cfg.volume_score, k=cfg.topk),
        slice_scores=slice_scores,
        scored=scored,
        heatmap=heatmap,
        mask=mask.astype(np.uint8),
        threshold=threshold,
        slice_axis=axis,
        preset=preset_obj.name,
        qa=qa,
        untrained_backbone=bool(model.untrained_backbone),
        scored_voxels=scored_voxels,
        unscored_value=unscored,
        window=bounds,
    )


def _organ_region(
    volume: Volume, organ: np.ndarray | None, todo: list[int], mask_input: bool
) -> tuple[np.ndarray, list[int], Volume]:
    """The organ as score region, the slices to score (foreground and organ), and the model's input volume.

    With ``mask_input`` the input outside the organ becomes the volume's minimum, black in every window (BMAD
    renders its liver slices this way).
    """
    if organ is None:
        msg = "mask_outside_organ needs an organ mask; pass --organ-mask (or drop --mask-outside-organ)."
        raise ConfigError(msg)
    region = np.asarray(organ, dtype=bool)
    if region.shape != volume.shape:
        msg = f"Organ mask shape {region.shape} differs from the grid {volume.shape} of {volume.source}."
        raise GeometryError(msg)
    other = tuple(a for a in range(3) if a != volume.slice_axis)
    present = np.asarray(region.any(axis=other), dtype=bool)
    kept = [k for k in todo if present[k]]
    logger.info("organ mask: %d of %d slices hold organ and foreground", len(kept), volume.n_slices)
    if not mask_input:
        return region, kept, volume
    return region, kept, volume.with_data(np.where(region, volume.data, volume.data.min()))


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    import torch

    return torch.stack(tensors)


def _slice_shapes(volume: Volume, axis: int) -> tuple[int, ...]:
    return tuple(volume.get_slice(0, axis).shape)


def _pick_threshold(cfg: InferenceConfig, model: SliceScorer, preset: str) -> tuple[float, str]:
    """The user's threshold, else the checkpoint's when calibrated for this preset, else the default."""
    if cfg.threshold is not None:
        return float(cfg.threshold), "flag"
    per_preset = getattr(model, "preset_thresholds", None) or {}  # calibrated for each of several presets
    if preset in per_preset:
        return float(per_preset[preset]), "checkpoint"
    if model.threshold is not None:
        if not model.threshold_presets or preset in model.threshold_presets:
            return float(model.threshold), "checkpoint"
        logger.warning(
            "the checkpoint's threshold was calibrated for %s, not %s: using the default %.3g instead "
            "(pass --threshold to choose one)",
            ", ".join(model.threshold_presets), preset, default_threshold(len(model.layout.taps)),
        )
    return default_threshold(len(model.layout.taps)), "default"


def _qa(
    volume: Volume,
    preset: ModalityPreset,
    scored: np.ndarray,
    threshold: float,
    source: str,
) -> dict[str, Any]:
    data = volume.data
    return {
        "orientation": volume.orientation,
        "display_orientation": "radiological (anterior up, patient right on image left)",
        "spacing_mm": [float(s) for s in volume.spacing],
        "shape": list(volume.shape),
        "slice_axis": int(volume.slice_axis),
        "n_slices": int(volume.n_slices),
        "n_scored": int(scored.sum()),
        "fraction_scored": float(scored.mean()) if scored.size else 0.0,
        "value_range": [float(data.min()), float(data.max())],
        "modality": volume.modality,
        "modality_guessed": bool(volume.meta.get("modality_guessed", False)),
        "preset": preset.name,
        "threshold": threshold,
        "threshold_source": source,
        "warnings": list(volume.meta.get("warnings", [])),
    }
