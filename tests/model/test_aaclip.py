"""Forward paths of the tiny model: oracle taps, anchors, maps, determinism, V-V axis, precision."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from aaclip_med.errors import ConfigError
from aaclip_med.model import AACLIP
from aaclip_med.presets import get_preset


def _x(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def test_taps_equal_open_clip_intermediates_when_lambda_zero(tiny: AACLIP) -> None:
    x = _x()
    tiny.lam_image = 0.0
    try:
        with torch.no_grad():
            taps = tiny.vision_taps(x)
            ref = tiny.clip.visual.forward_intermediates(
                x, indices=[t - 1 for t in tiny.layout.taps], output_fmt="NLC", output_extra_tokens=True
            )
    finally:
        tiny.lam_image = tiny.spec.lam_image
    for ours, patches, prefix in zip(
        taps, ref["image_intermediates"], ref["image_intermediates_prefix"], strict=True
    ):
        # fused SDPA attention (aaclip.sdpa_block) vs open_clip's nn.MultiheadAttention: float rounding only
        torch.testing.assert_close(ours, torch.cat([prefix, patches], dim=1), rtol=0, atol=1e-5)


def test_adapters_change_taps(tiny: AACLIP) -> None:
    x = _x()
    with torch.no_grad():
        ref = tiny.clip.visual.forward_intermediates(x, indices=[0], output_fmt="NLC")["image_intermediates"][0]
        assert not torch.allclose(tiny.vision_taps(x)[0][:, 1:], ref)


def test_anchors_unit_columns(tiny: AACLIP) -> None:
    anchors = tiny.text_anchors("brain_mri")
    assert anchors.shape == (64, 2)
    torch.testing.assert_close(anchors.norm(dim=0), torch.ones(2))
    assert tiny.text_anchors("brain_mri") is anchors  # cached
    assert not torch.equal(tiny.text_anchors("liver_ct"), anchors)


def test_anchors_from_prompts_has_grad(tiny: AACLIP) -> None:
    anchors = tiny.anchors_from_prompts(["a scan."], ["a damaged scan.", "a broken scan."])
    anchors[:, 1].sum().backward()
    grads = [p.grad for p in tiny.trainable_parameters(1)]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert not any(p.requires_grad for p in tiny.clip.parameters())
    tiny.zero_grad(set_to_none=True)


def test_score_slices_shapes_and_determinism(tiny: AACLIP) -> None:
    x = _x(3)
    out = tiny.score_slices(x, "brain_mri")
    assert out.maps.shape == (3, 224, 224) and out.level_maps.shape == (4, 3, 224, 224)
    assert out.score.shape == (3,) and out.det_score.shape == (3,)
    assert torch.isfinite(out.maps).all()
    torch.testing.assert_close(out.score, out.maps.flatten(1).amax(1))
    torch.testing.assert_close(out.maps, out.level_maps.sum(0))
    again = tiny.score_slices(x, get_preset("brain_mri"))
    assert torch.equal(again.maps, out.maps)
    single = tiny.score_slices(x[1:2], "brain_mri", return_levels=False)
    assert single.level_maps is None
    torch.testing.assert_close(single.maps[0], out.maps[1], atol=1e-5, rtol=1e-5)


def test_same_seed_same_model(make_tiny: Callable[..., AACLIP]) -> None:
    a, b = make_tiny(seed=3), make_tiny(seed=3)
    x = _x(1)
    assert torch.equal(a.score_slices(x).maps, b.score_slices(x).maps)
    assert a.backbone_info["fingerprint"] != make_tiny(seed=4).backbone_info["fingerprint"]


def test_vv_axis_batch_dependence(tiny: AACLIP) -> None:
    x, other = _x(2), _x(2, seed=1)
    swapped = torch.stack([x[0], other[1]])
    tokens = tiny.surgery_features(x, "tokens")[-1]
    tokens_swapped = tiny.surgery_features(swapped, "tokens")[-1]
    torch.testing.assert_close(tokens[0], tokens_swapped[0], atol=1e-5, rtol=1e-5)
    batch = tiny.surgery_features(x, "batch")[-1]
    batch_swapped = tiny.surgery_features(swapped, "batch")[-1]
    assert (batch[0] - batch_swapped[0]).abs().max() > 1e-3
    assert len(tiny.surgery_features(x)) == 4 and tokens.shape == (2, 196, 64)
    with pytest.raises(ConfigError, match="vv_axis"):
        tiny.surgery_tokens(x, "token")  # type: ignore[arg-type]


def test_vv_batch_of_one_is_out_proj_of_v(tiny: AACLIP) -> None:
    # spec 1: at batch size 1 the reference's V-V attention reduces to out_proj(v)
    from aaclip_med.model.surgery import vv_attention

    attn = tiny.clip.visual.transformer.resblocks[0].attn
    h = torch.randn(1, 7, 64)
    width = h.shape[-1]
    v = torch.nn.functional.linear(h, attn.in_proj_weight[2 * width :], attn.in_proj_bias[2 * width :])
    with torch.no_grad():
        torch.testing.assert_close(vv_attention(attn, h, "batch"), attn.out_proj(v))


def test_bf16_close_to_fp32(tiny: AACLIP, make_tiny: Callable[..., AACLIP]) -> None:
    x = _x(2)
    ref = tiny.score_slices(x, "mri").maps
    low = make_tiny(precision="bf16")
    assert low.precision == "bf16"
    maps = low.score_slices(x, "mri").maps
    assert maps.dtype == torch.float32
    corr = torch.corrcoef(torch.stack([maps.flatten(), ref.flatten()]))[0, 1]
    assert corr >= 0.999


def test_trainable_parameters(tiny: AACLIP) -> None:
    assert sum(p.numel() for p in tiny.trainable_parameters(1)) == sum(
        p.numel() for p in tiny.text_adapter.parameters()
    )
    with pytest.raises(ConfigError):
        tiny.trainable_parameters(3)
    tiny.train()
    assert not tiny.clip.training and tiny.image_adapter.training
    tiny.eval()
