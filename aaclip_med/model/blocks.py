"""Building blocks of the adapted vision tower: the adapter/tap layout and the fused block runner.

:class:`Layout` (:func:`derive_layout`) places adapters and taps by the backbone depth (DESIGN section 0);
:func:`sdpa_block` runs one open_clip block with the attention core of :mod:`aaclip_med.model.attention`, as
:class:`~aaclip_med.model.aaclip.AACLIP` and the speed probes (:mod:`aaclip_med.model.precision_probe`) do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from aaclip_med.model.attention import self_attention
from aaclip_med.model.quantize import Int8SelfAttention

if TYPE_CHECKING:
    from open_clip.transformer import ResidualAttentionBlock

__all__ = ["CPU_CHUNK", "Layout", "derive_layout", "sdpa_block"]

CPU_CHUNK = 2  # images per vision pass on CPU at inference (measured, benchmarks/README.md)


@dataclass(frozen=True, slots=True)
class Layout:
    """Where adapters and taps sit, as 1-indexed block numbers (DESIGN section 0 scaling rule)."""

    taps: tuple[int, ...]  # blocks after which patch tokens are taken: round(k*L/4), k=1..4
    image_adapt_until: int  # vision adapters after blocks 1..this (L/4, at least 1)
    text_adapt_until: int  # text adapters after blocks 1..this (L_text/4, at least 1)
    surgery_from: int  # V-V attention in blocks surgery_from..L (the first tap; 6 of 24 as the reference)


def derive_layout(vision_layers: int, text_layers: int) -> Layout:
    """Derive the adapter/tap layout from the backbone depths (24, 12 -> taps 6/12/18/24, 6 and 3 adapters)."""
    taps = tuple(sorted({max(1, math.floor(k * vision_layers / 4 + 0.5)) for k in range(1, 5)}))
    return Layout(taps, max(1, vision_layers // 4), max(1, text_layers // 4), taps[0])


def sdpa_block(block: ResidualAttentionBlock, x: torch.Tensor, attention: str = "sdpa") -> torch.Tensor:
    """An open_clip ``ResidualAttentionBlock`` (batch-first, self-attention, no mask) through fused SDPA.

    Same maths and weights as ``block(x)``; ``nn.MultiheadAttention`` runs a slower unfused path on CPU
    (about 25% of a ViT-L block at 1370 tokens, benchmarks/README.md). ``attention`` names the kernel of the
    attention core (:func:`aaclip_med.model.attention.self_attention`; int8 blocks always use SDPA).
    """
    attn, h = block.attn, block.ln_1(x)
    if isinstance(attn, Int8SelfAttention):  # precision "int8" (aaclip_med.model.quantize)
        out = attn(h)[0]
    else:
        qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
        out = attn.out_proj(self_attention(qkv, attn.num_heads, attention))
    x = x + block.ls_1(out)
    return x + block.ls_2(block.mlp(block.ln_2(x)))  # type: ignore[no-any-return]
