"""Slice preprocessing: windows, CLIP normalisation, degenerate slices and the inverse resize."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aaclip_med.presets import ForegroundRule, WindowConfig, get_preset
from aaclip_med.transforms import CLIP_MEAN, CLIP_STD, foreground_mask, inverse_resize, slice_transform, window

MEAN = torch.tensor(CLIP_MEAN)[:, None, None]
STD = torch.tensor(CLIP_STD)[:, None, None]


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * STD + MEAN


def test_ct_hu_window_shape_and_values() -> None:
    img = np.full((20, 30), -1000.0, np.float32)
    img[5:15, 10:20] = 25.0  # the middle of the liver window [-200, 250]
    out = slice_transform("liver_ct", 40)(img)
    assert out.shape == (3, 40, 40) and out.dtype == torch.float32 and type(out) is torch.Tensor
    rgb = unnormalise(out)
    assert torch.allclose(rgb[:, 0, 0], torch.zeros(3), atol=1e-5)  # air -> 0
    assert torch.allclose(rgb[:, 20, 20], torch.full((3,), 0.5), atol=1e-4)  # 25 HU -> (25+200)/450
    assert torch.allclose(rgb[0], rgb[1], atol=1e-6)  # grey replicated to RGB


def test_percentile_window_uses_foreground() -> None:
    img = np.zeros((32, 32), np.float32)
    img[8:24, 8:24] = np.linspace(100, 200, 256).reshape(16, 16)
    scaled = window(img, WindowConfig("percentile", 0.0, 100.0), ForegroundRule("relative", 0.05))
    assert scaled[8, 8] == pytest.approx(0.0) and scaled[23, 23] == pytest.approx(1.0)
    assert scaled.dtype == np.float32


def test_zscore_window() -> None:
    img = np.random.default_rng(0).normal(50, 10, (16, 16)).astype(np.float32)
    scaled = window(img, WindowConfig("zscore", -3.0, 3.0), ForegroundRule("absolute", -1e9))
    assert 0.0 <= scaled.min() and scaled.max() <= 1.0 and abs(float(np.median(scaled)) - 0.5) < 0.05


@pytest.mark.parametrize("preset", ["brain_mri", "mri", "reference"])
def test_constant_slice_gives_zeros_not_nan(preset: str) -> None:
    with pytest.warns(UserWarning, match="constant slice"):
        out = slice_transform(preset, 16)(np.full((10, 12), 7.0, np.float32))
    assert torch.isfinite(out).all()
    assert torch.allclose(unnormalise(out), torch.zeros(3, 16, 16), atol=1e-5)
    cfg = get_preset("mri").foreground
    with pytest.warns(UserWarning, match="constant slice"):
        assert not np.isnan(window(np.ones((4, 4)), WindowConfig("zscore", -3, 3), cfg)).any()


def test_nan_in_slice_is_replaced() -> None:
    img = np.arange(100, dtype=np.float32).reshape(10, 10)
    img[3, 3] = np.nan
    with pytest.warns(UserWarning, match="NaN"):
        out = slice_transform("mri", 8)(img)
    assert torch.isfinite(out).all()


def test_inverse_resize_and_foreground() -> None:
    small = np.arange(16, dtype=np.float32).reshape(4, 4)
    back = inverse_resize(small, (9, 13))
    assert back.shape == (9, 13) and back.dtype == np.float32
    assert inverse_resize(torch.ones(5, 5), (7, 3)).tolist() == np.ones((7, 3)).tolist()
    data = np.array([-1000.0, -600, -400, 100])
    assert foreground_mask(data, ForegroundRule("absolute", -500.0)).tolist() == [False, False, True, True]
    assert foreground_mask(np.array([0.0, 0.01, 1, 2]), ForegroundRule("relative", 0.05)).tolist() == [
        False,
        False,
        True,
        True,
    ]


@pytest.mark.parametrize("size", [30, 24])
def test_ct_slice_by_hand_and_no_warning(size: int) -> None:
    """The `ct` chain recomputed with numpy/torch: HU window [-160, 240], bicubic resize, clamp, CLIP normalise."""
    slice2d = np.random.default_rng(1).normal(0, 100, (30, 30)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = slice_transform("ct", size)(slice2d)
    scaled = torch.from_numpy(np.clip((slice2d + 160.0) / 400.0, 0.0, 1.0))[None, None]
    resized = F.interpolate(scaled, size=(size, size), mode="bicubic", align_corners=False)[0].clamp(0, 1)
    expected = (resized.expand(3, -1, -1) - MEAN) / STD
    assert out.shape == (3, size, size) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6 if size != 30 else 0)


def test_relative_foreground_uses_fill_value_of_zscored_mri() -> None:
    """Z-scored brain MRI: zero background, about half of the brain negative; all of the brain is foreground."""
    rng = np.random.default_rng(0)
    data = np.zeros((20, 20, 10), np.float32)
    data[5:15, 5:15, 2:8] = rng.normal(0.0, 1.0, (10, 10, 6)).astype(np.float32)
    fg = foreground_mask(data, ForegroundRule())
    np.testing.assert_array_equal(fg, data != 0)
