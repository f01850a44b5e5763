"""AA-CLIP residual adapters (spec section 2): modules, the residual rule and Xavier initialisation.

Parameter names follow the reference checkpoints (``fc.0.weight`` for Linear+LeakyReLU, ``fc.weight`` for a plain
bias-free Linear), so a reference state dict maps onto these modules by a key prefix only.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

__all__ = [
    "ImageAdapter",
    "SimpleAdapter",
    "SimpleProj",
    "build_text_adapter",
    "residual_blend",
    "xavier_init_",
]

logger = logging.getLogger(__name__)


class SimpleAdapter(nn.Module):
    """Bias-free ``Linear`` followed by ``LeakyReLU(0.01)``; state-dict key ``fc.0.weight``.

    Args:
        c_in: Input channels.
        c_out: Output channels.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(c_in, c_out, bias=False), nn.LeakyReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the adapter per token over the channel axis."""
        return self.fc(x)  # type: ignore[no-any-return]


class SimpleProj(nn.Module):
    """Bias-free projection, optionally followed by ``LeakyReLU`` (key ``fc.0.weight``, else ``fc.weight``).

    Args:
        c_in: Input channels.
        c_out: Output channels.
        relu: Append a LeakyReLU (the reference scripts' ``--relu``, default off).
    """

    def __init__(self, c_in: int, c_out: int, relu: bool = False) -> None:
        super().__init__()
        linear = nn.Linear(c_in, c_out, bias=False)
        self.fc: nn.Module = nn.Sequential(linear, nn.LeakyReLU()) if relu else linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project per token."""
        return self.fc(x)  # type: ignore[no-any-return]


def residual_blend(x: torch.Tensor, a: torch.Tensor, lam: float) -> torch.Tensor:
    """AA-CLIP residual rule: rescale ``a`` to the per-token norm of ``x`` and mix ``lam * a' + (1 - lam) * x``.

    Norms are taken in float32 so that low-precision autocast cannot underflow them.

    Args:
        x: Hidden state after a transformer block, (..., C).
        a: Adapter output for ``x``, same shape.
        lam: Adaptation strength (0.1 in the paper); 0 returns ``x`` unchanged.

    Returns:
        The blended hidden state, in ``x``'s dtype.
    """
    if lam == 0:
        return x
    xf, af = x.float(), a.float()
    scale = xf.norm(dim=-1, keepdim=True) / af.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    blended: torch.Tensor = lam * af * scale + (1.0 - lam) * xf
    return blended.to(x.dtype)


def build_text_adapter(width: int, embed_dim: int, n_layers: int) -> nn.ModuleList:
    """Text adapters: ``n_layers`` block adapters (width->width) plus the final Linear+LeakyReLU text projection.

    The last entry (width->embed_dim) replaces CLIP's ``text_projection`` (spec section 2.3).

    Args:
        width: Text transformer width (768 for ViT-L-14-336).
        embed_dim: Joint embedding size (768).
        n_layers: How many of the first text blocks get an adapter (3).

    Returns:
        ``ModuleList`` with keys ``{i}.fc.0.weight``, as the reference ``text_adapter``.
    """
    blocks = [SimpleAdapter(width, width) for _ in range(n_layers)]
    return nn.ModuleList([*blocks, SimpleAdapter(width, embed_dim)])


class ImageAdapter(nn.Module):
    """Vision adapters: block adapters, one seg projection per tap level and the detection projection.

    Args:
        width: Vision transformer width (1024 for ViT-L).
        embed_dim: Joint embedding size (768).
        n_layers: How many of the first vision blocks get an adapter (6).
        n_levels: Number of tapped levels (4).
        relu: LeakyReLU after the seg/det projections (reference ``--relu``; default False).
    """

    def __init__(self, width: int, embed_dim: int, n_layers: int, n_levels: int, relu: bool = False) -> None:
        super().__init__()
        self.layer_adapters = nn.ModuleList([SimpleAdapter(width, width) for _ in range(n_layers)])
        self.seg_proj = nn.ModuleList([SimpleProj(width, embed_dim, relu) for _ in range(n_levels)])
        self.det_proj = SimpleProj(width, embed_dim, relu)


def xavier_init_(module: nn.Module) -> None:
    """Xavier-uniform init of every parameter with more than one dimension (all adapter weights; spec 2.5)."""
    for param in module.parameters():
        if param.dim() > 1:
            nn.init.xavier_uniform_(param)
