"""Adapter modules, the residual rule, initialisation and the paper's trainable-parameter counts."""

from __future__ import annotations

import torch

from aaclip_med.model.aaclip import derive_layout
from aaclip_med.model.adapters import ImageAdapter, SimpleProj, build_text_adapter, residual_blend, xavier_init_


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_vitl14() -> None:
    # ViT-L-14-336 widths: vision 1024, text 768, embed 768; depths 24 / 12 give 6 vision and 3 text adapters
    layout = derive_layout(24, 12)
    assert layout.taps == (6, 12, 18, 24)
    text = build_text_adapter(768, 768, layout.text_adapt_until)
    image = ImageAdapter(1024, 768, layout.image_adapt_until, len(layout.taps))
    assert _count(text) == 2_359_296
    assert _count(image) == 10_223_616


def test_reference_key_names() -> None:
    text = build_text_adapter(8, 4, 3)
    assert sorted(text.state_dict()) == [f"{i}.fc.0.weight" for i in range(4)]
    image = ImageAdapter(8, 4, 2, 4)
    keys = set(image.state_dict())
    assert {"layer_adapters.1.fc.0.weight", "seg_proj.3.fc.weight", "det_proj.fc.weight"} <= keys
    assert "fc.0.weight" in SimpleProj(8, 4, relu=True).state_dict()


def test_layout_scaling_rule() -> None:
    assert derive_layout(4, 4).taps == (1, 2, 3, 4)
    assert derive_layout(12, 12) == derive_layout(12, 12)
    small = derive_layout(12, 12)
    assert small.taps == (3, 6, 9, 12) and small.image_adapt_until == 3 and small.surgery_from == 3
    assert derive_layout(2, 2).image_adapt_until == 1


def test_residual_blend_norm_matching() -> None:
    torch.manual_seed(0)
    x, a = torch.randn(2, 5, 16), torch.randn(2, 5, 16) * 7
    out = residual_blend(x, a, 0.1)
    expected = 0.1 * a / a.norm(dim=-1, keepdim=True) * x.norm(dim=-1, keepdim=True) + 0.9 * x
    torch.testing.assert_close(out, expected)
    assert residual_blend(x, a, 0.0) is x


def test_xavier_init_bounds() -> None:
    torch.manual_seed(0)
    module = build_text_adapter(32, 16, 2)
    xavier_init_(module)
    bound = (6 / (32 + 16)) ** 0.5
    assert float(module[-1].fc[0].weight.detach().abs().max()) <= bound
