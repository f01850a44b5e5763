"""Shared helpers of :mod:`aaclip_med.metrics`: undefined-metric reasons, input checks, limited trapezoid."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import numpy.typing as npt

from aaclip_med.errors import ConfigError, GeometryError

__all__ = ["UndefinedMetricWarning"]

logger = logging.getLogger(__name__)

NAN = float("nan")


class UndefinedMetricWarning(RuntimeWarning):
    """A metric is undefined on the given data (one class only, empty masks, constant scores) and is NaN."""


def undefined(reason: str, reasons: list[str] | None, stacklevel: int = 3) -> float:
    """Record why a metric is NaN and return NaN.

    Args:
        reason: One-line explanation, naming the metric.
        reasons: The caller's list to append to; ``None`` warns instead (pointing at the public caller).
        stacklevel: Passed to :func:`warnings.warn` when ``reasons`` is ``None``.

    Returns:
        ``nan``.
    """
    if reasons is None:
        warnings.warn(reason, UndefinedMetricWarning, stacklevel=stacklevel)
    elif reason not in reasons:
        reasons.append(reason)
    return NAN


def report_reasons(own: list[str], reasons: list[str] | None, stacklevel: int = 4) -> None:
    """Hand a public function's collected reasons to its caller's list, or warn once when it gave none.

    Args:
        own: Reasons collected by the public function.
        reasons: The caller's list, or ``None`` to emit one :class:`UndefinedMetricWarning` (nothing when empty).
        stacklevel: Warning stack level; the default points at the public function's caller.
    """
    if reasons is not None:
        reasons.extend(r for r in own if r not in reasons)
    elif own:
        warnings.warn("; ".join(own), UndefinedMetricWarning, stacklevel=stacklevel)


def as_labels_scores(labels: npt.ArrayLike, scores: npt.ArrayLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Flatten labels to bool and scores to float64 and check that they match and are finite.

    Raises:
        GeometryError: The two arrays have different sizes.
        ConfigError: A score is NaN or infinite.
    """
    y = np.asarray(labels).ravel() > 0
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.size != s.size:
        msg = f"{what}: {y.size} labels but {s.size} scores; pass one label per score (same array shape)"
        raise GeometryError(msg)
    check_finite(s, what)
    return y, s


def check_finite(values: np.ndarray, what: str) -> None:
    """Raise :class:`ConfigError` when ``values`` holds NaN or infinite entries."""
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        msg = f"{what}: {bad} non-finite score(s); metrics need finite scores: fix the map or pass valid="
        raise ConfigError(msg)


def class_reason(n_pos: int, n_neg: int, what: str) -> str | None:
    """Return why a ranking metric is undefined for these class counts, or ``None`` when it is defined."""
    if n_pos == 0 and n_neg == 0:
        return f"{what}: no samples"
    if n_pos == 0:
        return f"{what}: no positive (anomalous) samples, only one class"
    if n_neg == 0:
        return f"{what}: no negative (normal) samples, only one class"
    return None


def trapezoid_limited(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Area under the piecewise-linear curve (x, y) for x in [x[0], x_max], interpolating y at ``x_max``.

    This is ``trapezoid(..., x_max=...)`` of the MVTec AD evaluation code (``generic_util.py``). ``x`` must be
    non-decreasing; when ``x_max`` lies beyond the last point the area stops at the last point.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    inside = x <= x_max
    xi, yi = x[inside], y[inside]
    area = float(np.sum(0.5 * (yi[1:] + yi[:-1]) * np.diff(xi)))
    n_in = int(np.count_nonzero(inside))
    if 0 < n_in < x.size and xi[-1] < x_max:
        x0, x1, y0, y1 = x[n_in - 1], x[n_in], y[n_in - 1], y[n_in]
        y_lim = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_lim) * (x_max - x0)
    return float(area)
