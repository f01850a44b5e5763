"""Map normalisation, set evaluation and the evaluation rows (``slice_metrics.csv``, parts of cases/summary.csv).

Columns (values are floats in [0, 1], never x100; NaN where undefined, the reason in ``reasons``):

- :data:`SLICE_METRIC_COLUMNS`, the schema of ``slice_metrics.csv`` (``eval`` and ``batch`` folders; a run
  folder's ``slices.csv`` is :data:`aaclip_med.report.SLICE_COLUMNS`): ``case_id, slice, score, label, scored,
  n_ref, n_pred, dice, iou`` (Dice/IoU per slice at the model's threshold; NaN when reference and prediction are
  both empty; no warnings per slice).
- :data:`CASE_METRIC_COLUMNS`, the metric columns of ``cases.csv`` (its schema:
  :data:`aaclip_med.cohort.summary.CASE_SHEET_COLUMNS`): ``case_id, label, score, threshold``, per-case pixel
  metrics (``pixel_auroc, pixel_ap, pixel_f1_max, pixel_aupro``), ``dice, iou`` at the model's threshold and
  ``dice_oracle, iou_oracle, threshold_oracle`` at the case's F1-optimal threshold, ``tp, fp, fn, n_ref, n_pred``,
  lesion detection (``lesions_ref, lesions_detected, lesions_missed, lesion_sensitivity, components_pred,
  components_fp, volume_ref_mm3, volume_pred_mm3``), ``reasons``.
- :data:`SUMMARY_COLUMNS`, the rows of :func:`summary_rows` (the model rows of ``summary.csv``, whose schema is
  :data:`aaclip_med.cohort.summary.SUMMARY_SHEET_COLUMNS`): the group name, then the peer-paper order
  ``pixel_auroc, pixel_ap, image_auroc, image_ap, pixel_f1_max, pixel_aupro, image_f1_max, dice``, then ``iou,
  dice_oracle, iou_oracle, threshold_oracle, volume_auroc, volume_ap, volume_f1_max, lesion_sensitivity,
  dice_case_mean, n_cases, n_images, normalisation, reasons``. :func:`summary_rows` appends an ``Average`` row:
  the mean over groups of each defined metric (as AA-CLIP averages classes), counts summed.

Normalisation (``normalisation`` field): ``none`` keeps raw map units; ``set`` min-max normalises all maps of the
evaluated set together, as the reference code (skipped when the maximum is already 1, as there); ``volume``
normalises each map alone. Set-level min-max is monotone, so AUROC, AP, F1-max and AUPRO do not change; only
thresholds (and Dice at a fixed threshold) move. Per-volume normalisation changes every pooled metric.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from aaclip_med.errors import ConfigError
from aaclip_med.metrics._common import NAN, report_reasons, undefined
from aaclip_med.metrics.pixel import PixelAccumulator, Regions, RegionWeightCache, pixel_metrics
from aaclip_med.metrics.ranking import image_metrics
from aaclip_med.metrics.segmentation import dice_iou, lesion_detection

__all__ = [
    "CASE_METRIC_COLUMNS",
    "SLICE_METRIC_COLUMNS",
    "SUMMARY_COLUMNS",
    "case_row",
    "evaluate_set",
    "minmax",
    "normalise_maps",
    "slice_metric_rows",
    "summary_rows",
]

logger = logging.getLogger(__name__)

Normalisation = Literal["none", "set", "volume"]

SLICE_METRIC_COLUMNS = ("case_id", "slice", "score", "label", "scored", "n_ref", "n_pred", "dice", "iou")
_PIXEL = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro")
_OVERLAP = ("dice", "iou", "dice_oracle", "iou_oracle", "threshold_oracle", "tp", "fp", "fn")
_LESION = (
    "lesions_ref",
    "lesions_detected",
    "lesions_missed",
    "lesion_sensitivity",
    "components_pred",
    "components_fp",
    "volume_ref_mm3",
    "volume_pred_mm3",
)
CASE_METRIC_COLUMNS = (
    "case_id",
    "label",
    "score",
    "threshold",
    *_PIXEL,
    *_OVERLAP,
    "n_ref",
    "n_pred",
    *_LESION,
    "reasons",
)
_SUMMARY_METRICS = (
    "pixel_auroc",
    "pixel_ap",
    "image_auroc",
    "image_ap",
    "pixel_f1_max",
    "pixel_aupro",
    "image_f1_max",
    "dice",
    "iou",
    "dice_oracle",
    "iou_oracle",
    "volume_auroc",
    "volume_ap",
    "volume_f1_max",
    "lesion_sensitivity",
    "dice_case_mean",
)
_SUMMARY_COUNTS = ("n_cases", "n_images")
SUMMARY_COLUMNS = (
    "group",
    *_SUMMARY_METRICS[:11],
    "threshold_oracle",
    *_SUMMARY_METRICS[11:],
    *_SUMMARY_COUNTS,
    "normalisation",
    "reasons",
)


def normalise_maps(
    maps: Sequence[np.ndarray] | np.ndarray,
    mode: Normalisation = "set",
    *,
    value_range: tuple[float, float] | None = None,
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Min-max normalise anomaly maps for paper-style evaluation.

    Args:
        maps: The set's maps (an ``(N, ...)`` array iterates as N maps).
        mode: ``set`` (one min/max over all maps, as the reference code), ``volume`` (each map alone), ``none``.
        value_range: Precomputed ``(min, max)`` of the whole set for ``set`` (two-pass use on big cohorts).

    Returns:
        ``(maps, info)``; ``info`` has ``normalisation`` and, for ``set``, ``lo``, ``hi`` and ``skipped``.
    """
    arrays = [np.asarray(m, dtype=np.float32) for m in maps]
    if mode == "none":
        return arrays, {"normalisation": "none"}
    if mode == "volume":
        return [minmax(a, float(a.min()), float(a.max())) for a in arrays], {"normalisation": "volume"}
    if mode != "set":
        msg = f"normalisation={mode!r} is not known; use 'none', 'set' or 'volume'"
        raise ConfigError(msg)
    lo, hi = value_range or (min(float(a.min()) for a in arrays), max(float(a.max()) for a in arrays))
    skipped = set_range_kept(hi)
    info = {"normalisation": "set", "lo": lo, "hi": hi, "skipped": skipped}
    return (arrays if skipped else [minmax(a, lo, hi) for a in arrays]), info


def set_range_kept(hi: float) -> bool:
    """The reference code leaves a set whose maximum is already 1 untouched (its ``set`` normalisation)."""
    return hi == 1.0


def minmax(a: np.ndarray | float, lo: float, hi: float) -> np.ndarray:
    """``(a - lo) / (hi - lo)``, or zeros when the range is empty.

    The one min-max rule of ``eval``, ``batch`` sheets and ``reproduce_bmad`` (maps and thresholds alike).
    """
    arr = np.asarray(a, dtype=np.float32)
    return (arr - np.float32(lo)) / np.float32(hi - lo) if hi > lo else np.zeros_like(arr)


def _given(labels: npt.ArrayLike | None, what: str) -> npt.ArrayLike:
    """``labels`` of the ``what`` scores; refused when missing (a label is needed per score)."""
    if labels is None:
        msg = f"{what}_scores were given without {what}_labels; pass one label per score."
        raise ConfigError(msg)
    return labels


def evaluate_set(
    *,
    image_labels: npt.ArrayLike | None = None,
    image_scores: npt.ArrayLike | None = None,
    volume_labels: npt.ArrayLike | None = None,
    volume_scores: npt.ArrayLike | None = None,
    pixels: PixelAccumulator | None = None,
    cases: Sequence[Mapping[str, Any]] = (),
    normalisation: Normalisation = "none",
    reasons: list[str] | None = None,
) -> dict[str, Any]:
    """All set-level metrics of one group (dataset or modality) in one flat dict, as :func:`summary_rows` takes.

    Args:
        image_labels: Per-slice (image) labels.
        image_scores: Per-slice scores.
        volume_labels: Per-volume labels.
        volume_scores: Per-volume scores.
        pixels: The group's accumulated pixel metrics.
        cases: The group's :func:`case_row` dicts (lesion counts are summed; ``dice_case_mean`` is their mean).
        normalisation: How the maps were normalised (recorded, not applied).
        reasons: List that collects why values are NaN; ``None`` warns once instead.

    Returns:
        ``image_*``, ``volume_*``, pixel keys of :meth:`PixelAccumulator.compute`, ``lesion_sensitivity``,
        ``dice_case_mean``, ``n_cases``, ``n_images``, ``normalisation``, ``reasons``.
    """
    own: list[str] = []
    out: dict[str, Any] = {"normalisation": normalisation, "n_cases": float(len(cases)), "n_images": NAN}
    if image_scores is not None:
        out.update(image_metrics(_given(image_labels, "image"), image_scores, prefix="image", reasons=own))
        out["n_images"] = out["image_n"]
    if volume_scores is not None:
        out.update(image_metrics(_given(volume_labels, "volume"), volume_scores, prefix="volume", reasons=own))
    if pixels is not None:
        out.update({k: v for k, v in pixels.compute(reasons=own).items() if k != "reasons"})
        out["n_cases"] = float(len(cases) or pixels.n_cases)
    with_lesions = [c for c in cases if np.isfinite(c.get("lesions_ref", NAN))]
    n_ref = sum(c["lesions_ref"] for c in with_lesions)
    out["lesion_sensitivity"] = sum(c["lesions_detected"] for c in with_lesions) / n_ref if n_ref else NAN
    if with_lesions and not n_ref:
        undefined("lesion_sensitivity: no reference lesions in the set", own)
    dices = [c["dice"] for c in cases if np.isfinite(c.get("dice", NAN))]
    out["dice_case_mean"] = float(np.mean(dices)) if dices else NAN
    report_reasons(own, reasons)
    out["reasons"] = own
    return out


def slice_metric_rows(
    case_id: str,
    slice_scores: npt.ArrayLike,
    *,
    labels: npt.ArrayLike | None = None,
    scored: npt.ArrayLike | None = None,
    heatmap: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    threshold: float | None = None,
    slice_axis: int = -1,
) -> list[dict[str, Any]]:
    """The rows of ``slice_metrics.csv``, one per slice (:data:`SLICE_METRIC_COLUMNS`).

    Args:
        case_id: The case's identifier.
        slice_scores: Score per slice.
        labels: Label per slice; derived from ``mask`` (any voxel) when omitted.
        scored: Whether each slice was scored (foreground present); all True when omitted.
        heatmap: The case's map, for per-slice Dice/IoU with ``mask`` and ``threshold``.
        mask: The case's ground truth.
        threshold: The model's threshold (``score > threshold``).
        slice_axis: Slice axis of ``heatmap``/``mask``.

    Returns:
        Row dicts; ``label``, ``n_ref``, ``n_pred``, ``dice``, ``iou`` are NaN where they cannot be computed.
    """
    scores = np.asarray(slice_scores, dtype=np.float64).ravel()
    ref = np.moveaxis(np.asarray(mask) > 0, slice_axis, 0) if mask is not None else None
    if labels is None and ref is not None:
        labels = ref.reshape(ref.shape[0], -1).any(axis=1)
    lab = np.full(scores.size, NAN) if labels is None else np.asarray(labels, dtype=np.float64).ravel()
    ok = np.ones(scores.size, bool) if scored is None else np.asarray(scored, dtype=bool).ravel()
    with_overlap = ref is not None and heatmap is not None and threshold is not None
    pred = np.moveaxis(np.asarray(heatmap) > threshold, slice_axis, 0) if with_overlap else None
    rows = []
    for k in range(scores.size):
        row = {
            "case_id": case_id,
            "slice": k,
            "score": float(scores[k]),
            "label": float(lab[k]),
            "scored": bool(ok[k]),
            "n_ref": NAN,
            "n_pred": NAN,
            "dice": NAN,
            "iou": NAN,
        }
        if pred is not None and ref is not None:
            d = dice_iou(pred[k], ref[k], reasons=[])
            row.update({key: d[key] for key in ("n_ref", "n_pred", "dice", "iou")})
        rows.append(row)
    return rows


def case_row(
    case_id: str,
    *,
    score: float | None = None,
    label: int | None = None,
    heatmap: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    threshold: float | None = None,
    pred_mask: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    slice_axis: int = -1,
    regions: Regions = "slice",
    exact: bool = False,
    min_iou: float = 0.0,
    reasons: list[str] | None = None,
    regions_cache: RegionWeightCache | None = None,
) -> dict[str, Any]:
    """One case's metric columns of ``cases.csv`` (:data:`CASE_METRIC_COLUMNS`): pixel, overlap and lesion metrics.

    Args:
        case_id: The case's identifier.
        score: The volume score.
        label: The volume label; ``mask.any()`` when omitted and a mask is given.
        heatmap: The case's anomaly map.
        mask: The case's ground truth (same grid).
        threshold: The model's threshold (``score > threshold``).
        pred_mask: The predicted mask when it is not just ``heatmap > threshold`` (e.g. after cleanup).
        valid: Voxels to evaluate (pixel metrics only).
        spacing: Voxel size in mm, for lesion volumes in mm³.
        slice_axis: Slice axis, for AUPRO regions per slice.
        regions: AUPRO regions, ``slice`` or ``volume``.
        exact: scikit-learn on all voxels instead of 10,000-bin histograms.
        min_iou: IoU a lesion needs to count as detected.
        reasons: List that collects why values are NaN; ``None`` warns once instead.
        regions_cache: The case's :class:`~aaclip_med.metrics.RegionWeightCache` (AUPRO regions labelled once
            for every map of the case).

    Returns:
        The row; ``reasons`` joined with ``"; "``.
    """
    row: dict[str, Any] = dict.fromkeys(CASE_METRIC_COLUMNS, NAN)
    own: list[str] = []
    row.update(
        case_id=case_id,
        score=NAN if score is None else float(score),
        threshold=NAN if threshold is None else float(threshold),
    )
    row["label"] = float(label) if label is not None else float(np.any(mask)) if mask is not None else NAN
    if mask is not None and heatmap is not None:
        px = pixel_metrics(
            heatmap,
            mask,
            valid=valid,
            threshold=threshold,
            exact=exact,
            regions=regions,
            slice_axis=slice_axis,
            reasons=own,
            regions_cache=regions_cache,
        )
        row.update({k: px[k] for k in (*_PIXEL, *_OVERLAP)})
        row.update(n_ref=float(px["tp"] + px["fn"]), n_pred=float(px["tp"] + px["fp"]))
    if pred_mask is None and heatmap is not None and threshold is not None:
        pred_mask = np.asarray(heatmap) > threshold
    if mask is not None and pred_mask is not None:
        row.update({k: v for k, v in dice_iou(pred_mask, mask, reasons=own).items() if k in row})
        lesions = lesion_detection(pred_mask, mask, spacing=spacing, min_iou=min_iou, reasons=own)
        row.update({k: lesions[k] for k in _LESION})
    report_reasons(own, reasons)
    row["reasons"] = "; ".join(own)
    return row


def summary_rows(
    results: Mapping[str, Mapping[str, Any]], *, group_column: str = "dataset", average: bool = True
) -> list[dict[str, Any]]:
    """Summary sheet rows in peer-paper column order (:data:`SUMMARY_COLUMNS`), plus an ``Average`` row.

    Args:
        results: Group name (dataset or modality) -> :func:`evaluate_set` dict.
        group_column: Name of the first column (``dataset``, ``modality``, ``class``).
        average: Append the ``Average`` row (mean over groups of each defined metric; counts summed).

    Returns:
        Row dicts with the keys of :data:`SUMMARY_COLUMNS`, ``group`` renamed to ``group_column``.
    """
    rows = []
    for name, res in results.items():
        row: dict[str, Any] = {group_column: name}
        row.update({c: float(res.get(c, NAN)) for c in SUMMARY_COLUMNS[1:-2]})
        reasons = res.get("reasons", "")
        row.update(
            normalisation=res.get("normalisation", "none"),
            reasons=reasons if isinstance(reasons, str) else "; ".join(reasons),
        )
        rows.append(row)
    if average and rows:
        avg: dict[str, Any] = {group_column: "Average", "threshold_oracle": NAN}
        for c in _SUMMARY_METRICS:
            vals = [r[c] for r in rows if np.isfinite(r[c])]
            avg[c] = float(np.mean(vals)) if vals else NAN
        for c in _SUMMARY_COUNTS:
            avg[c] = float(np.nansum([r[c] for r in rows]))
        modes = {r["normalisation"] for r in rows}
        avg.update(normalisation=modes.pop() if len(modes) == 1 else "mixed", reasons="")
        rows.append({k: avg[k] for k in rows[0]})
    return rows
