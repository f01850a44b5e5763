"""aaclip-med's slice preprocessing as MONAI dictionary transforms, for a user's own ``Compose``.

Each class is a thin ``MapTransform`` around a function of :mod:`aaclip_med.transforms`, so a MONAI pipeline
feeds the model exactly what :func:`~aaclip_med.inference.score_volume` feeds it:

- :class:`PresetForegroundd`: the preset's foreground rule (:func:`~aaclip_med.transforms.foreground_mask`),
  written to a new key;
- :class:`PresetWindowd`: the preset's intensity window to [0, 1] (:func:`~aaclip_med.transforms.window`), with
  bounds computed over whatever array it is given: a whole volume gives one window per volume;
- :class:`CLIPInputd`: resize, grey to 3 channels and CLIP normalisation of an already windowed slice;
- :class:`ModelInputd`: the whole per-slice model input (:func:`~aaclip_med.transforms.slice_transform`).

Slices are 2D arrays ``(H, W)`` or channel-first ``(1, H, W)``, in display orientation; for an axial volume
loaded with :class:`~aaclip_med.monai_io.AACLIPMedReader`, ``Orientationd(axcodes="PLS")`` puts them there.

Example:
    >>> from monai.transforms import Compose
    >>> prep = Compose([PresetWindowd("image", "ct"), CLIPInputd("image", size=224)])
    >>> prep({"image": np.zeros((1, 40, 48), np.float32)})["image"].shape
    torch.Size([3, 224, 224])
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Hashable, Mapping
from typing import Any, TypeAlias

import numpy as np
import torch
from monai.config.type_definitions import KeysCollection
from monai.transforms.transform import MapTransform
from monai.utils.type_conversion import convert_to_dst_type

from aaclip_med import transforms
from aaclip_med._typing import Array
from aaclip_med.errors import ConfigError
from aaclip_med.presets import ModalityPreset, WindowConfig, get_preset

__all__ = ["CLIPInputd", "ModelInputd", "PresetForegroundd", "PresetWindowd"]

_Image: TypeAlias = "torch.Tensor | Array"  # a tensor (MetaTensor included) or an array, as MONAI passes them

# A fixed window over [0, 1] is the identity on windowed data: CLIPInputd reuses slice_transform's own chain
_IDENTITY_WINDOW = WindowConfig("hu", 0.0, 1.0)


def _slice2d(img: _Image, key: Hashable) -> Array:
    """A 2D slice from ``(H, W)`` or channel-first ``(1, H, W)``."""
    arr = np.asarray(img.detach().cpu() if isinstance(img, torch.Tensor) else img)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        msg = f"'{key}' has shape {arr.shape}; these transforms take one slice, (H, W) or (1, H, W)."
        raise ConfigError(msg)
    return arr


class _Applied(MapTransform):
    """Apply :meth:`fn` to every key."""

    @abstractmethod
    def fn(self, img: _Image, key: Hashable) -> _Image:
        """Transform one value."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.fn(d[key], key)
        return d


class PresetWindowd(_Applied):
    """Map intensities to [0, 1] with the preset's window, as the model's preprocessing does.

    Args:
        keys: Keys of the arrays to window (any shape; the bounds come from the whole array).
        preset: Preset name or object (its ``window`` and ``foreground``).
        allow_missing_keys: Skip absent keys.
    """

    def __init__(
        self, keys: KeysCollection, preset: str | ModalityPreset, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.preset = get_preset(preset)

    def fn(self, img: _Image, key: Hashable) -> _Image:
        """Window one array; a tensor input stays a tensor (a MetaTensor keeps its meta)."""
        out = transforms.window(np.asarray(img), self.preset.window, self.preset.foreground)
        return convert_to_dst_type(out, dst=img)[0] if isinstance(img, torch.Tensor) else out


class PresetForegroundd(MapTransform):
    """Store the preset's foreground mask of each key under ``f"{key}_{postfix}"`` (bool, same shape).

    Args:
        keys: Keys of the arrays (a volume gives thresholds over the volume, as scoring does).
        preset: Preset name or object (its ``foreground`` rule).
        postfix: Suffix of the new keys.
        allow_missing_keys: Skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        preset: str | ModalityPreset,
        postfix: str = "foreground",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.preset = get_preset(preset)
        self.postfix = postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Add the masks."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}_{self.postfix}"] = transforms.foreground_mask(np.asarray(d[key]), self.preset.foreground)
        return d


class ModelInputd(_Applied):
    """One slice to the model's input: window, resize, 3 channels, CLIP normalisation (``(3, size, size)``).

    Args:
        keys: Keys of the slices.
        preset: Preset name or object.
        size: The model's input size (``model.input_size``).
        allow_missing_keys: Skip absent keys.
    """

    def __init__(
        self, keys: KeysCollection, preset: str | ModalityPreset, size: int, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = transforms.slice_transform(get_preset(preset), size)

    def fn(self, img: _Image, key: Hashable) -> torch.Tensor:
        """Transform one slice."""
        return self.transform(_slice2d(img, key))


class CLIPInputd(ModelInputd):
    """An already windowed slice (values in [0, 1]) to ``(3, size, size)``: resize, 3 channels, CLIP normalisation.

    Use after :class:`PresetWindowd` on a volume (one window per volume). The chain is
    :func:`~aaclip_med.transforms.slice_transform`'s own, behind a window that is the identity on [0, 1].

    Args:
        keys: Keys of the slices.
        size: The model's input size (``model.input_size``).
        allow_missing_keys: Skip absent keys.
    """

    def __init__(self, keys: KeysCollection, size: int, allow_missing_keys: bool = False) -> None:
        preset = dataclasses.replace(get_preset("reference"), window=_IDENTITY_WINDOW)
        super().__init__(keys, preset, size, allow_missing_keys)
