"""Scoring with a normal-reference memory: the memory map and its fusion with the text map.

Rule (README "Normal-reference mode"):

- window: the study is preprocessed with the memory's window (:meth:`ReferenceScorer.scoring_preset`; by default
  the foreground's whole range, :mod:`.build`), so query and memory tokens come from one rendering;
  ``fusion="text"`` keeps the preset's window (the plain AA-CLIP map);
- memory map: per patch and level, the cosine distance to the nearest memory patch, summed over the levels,
  optionally blurred on the patch grid (``memory_blur``, sigma in patches; default off, keeping the map sharp;
  its measured effect is in benchmarks/README.md), bilinearly upsampled as the text map;
- normalisation: both maps become z-scores against the reference's own normal patches (the mean and standard
  deviation stored in the memory at build time, :mod:`.calibration`), so "3" means three normal standard deviations
  for either map and for the fusion;
- fusion: ``w * z_memory + (1 - w) * z_text`` with ``w = fusion_weight``, default 0.5, the equal average of the
  zero-shot and few-shot maps of MVFA-AD and APRIL-GAN's few-shot track; ``fusion="memory"`` is ``z_memory``
  alone, ``fusion="text"`` the unchanged AA-CLIP map (raw units);
- default threshold for memory and fused maps: :data:`REFERENCE_THRESHOLD` normal standard deviations.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from aaclip_med._typing import SliceScorer
from aaclip_med.config import InferenceConfig
from aaclip_med.errors import ConfigError
from aaclip_med.model.aaclip import AACLIP, Layout, SliceOutput
from aaclip_med.model.maps import gaussian_blur, level_anomaly_maps
from aaclip_med.presets import ModalityPreset, WindowConfig, get_preset
from aaclip_med.reference.memory import PatchMemory, check_memory, load_memory, nearest_distance

__all__ = ["REFERENCE_THRESHOLD", "ReferenceScorer", "attach_reference", "blur_kernel", "memory_grid"]

REFERENCE_THRESHOLD = 3.0  # normal standard deviations (z units) above the reference's mean


def blur_kernel(sigma: float) -> int:
    """Odd Gaussian kernel size for ``sigma`` patches: ``2 * round(3 sigma) + 1`` (1.5 -> 9, the preset blur)."""
    return 2 * round(3 * sigma) + 1 if sigma > 0 else 0


def memory_grid(seg: list[torch.Tensor], memory: PatchMemory, grid: tuple[int, int]) -> torch.Tensor:
    """Memory map on the patch grid: per patch the nearest-neighbour cosine distance summed over levels.

    Args:
        seg: Per level (B, N, D) unit patch tokens.
        memory: The memory, on the tokens' device.
        grid: (rows, cols), rows * cols = N.

    Returns:
        (B, rows, cols) float32.
    """
    total = sum(nearest_distance(tokens, level) for tokens, level in zip(seg, memory.levels, strict=True))
    return torch.as_tensor(total).reshape(seg[0].shape[0], *grid)


class ReferenceScorer:
    """An :class:`AACLIP` plus a memory: a :class:`~aaclip_med._typing.SliceScorer` for ``score_volume``.

    Attributes:
        model: The wrapped model.
        memory: The normal-reference memory (checked against the model).
        fusion: ``fused``, ``memory`` or ``text``.
        weight: Memory weight of ``fused``.
        blur_sigma: Memory-map blur in patches (0: none).
    """

    def __init__(
        self,
        model: AACLIP,
        memory: PatchMemory,
        fusion: str = "fused",
        weight: float = 0.5,
        blur_sigma: float = 0.0,
    ) -> None:
        check_memory(memory, model.metadata(), None)
        self.model, self.memory = model, memory.to(model.device)
        self.fusion, self.weight, self.blur_sigma = fusion, weight, blur_sigma
        cal = memory.metadata["calibration"]
        self._norm = {k: (float(cal[k]["mean"]), max(float(cal[k]["std"]), 1e-6)) for k in ("memory", "text")}

    @property
    def input_size(self) -> int:
        """The model's input size."""
        return self.model.input_size

    @property
    def untrained_backbone(self) -> bool:
        """Whether the model's backbone is random."""
        return bool(self.model.untrained_backbone)

    @property
    def layout(self) -> Layout:
        """The model's tap layout."""
        return self.model.layout

    @property
    def threshold(self) -> float | None:
        """The checkpoint's threshold for ``text``; :data:`REFERENCE_THRESHOLD` for the z-scored maps."""
        return self.model.threshold if self.fusion == "text" else REFERENCE_THRESHOLD

    @property
    def threshold_presets(self) -> tuple[str, ...]:
        """Presets the threshold holds for."""
        return self.model.threshold_presets if self.fusion == "text" else (str(self.memory.metadata["preset"]),)

    def metadata(self) -> dict[str, Any]:
        """The model's provenance plus the reference (path, sha256, patch count) and the fusion rule."""
        return {**self.model.metadata(), "reference": self.describe()}

    def describe(self) -> dict[str, Any]:
        """The reference and fusion settings, for run.json and qa.json."""
        return {**self.memory.describe(), "fusion": self.fusion, "fusion_weight": self.weight,
                "memory_blur_sigma": self.blur_sigma, "normalisation": "z-score vs reference normals",
                "calibration": self.memory.metadata["calibration"]}  # fmt: skip

    def scoring_preset(self, preset: ModalityPreset) -> ModalityPreset:
        """``preset`` with the memory's window (the one its tokens were rendered with); unchanged for ``text``."""
        window = self.memory.metadata.get("window")
        if self.fusion == "text" or not window:
            return preset
        return dataclasses.replace(preset, window=WindowConfig(**window))

    def _z(self, which: str, values: torch.Tensor) -> torch.Tensor:
        mean, std = self._norm[which]
        return (values - mean) / std

    def score_slices(self, x: torch.Tensor, preset: str | ModalityPreset) -> SliceOutput:
        """Maps and scores of CLIP-normalised slices (B, 3, H, W) by the rule of the module docstring.

        Raises:
            WeightsError: the memory was built for another preset.
        """
        preset = get_preset(preset)
        check_memory(self.memory, self.model.metadata(), preset.name)
        model = self.model
        anchors = model.text_anchors(preset)
        with torch.inference_mode():
            x = x.to(model.device, torch.float32)
            seg, det = model.encode(x, preset)  # the model's backend and precision (int8 guard included)
            size, grid = (x.shape[-2], x.shape[-1]), model.grid(x)
            text = level_anomaly_maps(seg, anchors, grid, size, preset.blur_kernel, preset.blur_sigma).sum(0)
            if self.fusion == "text":
                maps = text
            else:
                mem = gaussian_blur(memory_grid(seg, self.memory, grid)[:, None], blur_kernel(self.blur_sigma),
                                    self.blur_sigma)  # fmt: skip
                mem = F.interpolate(mem, size=size, mode="bilinear", align_corners=True)[:, 0]
                maps = self._z("memory", mem)
                if self.fusion == "fused":
                    maps = self.weight * maps + (1 - self.weight) * self._z("text", text)
            det_score = (det.float() @ anchors[:, 1] + 1) / 2
            return SliceOutput(maps.flatten(1).amax(1), maps, det_score, None)


def attach_reference(
    model: SliceScorer, config: InferenceConfig, preset: ModalityPreset | None = None
) -> ReferenceScorer:
    """``model`` scored against ``config.reference`` (read once per process and checked against the model).

    Raises:
        ConfigError: ``model`` is not an AA-CLIP model (a memory needs its patch tokens).
        WeightsError: the memory is missing, unreadable, or built for another model, adapters, size or preset.
    """
    if not isinstance(model, AACLIP):
        msg = f"--reference needs an AA-CLIP model's patch tokens; {type(model).__name__} has none; drop it."
        raise ConfigError(msg)
    assert config.reference is not None
    memory = load_memory(config.reference)
    check_memory(memory, model.metadata(), None if preset is None else preset.name)
    return ReferenceScorer(model, memory, config.fusion, config.fusion_weight, config.memory_blur)
