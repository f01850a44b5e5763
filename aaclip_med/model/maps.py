"""Anomaly-map arithmetic of AA-CLIP (spec 4 and 6): similarity to the text anchors, blur, upsampling.

Pure tensor functions shared by inference (:func:`level_anomaly_maps`) and training (:func:`training_probs`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["TEMPERATURE", "Encoded", "concat_encoded", "gaussian_blur", "level_anomaly_maps", "training_probs"]

TEMPERATURE = 100.0  # fixed logit scale of the similarity maps (spec 4)
Encoded = tuple[list[torch.Tensor], torch.Tensor]  # vision features: per-level seg tokens (B,N,D), det token (B,D)


def concat_encoded(parts: Sequence[Encoded]) -> Encoded:
    """Join the vision features of consecutive chunks of a batch (``AACLIP.encode_levels`` outputs)."""
    levels = [torch.cat(level) for level in zip(*(p[0] for p in parts), strict=True)]
    return levels, torch.cat([p[1] for p in parts])


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B,C,H,W) with reflect border (kornia ``gaussian_blur2d`` semantics).

    A kernel size below 2 or ``sigma <= 0`` returns ``x`` unchanged. On grids smaller than the kernel (tiny input
    sizes), the kernel shrinks to the largest odd size a reflect border allows.
    """
    kernel = min(kernel, 2 * min(x.shape[-2:]) - 1)
    if kernel < 2 or sigma <= 0:
        return x
    pos = torch.arange(kernel, dtype=torch.float64, device=x.device) - kernel // 2
    if kernel % 2 == 0:
        pos = pos + 0.5
    weights = torch.exp(-pos.pow(2) / (2 * sigma**2))
    weights = (weights / weights.sum()).to(x.dtype)
    channels = x.shape[1]
    left, right = (kernel - 1) // 2, kernel // 2
    x = F.pad(x, (left, right, left, right), mode="reflect")
    x = F.conv2d(x, weights.view(1, 1, 1, kernel).expand(channels, 1, 1, kernel), groups=channels)
    return F.conv2d(x, weights.view(1, 1, kernel, 1).expand(channels, 1, kernel, 1), groups=channels)


def _similarity_grid(tokens: torch.Tensor, anchors: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    sim = TEMPERATURE * tokens.float() @ anchors.float()  # (B,N,2)
    return sim.transpose(1, 2).reshape(tokens.shape[0], 2, *grid)


def level_anomaly_maps(
    seg_tokens: Sequence[torch.Tensor],
    anchors: torch.Tensor,
    grid: tuple[int, int],
    size: tuple[int, int],
    blur_kernel: int,
    blur_sigma: float,
) -> torch.Tensor:
    """Inference maps per level (spec 6): ``(S_abn + 1 - S_nor) / 2``, blurred on the grid, bilinear up.

    Args:
        seg_tokens: Per level, (B,N,D) normalised patch features.
        anchors: (D,2) text anchors, column 0 normal, 1 abnormal.
        grid: Patch grid (rows, cols), rows*cols = N.
        size: Output (H, W).
        blur_kernel: Gaussian kernel size at grid resolution.
        blur_sigma: Gaussian sigma in patches.

    Returns:
        (L,B,H,W) float32 maps.
    """
    out = []
    for tokens in seg_tokens:
        sim = _similarity_grid(tokens, anchors, grid)
        amap = (sim[:, 1:2] + 1 - sim[:, 0:1]) / 2
        amap = gaussian_blur(amap, blur_kernel, blur_sigma)
        out.append(F.interpolate(amap, size=size, mode="bilinear", align_corners=True)[:, 0])
    return torch.stack(out)


def training_probs(
    tokens: torch.Tensor, anchors: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Training-time probabilities (spec 4): bilinear up (align_corners) of ``100 f T``, softmax over 2 channels.

    Returns:
        (B,2,H,W): channel 0 normal, 1 abnormal.
    """
    sim = F.interpolate(_similarity_grid(tokens, anchors, grid), size=size, mode="bilinear", align_corners=True)
    return torch.softmax(sim, dim=1)
