"""aaclip-med: AA-CLIP anomaly detection for medical volumes.

Example:
    >>> import aaclip_med as am
    >>> model = am.create_model("aaclip-tiny", backbone_weights="random")  # doctest: +SKIP
    >>> vol = am.read_volume("study/")  # doctest: +SKIP
    >>> res = am.score_volume(model, vol, "liver_ct")  # doctest: +SKIP
    >>> am.write_nifti(res.mask, "mask.nii.gz", like=vol)  # doctest: +SKIP

Heavy modules (torch, open_clip, MONAI) are imported on first use of a name, so ``import aaclip_med`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from aaclip_med._version import __version__

# public name -> module that defines it; resolved lazily (PEP 562)
_EXPORTS: dict[str, str] = {
    "AACLIPMedError": "aaclip_med.errors",
    "MODALITY_PRESETS": "aaclip_med.presets",
    "RunConfig": "aaclip_med.config",
    "TrainConfig": "aaclip_med.config",
    "get_preset": "aaclip_med.presets",
    "load_run_config": "aaclip_med.config",
    "load_train_config": "aaclip_med.config",
    "Volume": "aaclip_med.volume",
    "stack_slices": "aaclip_med.volume",
    "read_volume": "aaclip_med.io",
    "write_nifti": "aaclip_med.io",
    "read_organ_mask": "aaclip_med.organ",
    "slice_transform": "aaclip_med.transforms",
    "create_model": "aaclip_med.model.factory",
    "list_models": "aaclip_med.model.factory",
    "SliceOutput": "aaclip_med.model.aaclip",
    "VolumeResult": "aaclip_med.inference",
    "score_volume": "aaclip_med.inference",
    "RunOutputs": "aaclip_med.pipeline",
    "run_study": "aaclip_med.pipeline",
    "describe_volume": "aaclip_med.io",
    "train": "aaclip_med.training",
    "run_cohort": "aaclip_med.cohort",
    "evaluate": "aaclip_med.cohort",
}

__all__ = [
    "MODALITY_PRESETS",
    "AACLIPMedError",
    "RunConfig",
    "RunOutputs",
    "SliceOutput",
    "TrainConfig",
    "Volume",
    "VolumeResult",
    "__version__",
    "create_model",
    "describe_volume",
    "evaluate",
    "get_preset",
    "list_models",
    "load_run_config",
    "load_train_config",
    "read_organ_mask",
    "read_volume",
    "run_cohort",
    "run_study",
    "score_volume",
    "slice_transform",
    "stack_slices",
    "train",
    "write_nifti",
]

if TYPE_CHECKING:
    from aaclip_med.cohort.evaluate import evaluate
    from aaclip_med.cohort.runner import run_cohort
    from aaclip_med.config import RunConfig, TrainConfig, load_run_config, load_train_config
    from aaclip_med.errors import AACLIPMedError
    from aaclip_med.inference import VolumeResult, score_volume
    from aaclip_med.io import describe_volume, read_volume, write_nifti
    from aaclip_med.model.aaclip import SliceOutput
    from aaclip_med.model.factory import create_model, list_models
    from aaclip_med.organ import read_organ_mask
    from aaclip_med.pipeline import RunOutputs, run_study
    from aaclip_med.presets import MODALITY_PRESETS, get_preset
    from aaclip_med.training import train
    from aaclip_med.transforms import slice_transform
    from aaclip_med.volume import Volume, stack_slices


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        msg = f"module 'aaclip_med' has no attribute '{name}'"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
