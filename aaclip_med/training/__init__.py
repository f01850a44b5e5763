"""AA-CLIP training on the user's labelled images or volumes: :func:`train` (both stages), data, losses.

Example:
    >>> from aaclip_med.training import TrainConfig, train
    >>> cfg = TrainConfig(model="aaclip-tiny", backbone_weights="random")
    >>> train("manifest.csv", "runs/t1", cfg)  # doctest: +SKIP
"""

from __future__ import annotations

from aaclip_med.config import TrainConfig
from aaclip_med.training.api import train

__all__ = ["TrainConfig", "train"]
