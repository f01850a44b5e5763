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

from aaclip_med.config import InferenceConfig, ModalityPreset, get_preset, preset_for_modality
from aaclip_med.postprocess import aggregate_volume_score, remove_small_components, threshold_map
from aaclip_med.transforms import foreground_mask, inverse_resize, slice_transform
from aaclip_med.volume import Volume, stack_slices

if TYPE_CHECKING:
    from aaclip_med.model.aaclip import AACLIP

__all__ = ["VolumeResult", "default_threshold", "resolve_preset", "score_volume"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class VolumeResult:
    """What :func:`score_volume` returns; maps are on the source voxel grid of the input volume."""

    score: float  # volume score: max (or top-k mean) of the scored slices' scores
    slice_scores: np.ndarray  # (n_slices,) float32; 0 for skipped slices
    scored: np.ndarray  # (n_slices,) bool: the slice had foreground and went through the model
    heatmap: np.ndarray  # (I,J,K) float32 raw AA-CLIP map (DESIGN §0 units); 0 on skipped slices
    mask: np.ndarray  # (I,J,K) uint8: heatmap > threshold inside the foreground, small components removed
    threshold: float
    slice_axis: int
    preset: str
    qa: dict[str, Any] = field(default_factory=dict)
    untrained_backbone: bool = False

    @property
    def flagged(self) -> np.ndarray:
        """(n_slices,) bool: scored slices whose score exceeds the threshold."""
        return self.scored & (self.slice_scores > self.threshold)


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
    model: AACLIP,
    volume: Volume,
    preset: str | ModalityPreset | None = None,
    *,
    config: InferenceConfig | None = None,
    progress: bool | None = None,
) -> VolumeResult:
    """Score every slice of ``volume`` and reassemble the anomaly map, mask and scores.

    Args:
        model: A model from :func:`aaclip_med.create_model`.
        volume: A volume from :func:`aaclip_med.read_volume`.
        preset: Modality preset name or object; ``None`` picks it from the volume's modality.
        config: Batch size, threshold, volume-score rule, component cleanup; defaults when ``None``.
        progress: Show a progress bar; ``None`` uses ``config.progress``.

    Returns:
        A :class:`VolumeResult` whose heatmap and mask share the volume's grid (write them with
        ``write_nifti(..., like=volume)``).

    Raises:
        UnknownModalityError: ``preset`` is unknown, or ``None`` and the modality has no default preset.

    Example:
        >>> res = score_volume(model, read_volume("study/"), "liver_ct")  # doctest: +SKIP
        >>> res.score, res.mask.sum()  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    cfg = config or InferenceConfig()
    preset_obj = resolve_preset(preset, volume)
    axis = volume.slice_axis
    n = volume.n_slices
    fg = foreground_mask(volume.data, preset_obj.foreground)
    fg_fraction = np.moveaxis(fg, axis, -1).reshape(-1, n).mean(axis=0)
    todo = [k for k in range(n) if fg_fraction[k] >= preset_obj.foreground.min_fraction]
    transform = slice_transform(preset_obj, model.input_size)

    maps: list[np.ndarray | None] = [None] * n
    slice_scores = np.zeros(n, dtype=np.float32)
    show = cfg.progress if progress is None else progress
    bar = tqdm(total=len(todo), desc=f"scoring {volume.source}", unit="slice", disable=not show, leave=False)
    with bar:
        for batch in _batches(todo, cfg.batch_size):
            images = [volume.get_slice(k, axis) for k in batch]
            x = _stack([transform(img) for img in images])
            out = model.score_slices(x, preset_obj)
            for k, img, m in zip(batch, images, out.maps.float().cpu().numpy(), strict=True):
                maps[k] = inverse_resize(m, img.shape)
                slice_scores[k] = float(m.max())
            bar.update(len(batch))
    shapes = _slice_shapes(volume, axis)
    heatmap = stack_slices(
        [m if m is not None else np.zeros(shapes, np.float32) for m in maps], like=volume, axis=axis
    ).astype(np.float32, copy=False)

    threshold, threshold_source = _pick_threshold(cfg, model, preset_obj.name)
    mask = threshold_map(heatmap, threshold) & fg.astype(np.uint8)
    if cfg.min_component_mm3 > 0:
        mask = remove_small_components(mask, volume.spacing, cfg.min_component_mm3)
    scored = np.zeros(n, dtype=bool)
    scored[todo] = True
    qa = _qa(volume, preset_obj, scored, threshold, threshold_source)
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
    )


def _stack(tensors: list[Any]) -> Any:
    import torch

    return torch.stack(tensors)


def _slice_shapes(volume: Volume, axis: int) -> tuple[int, ...]:
    return tuple(volume.get_slice(0, axis).shape)


def _pick_threshold(cfg: InferenceConfig, model: AACLIP, preset: str) -> tuple[float, str]:
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
