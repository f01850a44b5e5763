"""Training augmentation (spec section 5.4), seeded per sample.

Stage 2 only: three independent ``RandomApply(ColorJitter(...), p=0.7)`` for brightness, contrast and saturation
(0.5 each), on the [0, 1] image before the CLIP normalisation (saturation is a no-op on grey slices). Both stages:
geometric transforms applied jointly to the normalised image and the mask (rotation +-30 degrees p=0.5, translation
15 % p=0.5, horizontal and vertical flips p=0.5), nearest interpolation and fill 0 (the mean colour after
normalisation; background for the mask), as the reference applies them to one 4-channel tensor.

Randomness comes from a generator seeded by ``(seed, epoch, index)``, so a sample's augmentation does not depend on
DataLoader workers or on the order of the batch, and a resumed run draws the same augmentations.
"""

from __future__ import annotations

import logging

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from aaclip_med.transforms import CLIP_MEAN, CLIP_STD

__all__ = ["Augmenter", "clip_normalize"]

logger = logging.getLogger(__name__)

JITTER_P = 0.7  # reference since 6335e71 (was 0.5)
JITTER_STRENGTH = 0.5  # brightness, contrast and saturation factors in [0.5, 1.5]
ROTATION_DEG = 30.0
TRANSLATE = 0.15
GEOMETRIC_P = 0.5


def clip_normalize(image01: torch.Tensor) -> torch.Tensor:
    """CLIP mean/std normalisation of a (3, H, W) or (B, 3, H, W) image in [0, 1]."""
    mean = torch.tensor(CLIP_MEAN, dtype=image01.dtype).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=image01.dtype).view(3, 1, 1)
    return (image01 - mean) / std


def _jitter() -> v2.Transform:
    return v2.Compose(
        [
            v2.RandomApply([v2.ColorJitter(brightness=JITTER_STRENGTH)], p=JITTER_P),
            v2.RandomApply([v2.ColorJitter(contrast=JITTER_STRENGTH)], p=JITTER_P),
            v2.RandomApply([v2.ColorJitter(saturation=JITTER_STRENGTH)], p=JITTER_P),
        ]
    )


def _geometric() -> v2.Transform:
    return v2.Compose(
        [
            v2.RandomApply([v2.RandomRotation(ROTATION_DEG, fill=0)], p=GEOMETRIC_P),
            v2.RandomApply([v2.RandomAffine(degrees=0, translate=(TRANSLATE, TRANSLATE), fill=0)], p=GEOMETRIC_P),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomVerticalFlip(0.5),
        ]
    )


class Augmenter:
    """Per-sample training augmentation and normalisation.

    Args:
        color_jitter: Apply the stage-2 colour jitter.
        geometric: Apply the joint geometric transforms (both stages in the reference).
        seed: Base seed; each sample's generator is seeded by ``(seed, epoch, index)``.

    Example:
        >>> aug = Augmenter(color_jitter=True, seed=0)
        >>> x, m = aug(torch.rand(3, 32, 32), torch.zeros(1, 32, 32), index=0, epoch=0)
        >>> x.shape, m.shape
        (torch.Size([3, 32, 32]), torch.Size([1, 32, 32]))
    """

    def __init__(self, color_jitter: bool, geometric: bool = True, seed: int = 0) -> None:
        self.color_jitter = color_jitter
        self.geometric = geometric
        self.seed = seed
        self._jitter = _jitter() if color_jitter else None
        self._geo = _geometric() if geometric else None

    def __call__(
        self, image01: torch.Tensor, mask: torch.Tensor, index: int, epoch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one sample.

        Args:
            image01: (3, H, W) float image in [0, 1].
            mask: (1, H, W) binary float mask.
            index: Sample index in the dataset.
            epoch: Current epoch (changes the draw from epoch to epoch).

        Returns:
            ``(image, mask)``: the CLIP-normalised image and the transformed binary mask.
        """
        if self._jitter is None and self._geo is None:
            return clip_normalize(image01), mask
        sample_seed = (self.seed * 1_000_003 + epoch * 10_007 + index) % (2**63 - 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            if self._jitter is not None:
                image01 = self._jitter(image01).clamp(0.0, 1.0)
            image = clip_normalize(image01)
            if self._geo is not None:
                image, mask_tv = self._geo(tv_tensors.Image(image), tv_tensors.Mask(mask))
                image, mask = image.as_subclass(torch.Tensor), (mask_tv.as_subclass(torch.Tensor) != 0).float()
        return image, mask
