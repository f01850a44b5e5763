"""Ranking metrics from labels and scores: AUROC, AP, F1-max, AUPRO; exact (scikit-learn) and from histograms.

The exact functions call scikit-learn. The histogram functions compute the same curves from per-bin counts of
positive and negative scores with thresholds at bin edges (a score counts as positive when it is >= the lower edge
of its bin), which treats all scores of one bin as tied. Their error against the exact values is bounded by the
share of (positive, negative) pairs that share a bin; :func:`histogram_metrics` reports that bound for AUROC.

Undefined cases (one class only, constant scores) give NaN; the reason is appended to ``reasons`` when the caller
passes a list, otherwise it is issued as an :class:`~aaclip_med.metrics.UndefinedMetricWarning`.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from aaclip_med.metrics._common import (
    NAN,
    as_labels_scores,
    class_reason,
    report_reasons,
    trapezoid_limited,
    undefined,
)

__all__ = [
    "auroc",
    "average_precision",
    "f1_max",
    "histogram_metrics",
    "image_metrics",
    "weighted_aupro",
]

logger = logging.getLogger(__name__)


def _defined(y: np.ndarray, s: np.ndarray, what: str, reasons: list[str] | None) -> bool:
    """Return whether a ranking metric is defined; record the reason (stacklevel: the public caller) if not."""
    n_pos = int(np.count_nonzero(y))
    reason = class_reason(n_pos, y.size - n_pos, what)
    if reason is None and s.min() == s.max():
        reason = f"{what}: scores are constant, so they give no ranking"
    if reason is not None:
        undefined(reason, reasons, stacklevel=4)
        return False
    return True


def auroc(labels: npt.ArrayLike, scores: npt.ArrayLike, *, reasons: list[str] | None = None) -> float:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``); NaN when undefined.

    Args:
        labels: Binary ground truth (any shape; > 0 is anomalous).
        scores: Anomaly scores of the same size (higher = more anomalous).
        reasons: List that collects why the value is NaN; ``None`` warns instead.

    Returns:
        AUROC in [0, 1], or NaN for one class only or constant scores.
    """
    y, s = as_labels_scores(labels, scores, "auroc")
    return float(roc_auc_score(y, s)) if _defined(y, s, "auroc", reasons) else NAN


def average_precision(labels: npt.ArrayLike, scores: npt.ArrayLike, *, reasons: list[str] | None = None) -> float:
    """Average precision (``sklearn.metrics.average_precision_score``); NaN when undefined.

    Args:
        labels: Binary ground truth (> 0 is anomalous).
        scores: Anomaly scores of the same size.
        reasons: List that collects why the value is NaN; ``None`` warns instead.

    Returns:
        AP in [0, 1], or NaN for one class only or constant scores.
    """
    y, s = as_labels_scores(labels, scores, "ap")
    return float(average_precision_score(y, s)) if _defined(y, s, "ap", reasons) else NAN


def f1_max(
    labels: npt.ArrayLike, scores: npt.ArrayLike, *, reasons: list[str] | None = None
) -> tuple[float, float]:
    """Maximum F1 over all thresholds of the precision-recall curve, and the threshold that reaches it.

    A sample is predicted anomalous when ``score >= threshold`` (scikit-learn's convention).

    Args:
        labels: Binary ground truth (> 0 is anomalous).
        scores: Anomaly scores of the same size.
        reasons: List that collects why the value is NaN; ``None`` warns instead.

    Returns:
        ``(f1_max, threshold)``; ``(nan, nan)`` for one class only or constant scores.
    """
    y, s = as_labels_scores(labels, scores, "f1_max")
    if not _defined(y, s, "f1_max", reasons):
        return NAN, NAN
    precision, recall, thresholds = precision_recall_curve(y, s)
    denom = precision[:-1] + recall[:-1]
    f1 = np.divide(2 * precision[:-1] * recall[:-1], denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def image_metrics(
    labels: npt.ArrayLike, scores: npt.ArrayLike, *, prefix: str = "image", reasons: list[str] | None = None
) -> dict[str, float]:
    """AUROC, AP and F1-max of per-image (or per-volume, with ``prefix="volume"``) scores.

    Args:
        labels: One binary label per image or volume.
        scores: One score per image or volume.
        prefix: Key prefix: ``image`` or ``volume``.
        reasons: List that collects why values are NaN; ``None`` warns once instead.

    Returns:
        ``{prefix}_auroc``, ``{prefix}_ap``, ``{prefix}_f1_max``, ``{prefix}_threshold_f1``, ``{prefix}_n``,
        ``{prefix}_n_pos``.
    """
    own: list[str] = []
    y, s = as_labels_scores(labels, scores, f"{prefix} metrics")
    f1, thr = f1_max(y, s, reasons=own)
    out = {
        f"{prefix}_auroc": auroc(y, s, reasons=own),
        f"{prefix}_ap": average_precision(y, s, reasons=own),
        f"{prefix}_f1_max": f1,
        f"{prefix}_threshold_f1": thr,
        f"{prefix}_n": float(y.size),
        f"{prefix}_n_pos": float(np.count_nonzero(y)),
    }
    report_reasons([f"{prefix}_{r}" for r in own], reasons)
    return out


def weighted_aupro(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    weights: npt.ArrayLike,
    n_regions: int,
    *,
    fpr_limit: float = 0.3,
    reasons: list[str] | None = None,
) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` from per-pixel region weights.

    Each anomalous pixel carries ``1 / size`` of its ground-truth region, so the weighted true-positive rate at a
    threshold is the mean per-region overlap (PRO), as in the MVTec AD ``compute_pro``. The curve is integrated
    with the trapezoid rule, interpolated at ``fpr_limit``, and divided by ``fpr_limit``.

    Args:
        labels: Binary ground truth per pixel.
        scores: Anomaly score per pixel.
        weights: Weights of the anomalous pixels, in ``scores[labels > 0]`` order (normal pixels weigh 1).
        n_regions: Number of ground-truth regions (the sum of the anomalous weights).
        fpr_limit: Upper FPR integration limit (0.3 in the papers).
        reasons: List that collects why the value is NaN; ``None`` warns instead.

    Returns:
        AUPRO in [0, 1], or NaN without regions, without normal pixels, or for constant scores.
    """
    y, s = as_labels_scores(labels, scores, "aupro")
    if not _defined(y, s, "aupro", reasons):
        return NAN
    w = np.ones(y.size)
    w[y] = np.asarray(weights, dtype=np.float64).ravel()
    fpr, pro, _ = roc_curve(y, s, sample_weight=w)
    return trapezoid_limited(fpr, pro * (w[y].sum() / n_regions), fpr_limit) / fpr_limit


def histogram_metrics(
    pos: np.ndarray,
    neg: np.ndarray,
    edges: np.ndarray,
    *,
    pro_weights: np.ndarray | None = None,
    n_regions: int = 0,
    fpr_limit: float = 0.3,
    reasons: list[str] | None = None,
) -> dict[str, float]:
    """AUROC, AP, F1-max (and AUPRO) from per-bin counts, thresholds at bin lower edges.

    Args:
        pos: Count of anomalous scores per bin (ascending bins).
        neg: Count of normal scores per bin.
        edges: Bin edges, ``len(pos) + 1`` values.
        pro_weights: Per-bin sum of anomalous pixels' region weights (1 / region size); enables AUPRO.
        n_regions: Number of ground-truth regions.
        fpr_limit: AUPRO integration limit.
        reasons: List that collects why values are NaN; ``None`` warns instead.

    Returns:
        ``auroc``, ``ap``, ``f1_max``, ``threshold_f1``, ``aupro``, ``auroc_error_bound`` (the largest possible
        difference between the binned and the exact AUROC: half the share of positive-negative pairs that share
        a bin).
    """
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    out = dict.fromkeys(("auroc", "ap", "f1_max", "threshold_f1", "aupro", "auroc_error_bound"), NAN)
    reason = class_reason(int(n_pos), int(n_neg), "pixel metrics")
    occupied = np.flatnonzero((pos + neg) > 0)
    if reason is None and occupied.size < 2:
        reason = "pixel metrics: all scores fall in one histogram bin (constant scores)"
    if reason is not None:
        undefined(reason, reasons, stacklevel=3)
        return out
    top_down = occupied[::-1]  # thresholds at the lower edge of each occupied bin, highest first
    tp = np.cumsum(pos[top_down])
    fp = np.cumsum(neg[top_down])
    tpr, fpr = np.concatenate(([0.0], tp / n_pos)), np.concatenate(([0.0], fp / n_neg))
    out["auroc"] = float(np.sum(0.5 * (tpr[1:] + tpr[:-1]) * np.diff(fpr)))
    out["auroc_error_bound"] = float(0.5 * np.sum(pos * neg) / (n_pos * n_neg))
    out["ap"] = float(np.sum(np.diff(tpr) * tp / (tp + fp)))
    f1 = 2 * tp / (tp + fp + n_pos)
    best = int(np.argmax(f1))
    out["f1_max"], out["threshold_f1"] = float(f1[best]), float(edges[top_down[best]])
    if pro_weights is not None:
        if n_regions == 0:
            undefined("pixel aupro: no ground-truth regions", reasons, stacklevel=3)
        else:
            pro = np.concatenate(([0.0], np.cumsum(pro_weights[top_down]) / n_regions))
            out["aupro"] = trapezoid_limited(fpr, pro, fpr_limit) / fpr_limit
    return out
