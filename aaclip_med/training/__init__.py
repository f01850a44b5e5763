"""AA-CLIP training on the user's labelled images or volumes: :func:`train` (both stages), data, losses.

Example:
    >>> from aaclip_med.training import train
    >>> train("manifest.csv", "runs/t1", model="aaclip-tiny", backbone_weights="random")  # doctest: +SKIP
"""

from __future__ import annotations

from aaclip_med.training.api import train

__all__ = ["train"]
