"""CPU int8 inference: dynamic int8 quantisation of the frozen vision tower's linear layers (``precision="int8"``).

Weights are quantised once, per output channel (``torch.ao`` dynamic quantised ``Linear``); activations are
quantised per call from their observed range. The weights are packed for the quantised engine of
:func:`int8_engine`: ``onednn`` where the CPU has AMX-INT8 (oneDNN runs int8 matmuls on AMX tiles; fbgemm has no
AMX kernels), else ``x86`` (fbgemm: AVX2 / AVX-512 VNNI kernels; on this project's AVX-512 VNNI Xeon the two
engines gave identical maps and speeds within 3 %, under AVX2 caps fbgemm was 6 % faster). Packed weights keep
their engine whatever ``torch.backends.quantized.engine`` says later. Quantised per vision block:

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
from aaclip_med.model.backends import amx_int8_usable

if TYPE_CHECKING:
    from open_clip.model import CLIP
    from open_clip.transformer import ResidualAttentionBlock

__all__ = [
    "Int8SelfAttention",
    "Originals",
    "int8_engine",
    "quantize_block_",
    "quantize_vision_",
    "quantized_linear",
    "restore_modules_",
]

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


def int8_engine() -> str:
    """The quantised engine int8 weights are packed for: ``onednn`` where AMX-INT8 is usable, else ``x86``."""
    onednn = "onednn" in torch.backends.quantized.supported_engines
    return "onednn" if onednn and amx_int8_usable() else "x86"


@contextlib.contextmanager
def _packing_engine(engine: str) -> Iterator[None]:
    """``torch.backends.quantized.engine`` set to ``engine`` while weights are packed, then restored."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def quantized_linear(weight: torch.Tensor, bias: torch.Tensor | None, engine: str = "x86") -> nn.Module:
    """A dynamic int8 ``Linear`` (per-channel weights packed for ``engine``) ~ ``F.linear(x, weight, bias)``."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    with torch.no_grad():
        dense = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        dense.weight.copy_(weight.detach().float())
        if bias is not None:
            dense.bias.copy_(bias.detach().float())
    dense.qconfig = per_channel_dynamic_qconfig  # type: ignore[assignment]
    with _quiet_deprecation(), _packing_engine(engine):
        return DynamicLinear.from_float(dense)  # type: ignore[no-any-return]


class Int8SelfAttention(nn.Module):
    """Stand-in for a batch-first self-attention ``nn.MultiheadAttention`` with int8 dynamic projections.

    Called as open_clip's ``ResidualAttentionBlock.attention`` calls ``nn.MultiheadAttention``:
    ``attn(x, x, x, need_weights=False, attn_mask=None)`` -> ``(out, None)``. Cross-attention, masks and
    attention weights are not supported (the vision tower uses none of them).
    """

    def __init__(self, mha: nn.MultiheadAttention, engine: str = "x86") -> None:
        super().__init__()
        if not mha.batch_first or not mha._qkv_same_embed_dim or mha.bias_k is not None:
            msg = "Int8SelfAttention needs a batch-first self-attention nn.MultiheadAttention"
            raise ValueError(msg)
        self.num_heads, self.embed_dim, self.batch_first = mha.num_heads, mha.embed_dim, True
        self.in_proj = quantized_linear(mha.in_proj_weight, mha.in_proj_bias, engine)
        self.out_proj = quantized_linear(mha.out_proj.weight, mha.out_proj.bias, engine)

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


def quantize_block_(
    block: ResidualAttentionBlock, attention: bool = True, keep: Originals | None = None, engine: str | None = None
) -> dict[str, int]:
    """Quantise the linear layers of one open_clip ``ResidualAttentionBlock`` in place (:func:`quantize_vision_`).

    Returns:
        Counts of quantised layers: ``{"mlp": ..., "attention": ...}``.
    """
    engine = engine or int8_engine()
    counts = {"mlp": 0, "attention": 0}
    for name in ("c_fc", "c_proj"):
        layer = getattr(block.mlp, name)
        if keep is not None:
            keep.append((block.mlp, name, layer))
        setattr(block.mlp, name, quantized_linear(layer.weight, layer.bias, engine))
        counts["mlp"] += 1
    if attention and isinstance(block.attn, nn.MultiheadAttention):
        if keep is not None:
            keep.append((block, "attn", block.attn))
        block.attn = Int8SelfAttention(block.attn, engine)
        counts["attention"] += 2
    return counts


def quantize_vision_(
    clip: CLIP, attention: bool = True, originals: Originals | None = None, engine: str | None = None
) -> dict[str, int]:
    """Quantise the linear layers of every vision block of an open_clip ``CLIP`` in place (CPU, eval).

    Args:
        clip: The open_clip model; only ``clip.visual.transformer.resblocks`` change.
        attention: Also quantise the attention projections (``in_proj``/``out_proj``); False keeps them fp32.
        originals: Where to keep the replaced fp32 modules (the int8 accuracy guard restores them with
            :func:`restore_modules_` when int8 fails it); None: they are dropped.
        engine: Quantised engine the weights are packed for; None: :func:`int8_engine`.

    Returns:
        Counts of quantised layers: ``{"mlp": ..., "attention": ...}``.
    """
    engine = engine or int8_engine()
    counts = {"mlp": 0, "attention": 0}
    for block in clip.visual.transformer.resblocks:
        for part, count in quantize_block_(block, attention, originals, engine).items():
            counts[part] += count
    logger.info(
        "int8: quantised %d MLP and %d attention linear layers of the vision tower (engine %s)",
        counts["mlp"],
        counts["attention"],
        engine,
    )
    return counts


def restore_modules_(originals: Originals) -> None:
    """Put back the fp32 modules :func:`quantize_vision_` replaced (and kept in ``originals``), emptying it."""
    for parent, name, module in reversed(originals):
        setattr(parent, name, module)
    originals.clear()
