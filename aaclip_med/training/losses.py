"""AA-CLIP training losses (spec section 4): focal, dice, the segmentation loss and the anchor orthogonality term.

``P`` is the training-time probability map (:func:`aaclip_med.model.aaclip.training_probs`): softmax of the
upsampled ``100 * f T``, channel 0 normal, 1 abnormal. ``M`` is the binary mask, (B, 1, H, W). These follow
the VAND/APRIL-GAN loss classes that the reference code uses, with the same constants.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

__all__ = [
    "FOCAL_GAMMA",
    "ORTH_WEIGHT",
    "detection_loss",
    "dice_loss",
    "focal_loss",
    "orthogonality_loss",
    "seg_loss",
]

logger = logging.getLogger(__name__)

FOCAL_GAMMA = 2.0  # reference FocalLoss(gamma=2)
FOCAL_SMOOTH = 1e-5  # one-hot targets clamped to [smooth, 1 - smooth]; p_t gets + smooth before the log
DICE_SMOOTH = 1.0  # reference BinaryDiceLoss(smooth=1)
ORTH_WEIGHT = 0.1  # reference --text_norm_weight


def focal_loss(probs: torch.Tensor, mask: torch.Tensor, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """Focal loss on probabilities (alpha = 1 for both classes), mean over all pixels.

    Args:
        probs: (B, 2, H, W) class probabilities (already softmaxed).
        mask: (B, 1, H, W) binary target (1 = abnormal).
        gamma: Focusing parameter.

    Returns:
        Scalar loss ``mean(-(1 - p_t)^gamma * log(p_t))`` with ``p_t = sum_c onehot_c P_c + 1e-5``.
    """
    target = mask.long().squeeze(1)
    one_hot = F.one_hot(target, num_classes=probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    one_hot = one_hot.clamp(FOCAL_SMOOTH, 1.0 - FOCAL_SMOOTH)
    p_t = (one_hot * probs).sum(dim=1) + FOCAL_SMOOTH
    return (-((1.0 - p_t) ** gamma) * torch.log(p_t)).mean()


def dice_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary dice loss per sample with smoothing 1: ``1 - mean_b (2 sum(pg) + 1) / (sum p + sum g + 1)``.

    Args:
        pred: (B, ...) probabilities of one class.
        target: Same number of elements per sample, binary.

    Returns:
        Scalar loss.
    """
    p = pred.reshape(pred.shape[0], -1)
    g = target.reshape(target.shape[0], -1).to(p.dtype)
    dice = (2.0 * (p * g).sum(1) + DICE_SMOOTH) / (p.sum(1) + g.sum(1) + DICE_SMOOTH)
    return 1.0 - dice.mean()


def seg_loss(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Segmentation loss ``focal(P, M) + dice(P[:,0], 1 - M) + dice(P[:,1], M)``.

    Args:
        probs: (B, 2, H, W) probabilities from :func:`train_probs`.
        mask: (B, 1, H, W) binary target.

    Returns:
        Scalar loss.
    """
    m = mask[:, 0].to(probs.dtype)
    return focal_loss(probs, mask) + dice_loss(probs[:, 0], 1.0 - m) + dice_loss(probs[:, 1], m)


def orthogonality_loss(anchors: torch.Tensor) -> torch.Tensor:
    """Anchor disentanglement term ``(mean_b <t_N^b, t_A^b>)^2`` (the mean is taken before squaring).

    Args:
        anchors: (B, D, 2) per-sample unit anchors, or (D, 2) for one class.

    Returns:
        Scalar term (multiply by :data:`ORTH_WEIGHT` in the stage-1 loss).
    """
    a = anchors if anchors.dim() == 3 else anchors.unsqueeze(0)
    cos = (a[:, :, 0].float() * a[:, :, 1].float()).sum(dim=1)
    return cos.mean() ** 2


def detection_loss(det_token: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Stage-2 image loss: cross-entropy of the cosine logits ``det . T`` (no temperature) against the labels.

    Args:
        det_token: (B, D) detection tokens.
        anchors: (B, D, 2) or (D, 2) anchors.
        labels: (B,) integer image labels.

    Returns:
        Scalar loss.
    """
    if anchors.dim() == 2:
        logits = det_token.float() @ anchors.float()
    else:
        logits = torch.einsum("bd,bdk->bk", det_token.float(), anchors.float())
    return F.cross_entropy(logits, labels.long())
