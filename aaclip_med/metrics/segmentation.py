"""Overlap and lesion-wise metrics of binary masks: Dice, IoU and 3D connected-component detection.

Dice and IoU follow nnU-Net (``evaluate_predictions.compute_metrics``): ``dice = 2TP / (2TP + FP + FN)``,
``iou = TP / (TP + FP + FN)``, and both are NaN (with a reason) when reference and prediction are both empty.

Lesion-wise detection labels the connected components of the reference and of the prediction (full
connectivity by default: 8 in 2D, 26 in 3D). A reference lesion is detected when the predicted voxels inside it
number at least ``min_overlap`` and its IoU with the union of the predicted components touching it reaches
``min_iou``. A predicted component that touches no reference voxel is a false-positive component.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from aaclip_med.errors import ConfigError, GeometryError
from aaclip_med.metrics._common import NAN, report_reasons, undefined

__all__ = ["dice_iou", "lesion_detection", "overlap_scores"]

logger = logging.getLogger(__name__)


def _masks(pred: npt.ArrayLike, ref: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as bool arrays of one shape."""
    p, r = np.asarray(pred) > 0, np.asarray(ref) > 0
    if p.shape != r.shape:
        msg = f"prediction shape {p.shape} differs from reference shape {r.shape}; resample first"
        raise GeometryError(msg)
    return p, r


def overlap_scores(tp: int, fp: int, fn: int, *, reasons: list[str] | None = None) -> dict[str, float]:
    """Dice and IoU from confusion counts; NaN when reference and prediction are both empty.

    Args:
        tp: True-positive voxels.
        fp: False-positive voxels.
        fn: False-negative voxels.
        reasons: List that collects why values are NaN; ``None`` warns instead.

    Returns:
        ``{"dice": ..., "iou": ...}``.
    """
    if tp + fp + fn == 0:
        nan = undefined("dice/iou: reference and prediction are both empty", reasons, stacklevel=3)
        return {"dice": nan, "iou": nan}
    return {"dice": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn)}


def dice_iou(pred: npt.ArrayLike, ref: npt.ArrayLike, *, reasons: list[str] | None = None) -> dict[str, float]:
    """Dice, IoU and confusion counts of a binary prediction against a binary reference (nnU-Net names).

    Args:
        pred: Predicted mask (> 0 is foreground), any shape.
        ref: Reference mask of the same shape.
        reasons: List that collects why values are NaN; ``None`` warns instead.

    Returns:
        ``dice``, ``iou``, ``tp``, ``fp``, ``fn``, ``tn``, ``n_pred``, ``n_ref`` (counts as floats).
    """
    p, r = _masks(pred, ref)
    tp, fp, fn = (int(np.count_nonzero(x)) for x in (p & r, p & ~r, ~p & r))
    own: list[str] = []
    out = overlap_scores(tp, fp, fn, reasons=own)
    report_reasons(own, reasons)
    out.update(
        tp=float(tp),
        fp=float(fp),
        fn=float(fn),
        tn=float(p.size - tp - fp - fn),
        n_pred=float(tp + fp),
        n_ref=float(tp + fn),
    )
    return out


def lesion_detection(
    pred: npt.ArrayLike,
    ref: npt.ArrayLike,
    *,
    spacing: Sequence[float] | None = None,
    min_overlap: int = 1,
    min_iou: float = 0.0,
    connectivity: int | None = None,
    reasons: list[str] | None = None,
) -> dict[str, Any]:
    """Lesion-wise detection: which reference components are hit, and how many predicted ones are false.

    Args:
        pred: Predicted mask (2D or 3D).
        ref: Reference mask of the same shape.
        spacing: Voxel size in mm per axis; gives sizes in mm³ (mm² in 2D). ``None`` leaves them NaN.
        min_overlap: Predicted voxels a lesion needs inside it to count as detected (>= 1).
        min_iou: IoU a detected lesion also needs with the predicted components touching it (0 = any overlap).
        connectivity: ``scipy.ndimage.generate_binary_structure`` connectivity; ``None`` = full (26 in 3D).
        reasons: List that collects why values are NaN; ``None`` warns instead.

    Returns:
        ``lesions_ref``, ``lesions_detected``, ``lesions_missed``, ``lesion_sensitivity`` (NaN without
        reference lesions), ``components_pred``, ``components_fp``, ``lesion_precision`` (share of predicted
        components touching a lesion; NaN without predicted components), ``volume_ref_mm3``,
        ``volume_pred_mm3``, and ``lesions``: one dict per reference lesion with ``label``, ``size_voxels``,
        ``size_mm3``, ``overlap_voxels``, ``iou``, ``detected``.
    """
    p, r = _masks(pred, ref)
    if min_overlap < 1 or not 0.0 <= min_iou <= 1.0:
        msg = f"min_overlap={min_overlap}, min_iou={min_iou} are invalid; use >= 1 and [0, 1]"
        raise ConfigError(msg)
    if spacing is not None and len(spacing) != r.ndim:
        msg = f"spacing {tuple(spacing)} does not fit a {r.ndim}D mask; give one value per axis"
        raise GeometryError(msg)
    structure = ndimage.generate_binary_structure(r.ndim, connectivity or r.ndim)
    ref_lab, n_ref = ndimage.label(r, structure=structure)
    pred_lab, n_pred = ndimage.label(p, structure=structure)
    voxel_mm3 = float(np.prod(spacing)) if spacing is not None else NAN
    ref_size = np.bincount(ref_lab.ravel(), minlength=n_ref + 1)
    pred_size = np.bincount(pred_lab.ravel(), minlength=n_pred + 1)
    both = (ref_lab > 0) & (pred_lab > 0)
    pairs = np.unique(np.stack([ref_lab[both], pred_lab[both]]), axis=1)  # (ref label, pred label) that touch
    overlap = np.bincount(ref_lab[both], minlength=n_ref + 1)
    touching_pred = np.zeros(n_ref + 1)
    np.add.at(touching_pred, pairs[0], pred_size[pairs[1]])
    lesions = []
    for lab in range(1, n_ref + 1):
        union = ref_size[lab] + touching_pred[lab] - overlap[lab]
        iou = overlap[lab] / union
        lesions.append(
            {
                "label": lab,
                "size_voxels": int(ref_size[lab]),
                "size_mm3": ref_size[lab] * voxel_mm3,
                "overlap_voxels": int(overlap[lab]),
                "iou": float(iou),
                "detected": bool(overlap[lab] >= min_overlap and iou >= min_iou),
            }
        )
    n_detected = sum(les["detected"] for les in lesions)
    n_true_components = np.unique(pairs[1]).size
    own: list[str] = []
    sensitivity = n_detected / n_ref if n_ref else undefined("lesion_sensitivity: no reference lesions", own)
    precision = n_true_components / n_pred if n_pred else undefined("lesion_precision: no predicted masks", own)
    out = {
        "lesions_ref": n_ref,
        "lesions_detected": n_detected,
        "lesions_missed": n_ref - n_detected,
        "lesion_sensitivity": sensitivity,
        "components_pred": n_pred,
        "components_fp": n_pred - n_true_components,
        "lesion_precision": precision,
        "volume_ref_mm3": float(np.count_nonzero(r)) * voxel_mm3,
        "volume_pred_mm3": float(np.count_nonzero(p)) * voxel_mm3,
        "lesions": lesions,
    }
    report_reasons(own, reasons)
    return out
