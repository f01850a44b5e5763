"""Small inline SVG charts for the HTML reports: the slice-score curve and a score histogram.

Plain SVG text (no matplotlib, no script) keeps the pages self-contained, sharp at any zoom and tiny. Only
numbers and escaped labels go into the markup.
"""

from __future__ import annotations

from html import escape

import numpy as np
from markupsafe import Markup

from aaclip_med._typing import Array

__all__ = ["histogram_svg", "nice_ticks", "score_curve_svg"]

_PAD_LEFT, _PAD_RIGHT, _PAD_TOP, _PAD_BOTTOM = 56, 16, 14, 34
_THRESHOLD_COLOUR = "#d62728"
_LINE_COLOUR = "#1f77b4"


class _Frame:
    """Maps data coordinates to the SVG plot area and draws axes, ticks and the threshold line."""

    def __init__(
        self, width: int, height: int, x_range: tuple[float, float], y_range: tuple[float, float]
    ) -> None:
        self.width, self.height = width, height
        self.x0, self.x1 = _padded(*x_range, pad=0.0)
        self.y0, self.y1 = _padded(*y_range, pad=0.06)

    def x(self, value: float) -> float:
        span = self.width - _PAD_LEFT - _PAD_RIGHT
        return _PAD_LEFT + (value - self.x0) / (self.x1 - self.x0) * span

    def y(self, value: float) -> float:
        span = self.height - _PAD_TOP - _PAD_BOTTOM
        return self.height - _PAD_BOTTOM - (value - self.y0) / (self.y1 - self.y0) * span

    def axes(self, x_label: str, y_label: str, *, x_integer: bool, y_integer: bool = False) -> list[str]:
        bottom, left = self.height - _PAD_BOTTOM, _PAD_LEFT
        parts = [
            f'<line x1="{left}" y1="{bottom}" x2="{self.width - _PAD_RIGHT}" y2="{bottom}" stroke="#444"/>',
            f'<line x1="{left}" y1="{_PAD_TOP}" x2="{left}" y2="{bottom}" stroke="#444"/>',
        ]
        for value in nice_ticks(self.y0, self.y1, 6, integer=y_integer):
            y = self.y(value)
            parts.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="#444"/>')
            parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_tick_label(value)}</text>')
        for value in nice_ticks(self.x0, self.x1, 7, integer=x_integer):
            x = self.x(value)
            label = _tick_label(value)
            parts.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#444"/>')
            parts.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{label}</text>')
        parts.append(
            f'<text x="{(left + self.width - _PAD_RIGHT) / 2:.1f}" y="{self.height - 4}" '
            f'text-anchor="middle">{escape(x_label)}</text>'
        )
        mid = (_PAD_TOP + bottom) / 2
        parts.append(
            f'<text x="12" y="{mid:.1f}" text-anchor="middle" transform="rotate(-90 12 {mid:.1f})">'
            f"{escape(y_label)}</text>"
        )
        return parts

    def threshold(self, value: float, horizontal: bool) -> str:
        dash = f'stroke="{_THRESHOLD_COLOUR}" stroke-dasharray="6 4" stroke-width="1.5"'
        label = f"threshold {value:.4g}"
        if horizontal:
            y = self.y(value)
            return (
                f'<line x1="{_PAD_LEFT}" y1="{y:.1f}" x2="{self.width - _PAD_RIGHT}" y2="{y:.1f}" {dash}/>'
                f'<text x="{self.width - _PAD_RIGHT - 4}" y="{y - 5:.1f}" text-anchor="end" '
                f'fill="{_THRESHOLD_COLOUR}">{label}</text>'
            )
        x = self.x(value)
        right_half = x > self.width / 2  # the label goes on the side with room, never past the edge
        text_x, anchor = (x - 4, "end") if right_half else (x + 4, "start")
        return (
            f'<line x1="{x:.1f}" y1="{_PAD_TOP}" x2="{x:.1f}" y2="{self.height - _PAD_BOTTOM}" {dash}/>'
            f'<text x="{text_x:.1f}" y="{_PAD_TOP + 12}" text-anchor="{anchor}" '
            f'fill="{_THRESHOLD_COLOUR}">{label}</text>'
        )


def nice_ticks(lo: float, hi: float, count: int = 5, *, integer: bool = False) -> list[float]:
    """Round tick values inside ``[lo, hi]``: steps of 1, 2, 2.5 or 5 times a power of ten (or whole numbers).

    Example:
        >>> nice_ticks(-0.401, 2.29)
        [0.0, 0.5, 1.0, 1.5, 2.0]
        >>> nice_ticks(0.0, 39.0, 7, integer=True)
        [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0]
    """
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        return [float(lo)] if np.isfinite(lo) else []
    raw = (hi - lo) / max(count - 1, 1)
    power = 10.0 ** np.floor(np.log10(raw))
    step = min((m * power for m in (1.0, 2.0, 2.5, 5.0, 10.0)), key=lambda v: abs(np.log(v / raw)))
    if integer:
        step = max(1.0, float(np.ceil(step)))
    first = np.ceil(lo / step - 1e-9) * step
    ticks = first + step * np.arange(int(np.floor((hi - first) / step + 1e-9)) + 1)
    return [float(np.round(t / step) * step) + 0.0 for t in ticks]


def _tick_label(value: float) -> str:
    return f"{value:.6g}"


def _padded(lo: float, hi: float, pad: float) -> tuple[float, float]:
    if not np.isfinite(lo) or not np.isfinite(hi):
        return 0.0, 1.0
    if hi <= lo:
        return lo - 0.5, lo + 0.5
    margin = (hi - lo) * pad
    return lo - margin, hi + margin


def _svg(width: int, height: int, title: str, body: list[str], attributes: str = "") -> Markup:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" font-family="sans-serif" font-size="11" fill="#222"{attributes}>'
        f"<title>{escape(title)}</title>"
    )
    return Markup(head + "".join(body) + "</svg>")


def score_curve_svg(
    slice_scores: Array, scored: Array, threshold: float, *, width: int = 760, height: int = 230
) -> Markup:
    """Draw the slice scores along the volume with the threshold line.

    Scored slices form the curve (broken across skipped slices), flagged slices (score above the threshold) are
    red dots, skipped slices are grey ticks under the axis. X ticks are whole slice indices, y ticks round values.
    The ``data-x0``/``data-x1`` attributes (x of slice 0 and of the last slice) and ``data-y0``/``data-y1`` (the
    plot's top and bottom) let the report's viewer map a click to a slice and draw its cursor.

    Args:
        slice_scores: ``(n_slices,)`` slice scores in map units.
        scored: ``(n_slices,)`` bool, True where scored.
        threshold: The threshold in map units.
        width: SVG width in pixels.
        height: SVG height in pixels.

    Returns:
        SVG markup, safe to insert into an autoescaped template.
    """
    scores = np.asarray(slice_scores, dtype=np.float64)
    mask = np.asarray(scored, dtype=bool)
    values = np.append(scores[mask], threshold)
    frame = _Frame(width, height, (0.0, max(scores.size - 1, 1)), (values.min(), values.max()))
    body = frame.axes("slice index", "slice score", x_integer=True)
    runs: list[list[str]] = []
    for k in range(scores.size):
        if not mask[k]:
            x = frame.x(k)
            bottom = height - _PAD_BOTTOM
            body.append(f'<line x1="{x:.1f}" y1="{bottom + 1}" x2="{x:.1f}" y2="{bottom + 6}" stroke="#bbb"/>')
            continue
        if k == 0 or not mask[k - 1]:
            runs.append([])
        runs[-1].append(f"{frame.x(k):.1f},{frame.y(scores[k]):.1f}")
    for run in runs:
        body.append(f'<polyline points="{" ".join(run)}" fill="none" stroke="{_LINE_COLOUR}" stroke-width="1.5"/>')
    for k in np.flatnonzero(mask & (scores > threshold)).tolist():
        body.append(
            f'<circle cx="{frame.x(k):.1f}" cy="{frame.y(scores[k]):.1f}" r="2.8" fill="{_THRESHOLD_COLOUR}">'
            f"<title>slice {k}: {scores[k]:.4g}</title></circle>"
        )
    body.append(frame.threshold(threshold, horizontal=True))
    hooks = (
        f' data-x0="{frame.x(0):.1f}" data-x1="{frame.x(max(scores.size - 1, 1)):.1f}" '
        f'data-y0="{_PAD_TOP}" data-y1="{height - _PAD_BOTTOM}"'
    )
    return _svg(width, height, "Slice score along the volume", body, hooks)


def histogram_svg(
    values: Array, threshold: float, *, bins: int = 30, width: int = 760, height: int = 200, label: str = "score"
) -> Markup:
    """Draw a histogram of ``values`` with the threshold as a vertical line.

    Args:
        values: The values (non-finite ones are dropped).
        threshold: The threshold in the values' units.
        bins: Number of bins.
        width: SVG width in pixels.
        height: SVG height in pixels.
        label: The x-axis label.

    Returns:
        SVG markup, safe to insert into an autoescaped template.
    """
    data = np.asarray(values, dtype=np.float64).ravel()
    data = data[np.isfinite(data)]
    extent = np.append(data, threshold)
    lo, hi = _padded(float(extent.min()), float(extent.max()), pad=0.02)
    counts, edges = np.histogram(data, bins=bins, range=(lo, hi))
    frame = _Frame(width, height, (lo, hi), (0.0, float(max(counts.max(initial=0), 1))))
    frame.y0 = 0.0  # bars stand on the axis
    body = frame.axes(label, "count", x_integer=False, y_integer=True)
    base = frame.y(0.0)
    for count, left, right in zip(counts, edges[:-1], edges[1:], strict=True):
        if count == 0:
            continue
        x, top = frame.x(left), frame.y(count)
        body.append(
            f'<rect x="{x:.1f}" y="{top:.1f}" width="{max(frame.x(right) - x - 1, 1):.1f}" '
            f'height="{base - top:.1f}" fill="{_LINE_COLOUR}" fill-opacity="0.75">'
            f"<title>{left:.4g} to {right:.4g}: {count}</title></rect>"
        )
    body.append(frame.threshold(threshold, horizontal=False))
    return _svg(width, height, f"Histogram of {label}", body)
