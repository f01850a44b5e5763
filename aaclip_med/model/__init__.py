"""AA-CLIP model: adapters, prompts, the model class and its factory.

Use :func:`aaclip_med.model.factory.create_model` to build a model; the submodules import torch and open_clip.
"""

from __future__ import annotations

from aaclip_med.model.aaclip import AACLIP, SliceOutput
from aaclip_med.model.factory import create_model, list_models

__all__ = ["AACLIP", "SliceOutput", "create_model", "list_models"]
