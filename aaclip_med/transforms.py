"""Slice preprocessing for CLIP: intensity window, resize, grey to RGB and CLIP normalisation.

The chain is made of MONAI array transforms (``ScaleIntensityRange``, ``Resize``, ``RepeatChannel``,
``NormalizeIntensity``); the window's bounds come from the preset: fixed HU for CT, percentiles or a z-score of
the slice's foreground for MRI. :func:`inverse_resize` brings model maps back to the slice grid.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms.compose import Compose
from monai.transforms.intensity.array import NormalizeIntensity, ScaleIntensityRange
from monai.transforms.spatial.array import Resize
from monai.transforms.utility.array import RepeatChannel

from aaclip_med._typing import Array, Array2D
from aaclip_med.config import ForegroundRule, ModalityPreset, WindowConfig, get_preset
from aaclip_med.errors import ConfigError
from aaclip_med.volume import replace_nan

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "SliceTransform",
    "foreground_mask",
    "inverse_resize",
    "slice_transform",
    "window",
]

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_RELATIVE_TOP_PERCENTILE = 99.5  # robust top of the range for relative foreground thresholds
_FILL_SHARE = 0.2  # one exact value on over 20 % of voxels is a background fill, not tissue


def foreground_mask(data: Array, rule: ForegroundRule) -> Array:
    """Boolean mask of foreground voxels; thresholds are computed over the whole array given.

    ``absolute``: ``data > threshold``. ``relative``: when one value fills over 20 % of the array (the zero
    background of skull-stripped or z-scored MRI, whose brain voxels can be negative), every other value is
    foreground; otherwise ``data > vmin + threshold * (p99.5 - vmin)`` (air is the dark end of raw MRI).

    Example:
        >>> foreground_mask(np.array([-1000.0, 40.0]), ForegroundRule("absolute", -500.0)).tolist()
        [False, True]
    """
    arr = np.asarray(data, dtype=np.float32)
    if rule.mode == "absolute":
        return arr > rule.threshold
    if rule.mode == "relative":
        if arr.size == 0:
            return np.zeros(arr.shape, bool)
        fill = _fill_value(arr)
        if fill is not None:
            return arr != fill
        vmin = float(arr.min())
        top = float(np.percentile(arr, _RELATIVE_TOP_PERCENTILE))
        return arr > vmin + rule.threshold * (top - vmin)
    msg = f"Unknown foreground mode '{rule.mode}'; use 'absolute' or 'relative'."
    raise ConfigError(msg)


def _fill_value(arr: Array) -> float | None:
    """The value that fills over :data:`_FILL_SHARE` of the array (a background constant), if any."""
    sample = arr.ravel()[:: max(1, arr.size // 1_000_000)]  # ~1e6 voxels are plenty to find a fill value
    values, counts = np.unique(sample, return_counts=True)
    order = np.argsort(counts)[::-1]
    top = counts[order[0]]
    runner_up = counts[order[1]] if counts.size > 1 else 0
    dominant = top > _FILL_SHARE * sample.size and top > 2 * runner_up  # a fill, not a tie of few values
    return float(values[order[0]]) if dominant else None


def _constant(shape: tuple[int, ...], why: str) -> Array2D:
    warnings.warn(f"{why}; the slice is rendered as zeros", stacklevel=3)
    return np.zeros(shape, np.float32)


def window(slice2d: Array, cfg: WindowConfig, foreground: ForegroundRule) -> Array2D:
    """Map a slice's intensities to [0, 1] (float32) as the preset's window says.

    Constant slices (no contrast in the foreground) warn and give zeros rather than NaN.
    """
    arr, nan_warning = replace_nan(np.asarray(slice2d), "slice")
    if nan_warning:
        warnings.warn(nan_warning, stacklevel=2)
    if cfg.mode == "hu":
        return np.asarray(ScaleIntensityRange(cfg.lower, cfg.upper, 0.0, 1.0, clip=True)(arr), np.float32)
    fg = foreground_mask(arr, foreground)
    values = arr[fg] if fg.sum() > 1 else arr.ravel()
    if cfg.mode == "percentile":
        lo, hi = (float(v) for v in np.percentile(values, [cfg.lower, cfg.upper]))
        if hi <= lo:
            return _constant(arr.shape, f"constant slice (percentiles {cfg.lower}/{cfg.upper} both {lo:g})")
        return np.asarray(ScaleIntensityRange(lo, hi, 0.0, 1.0, clip=True)(arr), np.float32)
    if cfg.mode == "zscore":
        mean, std = float(values.mean()), float(values.std())
        if std <= 0:
            return _constant(arr.shape, f"constant slice (foreground std 0 at {mean:g})")
        lo, hi = mean + cfg.lower * std, mean + cfg.upper * std
        return np.asarray(ScaleIntensityRange(lo, hi, 0.0, 1.0, clip=True)(arr), np.float32)
    msg = f"Unknown window mode '{cfg.mode}'; use 'hu', 'percentile' or 'zscore'."
    raise ConfigError(msg)


def _clamp_unit(x: Array | torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.as_tensor(x), 0.0, 1.0)


class SliceTransform:
    """2D slice -> (3, size, size) CLIP-normalised float32 tensor, for one preset.

    Attributes:
        preset: The resolved :class:`~aaclip_med.config.ModalityPreset`.
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
            "window": {"mode": w.mode, "lower": w.lower, "upper": w.upper},
            "size": self.size,
            "resize": "bicubic",
            "clip_mean": CLIP_MEAN,
            "clip_std": CLIP_STD,
        }

    def __call__(self, slice2d: Array) -> torch.Tensor:
        """Transform one 2D slice (display orientation) into the model's input."""
        if np.ndim(slice2d) != 2:
            msg = f"slice_transform expects a 2D slice, got shape {np.shape(slice2d)}."
            raise ConfigError(msg)
        scaled = window(slice2d, self.preset.window, self.preset.foreground)
        out = self._chain(scaled[None])
        return torch.as_tensor(out).as_subclass(torch.Tensor).to(torch.float32).contiguous()


def slice_transform(preset: str | ModalityPreset, size: int) -> Callable[[Array], torch.Tensor]:
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
