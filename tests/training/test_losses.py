"""Losses against hand-computed values on tiny tensors (spec section 4)."""

from __future__ import annotations

import math

import torch

from aaclip_med.training.losses import detection_loss, dice_loss, focal_loss, orthogonality_loss, seg_loss


def test_focal_loss_matches_hand_computation() -> None:
    probs = torch.tensor([[[[0.9, 0.2]], [[0.1, 0.8]]]])  # (1,2,1,2): pixel 0 normal-ish, pixel 1 abnormal-ish
    mask = torch.tensor([[[[0.0, 1.0]]]])
    # p_t = onehot(clamped) . P + 1e-5
    pt0 = (1 - 1e-5) * 0.9 + 1e-5 * 0.1 + 1e-5
    pt1 = 1e-5 * 0.2 + (1 - 1e-5) * 0.8 + 1e-5
    want = (-(1 - pt0) ** 2 * math.log(pt0) - (1 - pt1) ** 2 * math.log(pt1)) / 2
    assert math.isclose(float(focal_loss(probs, mask)), want, rel_tol=1e-5)


def test_dice_loss_per_sample_smooth_one() -> None:
    pred = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    target = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    d0 = (2 * 1 + 1) / (1 + 1 + 1)
    d1 = (0 + 1) / (1 + 0 + 1)
    assert math.isclose(float(dice_loss(pred, target)), 1 - (d0 + d1) / 2, rel_tol=1e-6)


def test_seg_loss_is_focal_plus_two_dice_terms() -> None:
    probs = torch.softmax(torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    mask = (torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    want = focal_loss(probs, mask) + dice_loss(probs[:, 0], 1 - mask[:, 0]) + dice_loss(probs[:, 1], mask[:, 0])
    assert torch.allclose(seg_loss(probs, mask), want)


def test_orthogonality_mean_before_square() -> None:
    a = torch.zeros(2, 2, 2)
    a[0, :, 0], a[0, :, 1] = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])  # cos 1
    a[1, :, 0], a[1, :, 1] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])  # cos 0
    assert math.isclose(float(orthogonality_loss(a)), 0.25, rel_tol=1e-6)  # (mean(1, 0))^2, not mean(1, 0)
    assert math.isclose(float(orthogonality_loss(a[0])), 1.0, rel_tol=1e-6)


def test_detection_loss_has_no_temperature() -> None:
    det = torch.tensor([[1.0, 0.0]])
    anchors = torch.eye(2)  # logits = (1, 0)
    want = -math.log(math.exp(0.0) / (math.exp(1.0) + math.exp(0.0)))
    assert math.isclose(float(detection_loss(det, anchors, torch.tensor([1]))), want, rel_tol=1e-6)
