"""V-V ("DPAM") self-attention used by the frozen stage-1 feature path (spec section 1).

In the surgery blocks the attention is replaced by ``out_proj(softmax(v vᵀ / sqrt(head_dim)) v)`` with ``v`` from
the block's own ``in_proj`` weights; the residual connections and the MLP are kept (single path, as the reference).

``vv_axis="tokens"`` attends over the tokens of each image (the intended behaviour, the default).
``vv_axis="batch"`` reproduces the reference bug: the softmax runs over the batch axis at each token position, so
an image's features depend on the other images in the batch (use it only for parity).

Which blocks: for ViT-L/14 (24 blocks) the reference modifies blocks 6-24 (1-indexed), i.e. from the first tapped
level on. Other depths follow the same rule: V-V attention from the first tap block (round(L/4)) to the last.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from aaclip_med.config import VV_AXES
from aaclip_med.errors import ConfigError

if TYPE_CHECKING:
    from open_clip.transformer import ResidualAttentionBlock

__all__ = ["VVAxis", "check_vv_axis", "vv_attention", "vv_block"]

logger = logging.getLogger(__name__)

VVAxis = Literal["tokens", "batch"]


def check_vv_axis(vv_axis: str) -> VVAxis:
    """Validate a ``vv_axis`` value.

    Raises:
        ConfigError: ``vv_axis`` is neither "tokens" nor "batch".
    """
    if vv_axis not in VV_AXES:
        msg = f"vv_axis={vv_axis!r} is not valid; use 'tokens' (intended) or 'batch' (reference parity)."
        raise ConfigError(msg)
    return vv_axis  # type: ignore[return-value]


def vv_attention(attn: nn.MultiheadAttention, h: torch.Tensor, vv_axis: VVAxis = "tokens") -> torch.Tensor:
    """V-V self-attention with the weights of a batch-first ``nn.MultiheadAttention``.

    Args:
        attn: The block's attention module (its ``in_proj`` value slice and ``out_proj`` are used).
        h: Normalised hidden states, (B, N, C).
        vv_axis: "tokens" (attend over N) or "batch" (attend over B at each token: reference parity).

    Returns:
        (B, N, C) attention output, before the residual add.
    """
    width = h.shape[-1]
    w_v = attn.in_proj_weight[2 * width :]
    b_v = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
    seq = h.transpose(0, 1) if vv_axis == "batch" else h  # (B', N', C): attention runs over N'
    v = F.linear(seq, w_v, b_v)
    n_batch, n_seq, _ = v.shape
    heads = attn.num_heads
    v = v.reshape(n_batch, n_seq, heads, width // heads).transpose(1, 2)  # (B', H, N', hd)
    weights = torch.softmax((v @ v.transpose(-2, -1)) * (width // heads) ** -0.5, dim=-1)
    out: torch.Tensor = attn.out_proj((weights @ v).transpose(1, 2).reshape(n_batch, n_seq, width))
    return out.transpose(0, 1) if vv_axis == "batch" else out


def vv_block(block: ResidualAttentionBlock, x: torch.Tensor, vv_axis: VVAxis = "tokens") -> torch.Tensor:
    """Run an open_clip ``ResidualAttentionBlock`` with its attention swapped for V-V attention.

    Args:
        block: open_clip residual attention block (``ln_1``, ``attn``, ``ls_1``, ``ln_2``, ``mlp``, ``ls_2``).
        x: Residual stream, (B, N, C).
        vv_axis: See :func:`vv_attention`.

    Returns:
        The residual stream after the block.
    """
    x = x + block.ls_1(vv_attention(block.attn, block.ln_1(x), vv_axis))
    return x + block.ls_2(block.mlp(block.ln_2(x)))  # type: ignore[no-any-return]
