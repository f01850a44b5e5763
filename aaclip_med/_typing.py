"""Names for recurring types (as TorchIO ``typing.py``), and the :class:`SliceScorer` seam of the scoring loop."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

    from aaclip_med.model.aaclip import SliceOutput
    from aaclip_med.presets import ModalityPreset

PathLike: TypeAlias = "str | os.PathLike[str]"
Array: TypeAlias = npt.NDArray[Any]
Array2D: TypeAlias = npt.NDArray[np.float32]
Array3D: TypeAlias = npt.NDArray[np.float32]
Affine: TypeAlias = npt.NDArray[np.float64]
JSONValue: TypeAlias = "dict[str, JSONValue] | list[JSONValue] | str | int | float | bool | None"


class HasTaps(Protocol):
    """A tap layout: the blocks whose patch tokens give one map level each."""

    @property
    def taps(self) -> tuple[int, ...]:
        """1-indexed block numbers; their count is the number of map levels."""


@runtime_checkable
class SliceScorer(Protocol):
    """What :func:`~aaclip_med.inference.score_volume` needs of a model.

    :class:`~aaclip_med.model.aaclip.AACLIP` is one; a stand-in (a test stub, another 2D model) only needs these
    members. Maps are in raw AA-CLIP units (DESIGN section 0), summed over ``len(layout.taps)`` levels.
    """

    @property
    def input_size(self) -> int:
        """Square input size in pixels."""

    @property
    def untrained_backbone(self) -> bool:
        """True when the backbone is random on purpose (outputs say so)."""

    @property
    def threshold(self) -> float | None:
        """Calibrated threshold in map units, or None."""

    @property
    def threshold_presets(self) -> tuple[str, ...]:
        """Presets the threshold was calibrated on; empty when any."""

    @property
    def layout(self) -> HasTaps:
        """The tap layout (the number of levels sets the default threshold)."""

    def score_slices(self, x: torch.Tensor, preset: str | ModalityPreset) -> SliceOutput:
        """Maps ``(B, H, W)`` and scores ``(B,)`` for CLIP-normalised slices ``(B, 3, H, W)``."""

    def metadata(self) -> dict[str, Any]:
        """Provenance for run.json."""
