"""Slice preprocessing for CLIP: intensity window, resize, grey to RGB and CLIP normalisation.

The chain is made of MONAI array transforms (``ScaleIntensityRange``, ``Resize``, ``RepeatChannel``,
``NormalizeIntensity``); the window's bounds come from the preset: fixed HU for CT, percentiles or a z-score of
the foreground for MRI, derived once per volume by :func:`~aaclip_med.intensity.volume_window` (DESIGN §0
"Window per volume") and given to every slice; only a window with ``scope="image"`` (the ``reference`` preset)
derives them slice by slice. The overlays use the same bounds (:func:`~aaclip_med.intensity.window_bounds` is the
one place they are computed).
:func:`inverse_resize` brings model maps back to the slice grid.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms.compose import Compose
from monai.transforms.intensity.array import NormalizeIntensity, ScaleIntensityRange
from monai.transforms.spatial.array import Resize
from monai.transforms.utility.array import RepeatChannel

from aaclip_med._typing import Array, Array2D
from aaclip_med.errors import ConfigError
from aaclip_med.intensity import body_mask, foreground_mask, foreground_values, volume_window, window_bounds
from aaclip_med.presets import ForegroundRule, ModalityPreset, WindowConfig, get_preset
from aaclip_med.volume import replace_nan

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "SliceTransform",
    "body_mask",
    "foreground_mask",
    "foreground_values",
    "inverse_resize",
    "slice_transform",
    "volume_window",
    "window",
    "window_bounds",
]

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _constant(shape: tuple[int, ...], why: str) -> Array2D:
    warnings.warn(f"{why}; the slice is rendered as zeros", stacklevel=3)
    return np.zeros(shape, np.float32)


def window(
    slice2d: Array, cfg: WindowConfig, foreground: ForegroundRule, bounds: tuple[float, float] | None = None
) -> Array2D:
    """Map a slice's intensities to [0, 1] (float32) as the preset's window says.

    Args:
        slice2d: The slice in stored units.
        cfg: The preset's window.
        foreground: The preset's foreground rule (for bounds taken from this slice).
        bounds: ``(lo, hi)`` from :func:`window_bounds` over the whole volume; ``None`` derives them from this
            slice's foreground (``scope="image"``, the reference rendering; and the fixed ``hu`` limits).

    Constant slices (no contrast in the foreground) warn and give zeros rather than NaN.
    """
    arr, nan_warning = replace_nan(np.asarray(slice2d), "slice")
    if nan_warning:
        warnings.warn(nan_warning, stacklevel=2)
    if bounds is None:
        values = arr if cfg.mode == "hu" else foreground_values(arr, foreground_mask(arr, foreground))
        bounds = window_bounds(values, cfg)
    lo, hi = bounds
    if hi <= lo:
        return _constant(arr.shape, f"constant slice (window {cfg.mode} {cfg.lower}/{cfg.upper} at {lo:g})")
    return np.asarray(ScaleIntensityRange(lo, hi, 0.0, 1.0, clip=True)(arr), np.float32)


def _clamp_unit(x: Array | torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.as_tensor(x), 0.0, 1.0)


class SliceTransform:
    """2D slice -> (3, size, size) CLIP-normalised float32 tensor, for one preset.

    Attributes:
        preset: The resolved :class:`~aaclip_med.presets.ModalityPreset`.
        size: Output side length in pixels.
    """

    def __init__(self, preset: ModalityPreset, size: int) -> None:
        """Build the MONAI chain for ``preset`` at ``size`` pixels."""
        if size < 1:
            msg = f"Slice size must be a positive number of pixels, got {size}."
            raise ConfigError(msg)
        self.preset = preset
        self.size = int(size)
        self._chain = Compose(
            [
                Resize((self.size, self.size), mode="bicubic", anti_aliasing=False),
                _clamp_unit,  # bicubic overshoots [0, 1]; PIL (the reference's resize) clamps too
                RepeatChannel(3),
                NormalizeIntensity(subtrahend=CLIP_MEAN, divisor=CLIP_STD, channel_wise=True),
            ]
        )

    @property
    def params(self) -> dict[str, Any]:
        """The parameters, for run.json."""
        w = self.preset.window
        return {
            "preset": self.preset.name,
            "window": {"mode": w.mode, "lower": w.lower, "upper": w.upper, "scope": w.scope},
            "size": self.size,
            "resize": "bicubic",
            "clip_mean": CLIP_MEAN,
            "clip_std": CLIP_STD,
        }

    def __call__(self, slice2d: Array, bounds: tuple[float, float] | None = None) -> torch.Tensor:
        """Transform one 2D slice (display orientation) into the model's input.

        ``bounds``: the volume's window from :func:`window_bounds` (None: derived from this slice, see
        :func:`window`).
        """
        if np.ndim(slice2d) != 2:
            msg = f"slice_transform expects a 2D slice, got shape {np.shape(slice2d)}."
            raise ConfigError(msg)
        scaled = window(slice2d, self.preset.window, self.preset.foreground, bounds)
        out = self._chain(scaled[None])
        return torch.as_tensor(out).as_subclass(torch.Tensor).to(torch.float32).contiguous()


def slice_transform(preset: str | ModalityPreset, size: int) -> SliceTransform:
    """The preprocessing of one preset at one input size.

    Example:
        >>> t = slice_transform("liver_ct", 32)
        >>> t(np.zeros((20, 24), np.float32)).shape
        torch.Size([3, 32, 32])
    """
    return SliceTransform(get_preset(preset), size)


def inverse_resize(map2d: Array | torch.Tensor, shape: tuple[int, int]) -> Array2D:
    """Bilinearly resize a model map (H, W) back to a slice's shape (float32 numpy)."""
    t = torch.as_tensor(np.asarray(map2d, dtype=np.float32) if not torch.is_tensor(map2d) else map2d)
    t = t.detach().to("cpu", torch.float32)[None, None]
    out = F.interpolate(t, size=tuple(int(s) for s in shape), mode="bilinear", align_corners=False)
    return out[0, 0].numpy()
