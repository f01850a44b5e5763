"""CPU int8 inference: dynamic int8 quantisation of the frozen vision tower's linear layers (``precision="int8"``).

Weights are quantised once, per output channel (``torch.ao`` dynamic quantised ``Linear``, fbgemm/x86 kernels);
activations are quantised per call from their observed range. Quantised per vision block:

- the MLP (``mlp.c_fc``, ``mlp.c_proj``);
- the attention projections: ``attn`` (an ``nn.MultiheadAttention``) is replaced by :class:`Int8SelfAttention`,
  which holds ``in_proj`` and ``out_proj`` as quantised linears and runs the fused SDPA core in fp32 (the
  ``attention`` choice of :mod:`aaclip_med.model.attention` does not apply to int8 blocks).

The patch embedding, ``ln_*``, the adapters, seg/det projections and the text tower stay fp32 (the text anchors
are computed once per preset and cached). Inference only: the quantised layers have no gradient, so
:meth:`aaclip_med.model.aaclip.AACLIP.trainable_parameters` refuses int8 models. Accuracy and speed against fp32
are measured in ``benchmarks/README.md``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from aaclip_med.model.attention import self_attention

if TYPE_CHECKING:
    from open_clip.model import CLIP

__all__ = ["Int8SelfAttention", "Originals", "quantize_vision_", "quantized_linear", "restore_modules_"]

logger = logging.getLogger(__name__)

Originals = list[tuple[nn.Module, str, nn.Module]]  # (parent, attribute, the fp32 module it held)


@contextlib.contextmanager
def _quiet_deprecation() -> Iterator[None]:
    """Silence only torch's deprecation notices of its quantised-tensor API, during the conversion."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel", category=UserWarning
        )
        warnings.filterwarnings(
            "ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning
        )
        yield


def quantized_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A dynamic int8 ``Linear`` (per-channel weights) computing ``F.linear(x, weight, bias)`` approximately."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    with torch.no_grad():
        dense = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        dense.weight.copy_(weight.detach().float())
        if bias is not None:
            dense.bias.copy_(bias.detach().float())
    dense.qconfig = per_channel_dynamic_qconfig  # type: ignore[assignment]
    with _quiet_deprecation():
        return DynamicLinear.from_float(dense)  # type: ignore[no-any-return]


class Int8SelfAttention(nn.Module):
    """Stand-in for a batch-first self-attention ``nn.MultiheadAttention`` with int8 dynamic projections.

    Called as open_clip's ``ResidualAttentionBlock.attention`` calls ``nn.MultiheadAttention``:
    ``attn(x, x, x, need_weights=False, attn_mask=None)`` -> ``(out, None)``. Cross-attention, masks and
    attention weights are not supported (the vision tower uses none of them).
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha.batch_first or not mha._qkv_same_embed_dim or mha.bias_k is not None:
            msg = "Int8SelfAttention needs a batch-first self-attention nn.MultiheadAttention"
            raise ValueError(msg)
        self.num_heads, self.embed_dim, self.batch_first = mha.num_heads, mha.embed_dim, True
        self.in_proj = quantized_linear(mha.in_proj_weight, mha.in_proj_bias)
        self.out_proj = quantized_linear(mha.out_proj.weight, mha.out_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        """Self-attention of ``query`` (B, N, W) with the int8 projections.

        Args:
            query: The block's normalised residual stream, batch first.
            key: ``None`` or ``query`` itself (self-attention only).
            value: ``None`` or ``query`` itself.
            need_weights: Must be False (attention weights are not computed).
            attn_mask: Must be None (no masking).

        Returns:
            ``(out, None)``, as ``nn.MultiheadAttention`` with ``need_weights=False``.

        Raises:
            NotImplementedError: For cross-attention, a mask or a request for the attention weights.
        """
        if need_weights or attn_mask is not None or any(t is not None and t is not query for t in (key, value)):
            msg = "Int8SelfAttention supports unmasked self-attention without weights only"
            raise NotImplementedError(msg)
        return self.out_proj(self_attention(self.in_proj(query), self.num_heads)), None


def quantize_vision_(clip: CLIP, attention: bool = True, originals: Originals | None = None) -> dict[str, int]:
    """Quantise the linear layers of every vision block of an open_clip ``CLIP`` in place (CPU, eval).

    Args:
        clip: The open_clip model; only ``clip.visual.transformer.resblocks`` change.
        attention: Also quantise the attention projections (``in_proj``/``out_proj``); False keeps them fp32.
        originals: Where to keep the replaced fp32 modules (the int8 accuracy guard restores them with
            :func:`restore_modules_` when int8 fails it); None: they are dropped.

    Returns:
        Counts of quantised layers: ``{"mlp": ..., "attention": ...}``.
    """
    counts = {"mlp": 0, "attention": 0}
    keep = originals.append if originals is not None else lambda _: None  # None: each fp32 module freed at once
    for block in clip.visual.transformer.resblocks:
        for name in ("c_fc", "c_proj"):
            layer = getattr(block.mlp, name)
            keep((block.mlp, name, layer))
            setattr(block.mlp, name, quantized_linear(layer.weight, layer.bias))
            counts["mlp"] += 1
        if attention and isinstance(block.attn, nn.MultiheadAttention):
            keep((block, "attn", block.attn))
            block.attn = Int8SelfAttention(block.attn)
            counts["attention"] += 2
    logger.info(
        "int8: quantised %d MLP and %d attention linear layers of the vision tower (engine %s)",
        counts["mlp"],
        counts["attention"],
        torch.backends.quantized.engine,
    )
    return counts


def restore_modules_(originals: Originals) -> None:
    """Put back the fp32 modules :func:`quantize_vision_` replaced (and kept in ``originals``), emptying it."""
    for parent, name, module in reversed(originals):
        setattr(parent, name, module)
    originals.clear()
