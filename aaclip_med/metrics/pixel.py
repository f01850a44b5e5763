"""Pixel-level metrics over many cases with bounded memory: :class:`PixelAccumulator` and :func:`pixel_metrics`.

Pixel AUROC, AP and F1-max pool every evaluated pixel (voxel) of a set, as the papers do. AUPRO follows the MVTec
AD evaluation (``compute_pro``): ground-truth regions are the connected components of the mask (8-connected in a
2D image; 26-connected in 3D), PRO at a threshold is the mean over all regions of the set of the fraction of the
region above the threshold, FPR is over all normal pixels of the set, and the PRO curve is integrated up to
FPR 0.3 (trapezoid rule, interpolated at the limit) and divided by 0.3.

Regions: ``regions="slice"`` (default) labels each 2D slice of a volume on its own, as the papers label each 2D
image, so a lesion spanning 10 slices counts as 10 regions; ``regions="volume"`` labels 3D components. Labelling
is the costly part of an update: where several maps are evaluated against one mask (``eval``: the model's map and
the baselines, in each region), a :class:`RegionWeightCache` labels each (mask, region) once for all of them.

Binned mode (default) keeps three histograms of ``bins`` bins (positive counts, negative counts, positive region
weights): memory does not grow with the cohort. When a score falls outside the current range, the range doubles
(pairs of bins merge) until it fits, so no score is ever clipped. Pass ``value_range`` when the score range is
known (e.g. ``(0, 1)`` after set-level min-max) to keep the finest bins. With 10,000 bins AUROC/AP/F1-max agree
with scikit-learn to about 1e-4 on smooth score distributions (tests require 1e-3); ``auroc_error_bound`` in the
result is a hard bound for AUROC. ``exact=True`` keeps every score and calls scikit-learn (small sets only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from aaclip_med.errors import ConfigError, GeometryError
from aaclip_med.metrics._common import NAN, check_finite, class_reason, report_reasons, undefined
from aaclip_med.metrics.ranking import auroc, average_precision, f1_max, histogram_metrics, weighted_aupro
from aaclip_med.metrics.segmentation import overlap_scores

__all__ = ["PixelAccumulator", "RegionWeightCache", "aupro", "pixel_metrics", "region_weights"]

logger = logging.getLogger(__name__)

Regions = Literal["slice", "volume"]
_CHUNK = 1 << 22  # voxels binned at a time: bounds the temporaries to ~100 MB whatever the volume size


def region_weights(mask: np.ndarray, regions: Regions = "slice", slice_axis: int = -1) -> tuple[np.ndarray, int]:
    """Label ground-truth regions and give each anomalous pixel the weight ``1 / size of its region``.

    Args:
        mask: Boolean ground truth, 2D or 3D.
        regions: ``slice`` labels each 2D slice along ``slice_axis`` separately; ``volume`` labels 3D components.
        slice_axis: The slice axis of a 3D mask (ignored in 2D).

    Returns:
        ``(weights, n_regions)``: weights of the anomalous pixels in ``mask[mask]`` order, and the region count.
    """
    if regions not in ("slice", "volume"):
        msg = f"regions={regions!r} is not known; use 'slice' (2D components) or 'volume' (3D)"
        raise ConfigError(msg)
    structure = np.ones((3,) * mask.ndim, dtype=bool)
    if regions == "slice" and mask.ndim == 3:
        keep = [slice(None)] * 3
        keep[slice_axis] = slice(1, 2)
        flat = np.zeros_like(structure)
        flat[tuple(keep)] = True
        structure = flat
    mask = np.asarray(mask, dtype=bool)
    boxes = ndimage.find_objects(mask.view(np.uint8))  # [the box of the True pixels], or [] when there is none
    inside = mask[boxes[0] if boxes else (slice(0, 0),) * mask.ndim]  # every region lies in it, pixels in order
    labels, n_regions = ndimage.label(inside, structure=structure)
    sizes = np.bincount(labels.ravel()).astype(np.float64)
    return 1.0 / sizes[labels[inside]], int(n_regions)


_Weights = tuple[np.ndarray, int]


class RegionWeightCache:
    """The :func:`region_weights` of one case's masks, computed once per (mask, valid, region rule, slice axis).

    Every map of a case (the model's, the baselines') is evaluated against the same reference mask in the same
    regions: pass one cache to each :meth:`PixelAccumulator.update` of the case and the mask's components are
    labelled once per evaluated region instead of once per map. Entries are keyed by the identity of the ``mask``
    and ``valid`` objects given to ``update`` (the cache holds them, so an identity cannot be reused), so those
    arrays must not change while the cache is in use: keep one cache per case and let it go with the case.

    Example:
        >>> cache, mask = RegionWeightCache(), np.array([[0, 1], [1, 1]])
        >>> for score_map in (np.array([[0.1, 0.9], [0.8, 0.7]]), np.array([[0.5, 0.6], [0.2, 0.9]])):
        ...     PixelAccumulator().update(score_map, mask, regions_cache=cache)  # one labelling for both
        >>> len(cache)
        1
    """

    def __init__(self) -> None:
        """An empty cache."""
        self._entries: dict[tuple[int, int, str, int], tuple[object, object, _Weights]] = {}

    def __len__(self) -> int:
        """How many (mask, valid, region rule, slice axis) entries were computed."""
        return len(self._entries)

    def get(
        self, mask: object, valid: object, regions: Regions, slice_axis: int, compute: Callable[[], _Weights]
    ) -> _Weights:
        """``(weights, n_regions)`` of ``mask`` inside ``valid``: ``compute()`` once, the stored result after.

        ``mask`` and ``valid`` are the objects given to :meth:`PixelAccumulator.update` (``valid`` may be None);
        ``compute`` gives :func:`region_weights` of the evaluated mask.
        """
        key = (id(mask), id(valid), regions, slice_axis)
        if key not in self._entries:
            self._entries[key] = (mask, valid, compute())
        return self._entries[key][2]


class PixelAccumulator:
    """Accumulates (map, mask) pairs one case at a time; :meth:`compute` gives the pooled pixel metrics.

    Args:
        bins: Histogram bins (even; binned mode only).
        value_range: ``(lo, hi)`` of the scores, or ``None`` to start from the first case's range and grow.
        exact: Keep every score and use scikit-learn (memory grows with the set).
        threshold: The model's threshold, for the pooled Dice/IoU at that threshold (``score > threshold``).
        regions: AUPRO regions, ``slice`` (2D, as the papers) or ``volume`` (3D); see the module docstring.
        fpr_limit: AUPRO integration limit.
        with_aupro: Compute AUPRO (labelling costs time on large masks).

    Example:
        >>> acc = PixelAccumulator(value_range=(0.0, 1.0), threshold=0.5)
        >>> acc.update(np.array([[0.1, 0.9]]), np.array([[0, 1]]))
        >>> round(acc.compute()["pixel_auroc"], 3)
        1.0
    """

    def __init__(
        self,
        bins: int = 10_000,
        value_range: tuple[float, float] | None = None,
        *,
        exact: bool = False,
        threshold: float | None = None,
        regions: Regions = "slice",
        fpr_limit: float = 0.3,
        with_aupro: bool = True,
    ) -> None:
        if bins < 2 or bins % 2:
            msg = f"bins={bins} is invalid; use an even number >= 2 (e.g. 10000)"
            raise ConfigError(msg)
        if value_range is not None and not value_range[0] < value_range[1]:
            msg = f"value_range={value_range} is invalid; use (lo, hi) with lo < hi"
            raise ConfigError(msg)
        if not 0 < fpr_limit <= 1:
            msg = f"fpr_limit={fpr_limit} is invalid; use a value in (0, 1], usually 0.3"
            raise ConfigError(msg)
        self.bins, self.exact, self.threshold = bins, exact, threshold
        self.regions, self.fpr_limit, self.with_aupro = regions, fpr_limit, with_aupro
        self._range = (float(value_range[0]), float(value_range[1])) if value_range else None
        self._hist = np.zeros((3, bins), dtype=np.float64)  # rows: positives, negatives, positive region weights
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.n_regions = 0
        self.n_cases = 0
        self._counts = np.zeros(3, dtype=np.int64)  # tp, fp, fn at the model's threshold

    def update(
        self,
        score_map: npt.ArrayLike,
        mask: npt.ArrayLike,
        *,
        valid: npt.ArrayLike | None = None,
        slice_axis: int = -1,
        regions_cache: RegionWeightCache | None = None,
    ) -> None:
        """Add one case (a 2D image or a 3D volume).

        Args:
            score_map: Anomaly map (higher = more anomalous).
            mask: Ground truth of the same shape (> 0 is anomalous); all-zero for normal cases.
            valid: Optional boolean array; pixels where it is False are left out (e.g. unscored slices).
            slice_axis: Slice axis of a 3D case, for ``regions="slice"``.
            regions_cache: The case's :class:`RegionWeightCache`: the AUPRO regions of this ``mask`` and
                ``valid`` are labelled once for every map evaluated against them.

        Raises:
            GeometryError: The arrays' shapes differ or are not 2D/3D.
            ConfigError: The map holds NaN or infinite values where it is evaluated.
        """
        s = np.asarray(score_map)
        s = s if np.issubdtype(s.dtype, np.floating) else s.astype(np.float64)
        m = np.asarray(mask) > 0
        if s.shape != m.shape or s.ndim not in (2, 3):
            msg = (
                f"map shape {s.shape} and mask shape {m.shape} must be equal and 2D or 3D; resample the mask "
                "onto the map grid"
            )
            raise GeometryError(msg)
        if valid is None:
            y, sv = m.ravel(), s.ravel()
        else:
            v = np.asarray(valid, dtype=bool)
            if v.shape != s.shape:
                msg = f"valid shape {v.shape} differs from map shape {s.shape}; pass one per voxel"
                raise GeometryError(msg)
            m = m & v
            y, sv = m[v], s[v]
        check_finite(sv, "pixel map")
        w_pos = np.ones(int(np.count_nonzero(y)))  # weights of the anomalous pixels, in sv[y] order
        if self.with_aupro:
            if regions_cache is None:
                w_pos, n = region_weights(m, self.regions, slice_axis)
            else:  # the mask and valid objects as given: the cache knows them by identity
                w_pos, n = regions_cache.get(mask, valid, self.regions, slice_axis,
                                             lambda: region_weights(m, self.regions, slice_axis))  # fmt: skip
            self.n_regions += n
        self.n_cases += 1
        if self.threshold is not None:
            pred = sv > self.threshold
            self._counts += [np.count_nonzero(pred & y), np.count_nonzero(pred & ~y), np.count_nonzero(~pred & y)]
        if self.exact:
            self._chunks.append((y.copy(), sv.astype(np.float64), w_pos))
        elif sv.size:
            self._bin(y, sv, w_pos)

    def _bin(self, y: np.ndarray, s: np.ndarray, w_pos: np.ndarray) -> None:
        """Add scores to the histograms, doubling the range until they fit; works in chunks to bound memory."""
        lo_s, hi_s = float(s.min()), float(s.max())
        if self._range is None:
            self._range = (lo_s, hi_s) if hi_s > lo_s else (lo_s - 0.5, lo_s + 0.5)
        lo, hi = self._range
        while lo_s < lo or hi_s > hi:
            merged = self._hist.reshape(3, -1, 2).sum(axis=2)
            pad = np.zeros_like(merged)
            if lo_s < lo:
                self._hist, lo = np.concatenate([pad, merged], axis=1), lo - (hi - lo)
            else:
                self._hist, hi = np.concatenate([merged, pad], axis=1), hi + (hi - lo)
            logger.debug("pixel histogram range grown to [%g, %g]", lo, hi)
        self._range = (lo, hi)
        done_pos = 0
        for start in range(0, s.size, _CHUNK):
            yc = y[start : start + _CHUNK]
            idx = ((s[start : start + _CHUNK] - lo) * (self.bins / (hi - lo))).astype(np.int64)
            np.clip(idx, 0, self.bins - 1, out=idx)
            n_pos = int(np.count_nonzero(yc))
            self._hist[0] += np.bincount(idx[yc], minlength=self.bins)
            self._hist[1] += np.bincount(idx[~yc], minlength=self.bins)
            self._hist[2] += np.bincount(idx[yc], weights=w_pos[done_pos : done_pos + n_pos], minlength=self.bins)
            done_pos += n_pos

    @property
    def edges(self) -> np.ndarray:
        """Current bin edges (``bins + 1`` values); empty before the first case in binned mode."""
        return np.linspace(*self._range, self.bins + 1) if self._range else np.empty(0)

    def compute(self, *, reasons: list[str] | None = None) -> dict[str, Any]:
        """Pooled pixel metrics of all cases added so far.

        Args:
            reasons: List that collects why values are NaN; ``None`` warns once instead.

        Returns:
            ``pixel_auroc``, ``pixel_ap``, ``pixel_f1_max``, ``pixel_aupro``, ``threshold_oracle`` (the F1-optimal
            threshold, ``score >= t``), ``dice_oracle`` (= pixel F1-max), ``iou_oracle``, ``dice``/``iou``/``tp``/
            ``fp``/``fn`` at the model's threshold (NaN without one), ``n_pixels``, ``n_pos``, ``n_regions``,
            ``n_cases``, ``mode`` (``exact``/``binned``), ``auroc_error_bound`` (0 when exact), ``bin_width``.
        """
        own: list[str] = []
        if self.exact:
            core = self._compute_exact(own)
            n_pix, n_pos = sum(c[0].size for c in self._chunks), sum(int(c[0].sum()) for c in self._chunks)
        else:
            edges = self.edges if self._range else np.zeros(self.bins + 1)
            core = histogram_metrics(
                self._hist[0],
                self._hist[1],
                edges,
                pro_weights=self._hist[2] if self.with_aupro else None,
                n_regions=self.n_regions,
                fpr_limit=self.fpr_limit,
                reasons=own,
            )
            n_pix, n_pos = int(self._hist[:2].sum()), int(self._hist[0].sum())
        f1 = core["f1_max"]
        out: dict[str, Any] = {
            "pixel_auroc": core["auroc"],
            "pixel_ap": core["ap"],
            "pixel_f1_max": f1,
            "pixel_aupro": core["aupro"],
            "threshold_oracle": core["threshold_f1"],
            "dice_oracle": f1,
            "iou_oracle": f1 / (2 - f1),
            "n_pixels": n_pix,
            "n_pos": n_pos,
            "n_regions": self.n_regions,
            "n_cases": self.n_cases,
            "mode": "exact" if self.exact else "binned",
            "auroc_error_bound": core["auroc_error_bound"],
            "bin_width": NAN if self.exact or not self._range else (self._range[1] - self._range[0]) / self.bins,
        }
        tp, fp, fn = (int(c) for c in self._counts)
        out.update(
            overlap_scores(tp, fp, fn, reasons=own) if self.threshold is not None else {"dice": NAN, "iou": NAN}
        )
        out.update(tp=tp, fp=fp, fn=fn, threshold=NAN if self.threshold is None else float(self.threshold))
        report_reasons(own, reasons)
        out["reasons"] = own
        return out

    def _compute_exact(self, reasons: list[str]) -> dict[str, float]:
        """Exact metrics with scikit-learn over the stored scores."""
        parts = zip(*self._chunks, strict=True) if self._chunks else ([np.zeros(0, bool)],) * 3
        y, s, w = (np.concatenate(part) for part in parts)
        n_pos = int(np.count_nonzero(y))
        reason = class_reason(n_pos, y.size - n_pos, "pixel metrics")
        if reason is None and s.min() == s.max():
            reason = "pixel metrics: scores are constant, so they give no ranking"
        if reason is not None:
            keys = ("auroc", "ap", "f1_max", "threshold_f1", "aupro", "auroc_error_bound")
            return dict.fromkeys(keys, undefined(reason, reasons))
        f1, thr = f1_max(y, s, reasons=reasons)
        return {
            "auroc": auroc(y, s, reasons=reasons),
            "ap": average_precision(y, s, reasons=reasons),
            "f1_max": f1,
            "threshold_f1": thr,
            "auroc_error_bound": 0.0,
            "aupro": weighted_aupro(y, s, w, self.n_regions, fpr_limit=self.fpr_limit, reasons=reasons)
            if self.with_aupro
            else NAN,
        }


def pixel_metrics(
    score_map: npt.ArrayLike,
    mask: npt.ArrayLike,
    *,
    valid: npt.ArrayLike | None = None,
    threshold: float | None = None,
    exact: bool = False,
    regions: Regions = "slice",
    slice_axis: int = -1,
    fpr_limit: float = 0.3,
    reasons: list[str] | None = None,
    regions_cache: RegionWeightCache | None = None,
) -> dict[str, Any]:
    """Pixel metrics of one case (e.g. per volume): a one-case :class:`PixelAccumulator`.

    Args:
        score_map: Anomaly map, 2D or 3D.
        mask: Ground truth of the same shape.
        valid: Optional boolean array of the pixels to evaluate.
        threshold: The model's threshold, for Dice/IoU (``score > threshold``).
        exact: scikit-learn on all pixels instead of 10,000-bin histograms over the case's own range.
        regions: AUPRO regions, ``slice`` or ``volume``.
        slice_axis: Slice axis of a 3D case.
        fpr_limit: AUPRO integration limit.
        reasons: List that collects why values are NaN; ``None`` warns once instead.
        regions_cache: The case's :class:`RegionWeightCache` (its AUPRO regions labelled once for all maps).

    Returns:
        The dict of :meth:`PixelAccumulator.compute`.
    """
    acc = PixelAccumulator(exact=exact, threshold=threshold, regions=regions, fpr_limit=fpr_limit)
    acc.update(score_map, mask, valid=valid, slice_axis=slice_axis, regions_cache=regions_cache)
    own: list[str] = []
    out = acc.compute(reasons=own)
    report_reasons(own, reasons)
    return out


def aupro(
    score_maps: Iterable[npt.ArrayLike],
    masks: Iterable[npt.ArrayLike],
    *,
    fpr_limit: float = 0.3,
    regions: Regions = "slice",
    reasons: list[str] | None = None,
) -> float:
    """Exact AUPRO of a set of images (MVTec AD ``compute_pro`` + ``trapezoid`` / ``fpr_limit``).

    Args:
        score_maps: Anomaly maps, one per image (an ``(N, H, W)`` array iterates as N images).
        masks: Ground truths, one per map.
        fpr_limit: Integration limit (0.3 in the papers).
        regions: ``slice`` or ``volume`` components for 3D maps (slice axis: last).
        reasons: List that collects why the value is NaN; ``None`` warns instead.

    Returns:
        AUPRO in [0, 1] or NaN (no regions, no normal pixels, constant scores).
    """
    acc = PixelAccumulator(exact=True, regions=regions, fpr_limit=fpr_limit)
    for score_map, mask in zip(score_maps, masks, strict=True):
        acc.update(score_map, mask)
    own: list[str] = []
    value = acc.compute(reasons=own)["pixel_aupro"]
    report_reasons(own, reasons)
    return float(value)
