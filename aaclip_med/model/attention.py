"""Attention kernels of the vision tower (``attention``; issue 16 item 2e, benchmarks/README.md).

The multi-head self-attention core of every vision block (no mask; ViT-L at 518 px: 1370 tokens, 16 heads of 64)
runs through one of:

- ``sdpa``: PyTorch's fused ``scaled_dot_product_attention`` (on CPU its flash kernel). The default, except
  where bf16/fp16 runs on the CPU with a PyTorch engine: there ``auto`` is measured once on the user's CPU and
  cached (:mod:`aaclip_med.model.tuning`).
- ``matmul``: plain GEMMs over head-batched tensors, ``softmax(q kᵀ / sqrt(d)) v`` by ``baddbmm`` -> ``softmax``
  -> ``bmm``, :data:`MATMUL_HEADS` (batch x head) pairs at a time: their scores (4 x 1370² fp32 = 30 MB) are
  all that is held, instead of 8 x 16 x 1370² fp32 = 960 MB per layer for a batch of 8 unchunked.
- ``blocked``: the same GEMMs over all heads at once, :data:`BLOCK_ROWS` query rows at a time (scores of one
  row block stay in cache).

The two GEMM kernels compute an exact softmax per row (no online rescaling) and run as oneDNN/MKL batched GEMMs,
which use AMX tiles for bf16 on AMX CPUs; in bf16 the scores are bf16 GEMM outputs (fp32 accumulation inside
the GEMM) and the softmax is computed in fp32 internally by PyTorch. The OpenVINO backend always converts the
fused SDPA (OpenVINO runs it with its own attention kernel), so ``auto`` resolves to ``sdpa`` there and an
explicit GEMM kernel is refused. ``AACLIP_MED_ATTENTION`` (:data:`ATTENTION_ENV`) replaces what ``auto``
picks, as ``AACLIP_MED_PRECISION`` and ``AACLIP_MED_BACKEND`` do.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from aaclip_med.errors import ConfigError
from aaclip_med.model.backends import auto_choice

__all__ = [
    "ATTENTIONS",
    "ATTENTION_ENV",
    "BLOCK_ROWS",
    "MATMUL_HEADS",
    "gemm_attention",
    "resolve_attention",
    "self_attention",
]

logger = logging.getLogger(__name__)

ATTENTIONS: tuple[str, ...] = ("auto", "sdpa", "matmul", "blocked")
ATTENTION_ENV = "AACLIP_MED_ATTENTION"  # overrides what attention "auto" resolves to (resolve_attention)
MATMUL_HEADS = 4  # (batch x head) pairs per chunk of "matmul"
BLOCK_ROWS = 256  # query rows per chunk of "blocked" (all heads at once)


def resolve_attention(attention: str, backend: str) -> str:
    """Resolve ``auto`` by the static rule: ``sdpa`` (measured fastest wherever we measured).

    Measured (benchmarks/README.md): on an AVX-512 Xeon without AMX the fused SDPA beats both GEMM kernels in
    fp32 and bf16; on AMX no measurement of ours exists, so for bf16/fp16 on the CPU with a PyTorch engine
    :func:`aaclip_med.model.tuning.choose_attention` measures the kernels on the user's CPU instead of this rule.
    ``AACLIP_MED_ATTENTION`` (:data:`ATTENTION_ENV`), when set to another value than ``auto``, replaces that
    choice on the PyTorch backends (OpenVINO converts the fused SDPA whatever it says); an explicit
    ``attention`` is never overridden.

    Raises:
        ConfigError: unknown value, or a GEMM kernel asked for with the OpenVINO backend.
    """
    explicit = attention != "auto"
    attention = auto_choice(attention, ATTENTIONS, "attention", ATTENTION_ENV, "an attention kernel")
    if backend == "openvino" and attention not in ("auto", "sdpa"):
        if explicit:
            msg = (
                f"attention={attention!r} with backend='openvino': OpenVINO runs its own attention kernel; "
                "use --backend eager or cast for the GEMM kernels, or attention='sdpa'."
            )
            raise ConfigError(msg)
        logger.info("%s=%s ignored: the OpenVINO backend runs its own attention kernel", ATTENTION_ENV, attention)
        attention = "sdpa"
    return "sdpa" if attention == "auto" else attention


def gemm_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pairs: int | None = None, rows: int | None = None
) -> torch.Tensor:
    """``softmax(q kᵀ / sqrt(d)) v`` by batched GEMMs, ``pairs`` (batch x head) pairs, ``rows`` query rows a time.

    Args:
        q: (B, H, N, d) queries; ``k`` and ``v`` the same shape.
        k: Keys.
        v: Values.
        pairs: (batch x head) pairs per chunk; None: all.
        rows: Query rows per chunk; None: all.

    Returns:
        (B, H, N, d) in the dtype of ``q``; differentiable (the chunks are written into one output tensor).
    """
    shape, tokens, dim = q.shape, q.shape[-2], q.shape[-1]
    qf, kf, vf = (t.reshape(-1, tokens, dim) for t in (q, k, v))
    kt = kf.transpose(-1, -2)
    out = torch.empty_like(qf)
    step_p, step_r = pairs or qf.shape[0], rows or tokens
    scale = dim**-0.5
    for p in range(0, qf.shape[0], step_p):
        for r in range(0, tokens, step_r):
            block = qf[p : p + step_p, r : r + step_r]
            scores = torch.baddbmm(block.new_empty(()), block, kt[p : p + step_p], beta=0, alpha=scale)
            out[p : p + step_p, r : r + step_r] = torch.bmm(torch.softmax(scores, -1), vf[p : p + step_p])
    return out.view(shape)


def self_attention(qkv: torch.Tensor, num_heads: int, kernel: str = "sdpa") -> torch.Tensor:
    """Multi-head self-attention core over packed ``qkv`` (B,N,3W) -> (B,N,W), no mask, by ``kernel``.

    Raises:
        ConfigError: ``kernel`` is not ``sdpa``, ``matmul`` or ``blocked`` (resolve ``auto`` first).
    """
    batch, tokens, width3 = qkv.shape
    width = width3 // 3
    q, k, v = qkv.view(batch, tokens, 3, num_heads, width // num_heads).permute(2, 0, 3, 1, 4)
    if kernel == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v)
    elif kernel == "matmul":
        out = gemm_attention(q, k, v, pairs=MATMUL_HEADS)
    elif kernel == "blocked":
        out = gemm_attention(q, k, v, rows=BLOCK_ROWS)
    else:
        msg = f"attention kernel {kernel!r} is not valid here; use sdpa, matmul or blocked."
        raise ConfigError(msg)
    return out.transpose(1, 2).reshape(batch, tokens, width)
