"""Thresholding, component removal in mm3, volume-score aggregation and display normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from aaclip_med.errors import ConfigError, GeometryError
from aaclip_med.postprocess import (
    aggregate_volume_score,
    remove_small_components,
    threshold_map,
)


def test_threshold_map_is_strict_uint8_and_nan_is_background() -> None:
    heat = np.array([[[0.5, 1.0, 1.5, np.nan]]], np.float32)
    mask = threshold_map(heat, 1.0)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, [[[0, 0, 1, 0]]])
    with pytest.raises(ConfigError, match="finite"):
        threshold_map(heat, float("nan"))


def test_component_removal_uses_physical_volume_with_anisotropic_spacing() -> None:
    mask = np.zeros((20, 20, 10), np.uint8)
    mask[1:3, 1:3, 1:3] = 1  # 8 voxels
    mask[10:14, 10:14, 5:7] = 1  # 32 voxels
    spacing = (0.5, 0.5, 4.0)  # 1 mm3 per voxel: 8 mm3 and 32 mm3
    kept = remove_small_components(mask, spacing, min_size_mm3=10.0)
    assert kept.dtype == np.uint8
    assert kept[1:3, 1:3, 1:3].sum() == 0 and kept[10:14, 10:14, 5:7].all()
    assert int(kept.sum()) == 32
    # the same voxel counts on a 2x2x2 mm grid are 64 and 256 mm3: both stay
    assert int(remove_small_components(mask, (2.0, 2.0, 2.0), min_size_mm3=10.0).sum()) == 40
    # exactly at the limit is kept
    assert int(remove_small_components(mask, spacing, min_size_mm3=8.0).sum()) == 40
    np.testing.assert_array_equal(remove_small_components(mask, spacing, 0.0), mask)


def test_component_removal_joins_corner_neighbours() -> None:
    mask = np.zeros((5, 5, 5), np.uint8)
    mask[1, 1, 1] = mask[2, 2, 2] = mask[3, 3, 3] = 1  # a diagonal chain: one 26-connected component of 3
    assert int(remove_small_components(mask, (1.0, 1.0, 1.0), min_size_mm3=3.0).sum()) == 3
    assert int(remove_small_components(mask, (1.0, 1.0, 1.0), min_size_mm3=3.5).sum()) == 0


def test_component_removal_rejects_bad_inputs() -> None:
    with pytest.raises(GeometryError, match="3D"):
        remove_small_components(np.zeros((4, 4), np.uint8), (1.0, 1.0, 1.0), 1.0)
    with pytest.raises(GeometryError, match="positive"):
        remove_small_components(np.zeros((4, 4, 4), np.uint8), (1.0, 0.0, 1.0), 1.0)


def test_volume_score_uses_only_scored_slices() -> None:
    scores = np.array([9.0, 1.0, 4.0, 2.0, 3.0], np.float32)
    scored = np.array([False, True, True, True, True])
    assert aggregate_volume_score(scores, scored, "max") == 4.0
    assert aggregate_volume_score(scores, scored, "topk_mean", k=3) == pytest.approx(3.0)
    assert aggregate_volume_score(scores, scored, "topk_mean", k=10) == pytest.approx(2.5)  # all 4 scored
    with pytest.raises(ConfigError, match="did you mean|one of"):
        aggregate_volume_score(scores, scored, "mean")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="k >= 1"):
        aggregate_volume_score(scores, scored, "topk_mean", k=0)


def test_volume_score_without_scored_slices_warns_and_is_zero() -> None:
    with pytest.warns(UserWarning, match="No slice was scored"):
        assert aggregate_volume_score(np.ones(3), np.zeros(3, bool), "topk_mean") == 0.0
