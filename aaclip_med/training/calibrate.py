"""Validation scoring during training: pixel/image AUROC per epoch and the calibrated mask threshold.

Maps are the raw AA-CLIP maps of :meth:`AACLIP.score_slices` (DESIGN section 0 map units), so the threshold stored
in the checkpoint is directly usable as ``--threshold``. A pixel is in the mask when ``map > threshold``.

Threshold rules (validation split only, never test):

- ``f1`` (default): the threshold of maximal pixel-level F1;
- ``youden``: maximal ``TPR - FPR`` over pixels;
- ``fpr:X``: the lowest threshold whose false-positive rate on the pixels of normal validation slices is at most
  ``X`` (e.g. ``fpr:0.05``).

Pixel metrics use at most :data:`MAX_PIXELS` pixels drawn at random with a fixed seed, so memory and time stay
bounded on large validation sets.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_curve
from torch.utils.data import DataLoader

from aaclip_med.config import parse_threshold_rule
from aaclip_med.metrics.ranking import auroc, f1_max

__all__ = ["MAX_PIXELS", "ValidationScores", "choose_threshold", "collect_validation"]

logger = logging.getLogger(__name__)

MAX_PIXELS = 4_000_000  # pixels kept for AUROC/threshold; sklearn sorts them, 4 M take about a second


@dataclass(frozen=True, slots=True)
class ValidationScores:
    """Pixel and image scores of a validation set.

    Attributes:
        pixel_scores: Sampled map values (float32).
        pixel_labels: Their mask values (bool).
        pixel_normal_case: Whether each sampled pixel belongs to a normal (label 0) slice.
        image_scores: Max of each slice's map.
        image_labels: Slice labels.
    """

    pixel_scores: np.ndarray
    pixel_labels: np.ndarray
    pixel_normal_case: np.ndarray
    image_scores: np.ndarray
    image_labels: np.ndarray

    def metrics(self) -> dict[str, float]:
        """Pixel and image AUROC (NaN when a class is missing)."""
        reasons: list[str] = []
        return {
            "val_pixel_auroc": auroc(self.pixel_labels, self.pixel_scores, reasons=reasons),
            "val_image_auroc": auroc(self.image_labels, self.image_scores, reasons=reasons),
        }


@torch.no_grad()
def collect_validation(
    model: torch.nn.Module,
    loader: DataLoader[dict[str, Any]],
    device: torch.device,
    seed: int = 0,
    progress: bool = False,
) -> ValidationScores:
    """Score every validation sample with the model's inference maps and sample pixels for the metrics.

    Args:
        model: An ``AACLIP`` model.
        loader: Validation loader (no augmentation) yielding dicts from ``SliceDataset``.
        device: Where the model runs.
        seed: Seed of the pixel sub-sampling.
        progress: Show a progress bar.

    Returns:
        The sampled scores.
    """
    from tqdm.auto import tqdm

    n_total = len(loader.dataset)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    image_scores, image_labels = [], []
    for batch in tqdm(loader, desc="validate", disable=not progress, leave=False):
        labels = batch["label"].numpy()
        for preset in sorted(set(batch["preset"])):
            sel = [i for i, p in enumerate(batch["preset"]) if p == preset]
            out = model.score_slices(batch["image"][sel].to(device), preset)  # type: ignore[operator]
            maps = out.maps.float().cpu().numpy()
            masks = batch["mask"][sel, 0].numpy() > 0
            per_sample = max(1, MAX_PIXELS // max(n_total, 1))
            for m, g, lab in zip(maps, masks, labels[sel], strict=True):
                flat_idx = rng.choice(m.size, size=min(per_sample, m.size), replace=False)
                normal = np.full(flat_idx.size, lab == 0)
                parts.append((m.ravel()[flat_idx], g.ravel()[flat_idx], normal))
            image_scores.extend(out.score.float().cpu().numpy().tolist())
            image_labels.extend(labels[sel].tolist())
    return ValidationScores(
        pixel_scores=np.concatenate([p[0] for p in parts]).astype(np.float32),
        pixel_labels=np.concatenate([p[1] for p in parts]),
        pixel_normal_case=np.concatenate([p[2] for p in parts]),
        image_scores=np.asarray(image_scores, np.float32),
        image_labels=np.asarray(image_labels, np.int64),
    )


def _strict(threshold: float) -> float:
    """Turn an inclusive threshold (``score >= t``) into the equivalent strict one (``score > t'``)."""
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))


def choose_threshold(scores: ValidationScores, rule: str = "f1") -> float | None:
    """Pick the mask threshold in raw map units on validation scores.

    Args:
        scores: From :func:`collect_validation`.
        rule: ``f1``, ``youden`` or ``fpr:X`` (module docstring).

    Returns:
        The threshold (mask = map > threshold), or None when the rule is undefined on this set (no anomalous
        pixel for f1/youden, no normal pixel for fpr); a warning says why.

    Example:
        >>> s = ValidationScores(np.array([0.1, 0.2, 0.8, 0.9], np.float32), np.array([0, 0, 1, 1], bool),
        ...                      np.array([1, 1, 0, 0], bool), np.zeros(1), np.zeros(1))
        >>> 0.2 <= choose_threshold(s, "f1") < 0.8
        True
    """
    kind, target = parse_threshold_rule(rule)
    y, s = scores.pixel_labels, scores.pixel_scores
    if kind == "fpr":
        negatives = s[scores.pixel_normal_case & ~y]
        if negatives.size == 0:
            negatives = s[~y]
            warnings.warn("No normal validation slice: the FPR threshold uses normal pixels of anomalous slices",
                          stacklevel=2)
        if negatives.size == 0:
            warnings.warn("No normal pixel in the validation set: no threshold calibrated", stacklevel=2)
            return None
        return float(np.quantile(negatives.astype(np.float64), 1.0 - float(target or 0.0), method="higher"))
    if not y.any() or y.all():
        warnings.warn(f"Threshold rule '{rule}' needs normal and anomalous validation pixels: none calibrated",
                      stacklevel=2)
        return None
    if kind == "f1":
        _, threshold = f1_max(y, s, reasons=[])
    else:
        fpr, tpr, thresholds = roc_curve(y, s)
        best = int(np.argmax(tpr - fpr))
        threshold = float(min(thresholds[best], float(s.max())))
    return _strict(threshold) if math.isfinite(threshold) else None
