"""`score_volume` against oracles: batch-size invariance and MONAI's `SliceInferer` on the map path (fp32)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import SliceInferer

from aaclip_med._typing import SliceScorer
from aaclip_med.config import InferenceConfig
from aaclip_med.inference import VolumeResult, score_volume
from aaclip_med.io import read_volume
from aaclip_med.model import AACLIP
from aaclip_med.presets import get_preset
from aaclip_med.transforms import foreground_mask, inverse_resize, slice_transform, volume_window
from aaclip_med.volume import Volume, stack_slices
from tests.model.conftest import build_tiny

SIZE = 64  # tiny backbone at 64 px (a 4x4 patch grid): the real AA-CLIP forward, in milliseconds
# fp32 matmuls of another batch size may sum in another order: maps of magnitude ~2 then differ by a few ulp
ATOL = 1e-5


@pytest.fixture(scope="module")
def model() -> AACLIP:
    return build_tiny(image_size=SIZE)


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    """An LPS-stored MR-like volume of 9 axial slices (not a multiple of any batch size) with a bright block."""
    rng = np.random.default_rng(3)
    data = rng.normal(100, 10, (24, 20, 9)).astype(np.float32)
    data[8:14, 6:12, 3:6] = 300
    path = tmp_path_factory.mktemp("vol") / "v.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, -1.0, 2.5, 1.0])), path)
    return read_volume(path)


def _score(model: AACLIP, volume: Volume, batch_size: int) -> VolumeResult:
    return score_volume(model, volume, "mri", config=InferenceConfig(batch_size=batch_size, progress=False))


def test_maps_and_scores_do_not_depend_on_the_batch_size(model: AACLIP, volume: Volume) -> None:
    results = {b: _score(model, volume, b) for b in (1, 3, 8)}
    one = results[1]
    assert one.scored.all() and one.heatmap.dtype == np.float32
    assert float(np.ptp(one.heatmap)) > 1e-3  # a real map, not a constant
    for b in (3, 8):
        np.testing.assert_allclose(results[b].heatmap, one.heatmap, rtol=0, atol=ATOL, err_msg=f"batch {b}")
        np.testing.assert_allclose(results[b].slice_scores, one.slice_scores, rtol=0, atol=ATOL)
        assert results[b].score == pytest.approx(one.score, abs=ATOL)
        np.testing.assert_array_equal(results[b].mask, one.mask)


def test_maps_equal_monai_slice_inferer(model: AACLIP, volume: Volume) -> None:
    """MONAI's SliceInferer over the preprocessed slices, then inverse resize and restack: score_volume's map.

    The slices get the volume's one window (DESIGN §0); with ``score_region="image"`` every voxel of a scored slice
    keeps its map value, and with the default foreground region the voxels inside the foreground do.
    """
    preset = get_preset("mri")
    transform = slice_transform(preset, model.input_size)
    slices = list(volume.iter_slices())
    bounds = volume_window(volume.data, foreground_mask(volume.data, preset.foreground), preset.window)
    stack = torch.stack([transform(s, bounds) for s in slices], dim=-1)[None]  # (1, 3, S, S, n_slices)
    inferer = SliceInferer(roi_size=(SIZE, SIZE), spatial_dim=2, sw_batch_size=4, progress=False)
    with torch.inference_mode():  # score_slices returns inference tensors, which MONAI then scales in place
        out = inferer(stack, lambda x: model.score_slices(x, preset).maps[:, None])
    assert tuple(out.shape) == (1, 1, SIZE, SIZE, len(slices))
    maps = [inverse_resize(out[0, 0, ..., k], s.shape) for k, s in enumerate(slices)]
    expected = stack_slices(maps, like=volume)
    whole = score_volume(
        model, volume, "mri", config=InferenceConfig(batch_size=3, progress=False, score_region="image")
    )
    assert whole.scored.all() and whole.window == bounds
    np.testing.assert_allclose(whole.heatmap, expected, rtol=0, atol=ATOL)
    np.testing.assert_allclose(whole.slice_scores, [float(m.max()) for m in maps], rtol=0, atol=ATOL)
    inside = _score(model, volume, 3)
    fg = inside.scored_voxels
    assert fg.any() and not fg.all()
    np.testing.assert_allclose(inside.heatmap[fg], expected[fg], rtol=0, atol=ATOL)
    assert float(inside.heatmap[~fg].max()) < float(inside.heatmap[fg].min())  # not scored never outranks


def test_the_model_and_the_test_stubs_are_slice_scorers(model: AACLIP) -> None:
    from tests.test_pipeline import BrightnessModel

    assert isinstance(model, SliceScorer) and isinstance(BrightnessModel(32), SliceScorer)
    assert not isinstance(object(), SliceScorer)
