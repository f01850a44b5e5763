"""Evaluation metrics of aaclip-med: pure numpy / scipy / scikit-learn, no torch.

- Image and volume level (:mod:`~aaclip_med.metrics.ranking`): :func:`auroc`, :func:`average_precision`,
  :func:`f1_max`, :func:`image_metrics` (``prefix="volume"`` for volume scores).
- Pixel level (:mod:`~aaclip_med.metrics.pixel`): :class:`PixelAccumulator` (memory-bounded histograms or exact),
  :func:`pixel_metrics` (one case), :func:`aupro` (MVTec AD protocol, FPR <= 0.3, normalised),
  :class:`RegionWeightCache` (a case's AUPRO regions labelled once for all its maps).
- Masks (:mod:`~aaclip_med.metrics.segmentation`): :func:`dice_iou`, :func:`lesion_detection`.
- Sheets (:mod:`~aaclip_med.metrics.rows`): :func:`normalise_maps`, :func:`evaluate_set`,
  :func:`slice_metric_rows`, :func:`case_row`, :func:`summary_rows` and their column tuples.

Undefined values (one class only, empty masks, constant scores) are NaN, never an exception; the reason goes to
the ``reasons`` list the caller passes, or else to an :class:`UndefinedMetricWarning`.

Example:
    >>> from aaclip_med.metrics import auroc
    >>> auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
"""

from __future__ import annotations

from aaclip_med.metrics._common import UndefinedMetricWarning
from aaclip_med.metrics.pixel import PixelAccumulator, RegionWeightCache, aupro, pixel_metrics, region_weights
from aaclip_med.metrics.ranking import (
    auroc,
    average_precision,
    f1_max,
    histogram_metrics,
    image_metrics,
    weighted_aupro,
)
from aaclip_med.metrics.rows import (
    CASE_METRIC_COLUMNS,
    SLICE_METRIC_COLUMNS,
    SUMMARY_COLUMNS,
    case_row,
    evaluate_set,
    normalise_maps,
    slice_metric_rows,
    summary_rows,
)
from aaclip_med.metrics.segmentation import dice_iou, lesion_detection, overlap_scores

__all__ = [
    "CASE_METRIC_COLUMNS",
    "SLICE_METRIC_COLUMNS",
    "SUMMARY_COLUMNS",
    "PixelAccumulator",
    "RegionWeightCache",
    "UndefinedMetricWarning",
    "aupro",
    "auroc",
    "average_precision",
    "case_row",
    "dice_iou",
    "evaluate_set",
    "f1_max",
    "histogram_metrics",
    "image_metrics",
    "lesion_detection",
    "normalise_maps",
    "overlap_scores",
    "pixel_metrics",
    "region_weights",
    "slice_metric_rows",
    "summary_rows",
    "weighted_aupro",
]
