"""Self-contained HTML reports: one page per case and one per cohort.

Pages come from the jinja2 templates shipped as package data (``aaclip_med/templates``), with autoescaping on.
Images are inlined as base64 data URIs and charts as SVG; the pages load nothing from elsewhere (a
Content-Security-Policy meta tag enforces it), so a report folder can be zipped, mailed or opened offline.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import math
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from markupsafe import Markup

from aaclip_med._files import atomic_path
from aaclip_med._typing import Array, PathLike
from aaclip_med.report.overlays import HEAT_HALF_SPAN
from aaclip_med.report.plots import histogram_svg, score_curve_svg
from aaclip_med.report.run_json import describe_case_precisions, describe_precision, mixed_precision_note
from aaclip_med.report.sheets import _columns, to_jsonable

if TYPE_CHECKING:
    import jinja2

__all__ = [
    "UNTRAINED_BANNER",
    "format_value",
    "png_data_uri",
    "slice_ranges",
    "write_case_html",
    "write_cohort_html",
]

logger = logging.getLogger(__name__)

UNTRAINED_BANNER = "Demo/untrained model: outputs show the pipeline, not clinical accuracy"


@functools.cache
def _environment() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("aaclip_med", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = format_value
    return env


def format_value(value: object) -> str:
    """Format a table cell: floats to 6 significant digits, None as an em dash, containers as compact JSON."""
    if value is None:
        return "\u2014"
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(to_jsonable(value), separators=(", ", ": "))
    return str(value)


def png_data_uri(path: PathLike) -> str:
    """Return a ``data:image/png;base64,...`` URI holding the file's bytes."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def slice_ranges(indices: Sequence[int]) -> str:
    """Compress sorted slice indices into ranges.

    Example:
        >>> slice_ranges([3, 4, 5, 9, 11, 12])
        '3-5, 9, 11-12'
    """
    values = sorted({int(k) for k in indices})
    parts: list[str] = []
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and values[end + 1] == values[end] + 1:
            end += 1
        parts.append(str(values[start]) if start == end else f"{values[start]}-{values[end]}")
        start = end + 1
    return ", ".join(parts)


def _render(template: str, path: PathLike, **context: Any) -> Path:
    from aaclip_med._version import __version__

    html = _environment().get_template(template).render(version=__version__, banner=UNTRAINED_BANNER, **context)
    with atomic_path(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    logger.debug("Wrote %s", path)
    return Path(path)


def _provenance_items(
    prov: Mapping[str, Any], preset: str | None, threshold: float | None
) -> list[tuple[str, Any]]:
    model = prov.get("model") or {}
    config = prov.get("config") or {}
    precision = (describe_case_precisions(prov["case_precisions"]) if "case_precisions" in prov  # a cohort's cases
                 else describe_precision(model.get("metadata")))  # fmt: skip
    items: list[tuple[str, Any]] = [
        ("model", model.get("name")),
        ("weights sha256", model.get("weights_sha256")),
        ("untrained backbone", model.get("untrained_backbone")),
        ("precision", precision),
        ("preset", preset if preset is not None else config.get("preset")),
        ("threshold (map units)", threshold),
        ("created (UTC)", prov.get("created_utc")),
    ]
    items += [(f"input {i['path']}", f"sha256 {i.get('sha256')}") for i in prov.get("inputs", [])]
    items += [(f"{name} version", version) for name, version in (prov.get("packages") or {}).items()]
    items += [(f"time {name} (s)", seconds) for name, seconds in (prov.get("timings") or {}).items()]
    return items


def write_case_html(
    path: PathLike,
    *,
    case_id: str,
    overlays: Sequence[PathLike],
    slice_scores: Array,
    scored: Array,
    threshold: float,
    score: float,
    qa: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    untrained: bool = False,
    preset: str | None = None,
    histogram_values: Array | None = None,
    flagged: Array | None = None,
    viewer: Mapping[str, Any] | None = None,
) -> Path:
    """Write the one-page report of a case.

    Sections: summary (volume score, flagged slices), the slice viewer (every slice, when ``viewer`` is given),
    top slices (the overlays), slice-score curve (a click shows that slice in the viewer), score histogram,
    metrics (when labels exist), QA warnings and provenance. An untrained backbone puts a banner on
    top of the page.

    Args:
        path: Output file, usually ``<case folder>/report.html``.
        case_id: The case identifier.
        overlays: Overlay PNGs, shown in this order (highest score first) and inlined.
        slice_scores: ``(n_slices,)`` slice scores in map units.
        scored: ``(n_slices,)`` bool, True where the slice was scored.
        threshold: The map threshold; scored slices above it are flagged.
        score: The volume score.
        qa: The QA record (``warnings`` is listed apart, other scalar fields in a table).
        provenance: The run.json content (see :func:`~aaclip_med.report.provenance`).
        metrics: Metric name to value, when the case has labels.
        untrained: Show the untrained-model banner.
        preset: The modality preset name (else taken from the provenance config).
        histogram_values: Values for the histogram; default the scores of the scored slices.
        flagged: ``(n_slices,)`` bool, the flagged slices (``VolumeResult.flagged``: slices with a mask voxel);
            default scored slices whose score exceeds the threshold.
        viewer: The slice viewer's data (:func:`~aaclip_med.report.viewer_data`); None: no viewer.

    Returns:
        The written path.
    """
    scores = np.asarray(slice_scores, dtype=np.float64)
    scored_b = np.asarray(scored, dtype=bool)
    is_flagged = scored_b & (scores > threshold) if flagged is None else np.asarray(flagged, dtype=bool)
    flagged_idx = np.flatnonzero(is_flagged).tolist()
    qa = dict(qa or {})
    warnings_list = [str(w) for w in qa.pop("warnings", []) or []]
    hist_source = scores[scored_b] if histogram_values is None else np.asarray(histogram_values)
    summary = [
        ("volume score", score),
        ("threshold (map units)", threshold),
        ("slices scored", f"{int(scored_b.sum())} of {scores.size}"),
        ("flagged slices", f"{len(flagged_idx)}: {slice_ranges(flagged_idx)}" if flagged_idx else "none"),
    ]
    return _render(
        "case_report.html",
        path,
        title=f"aaclip-med report: {case_id}",
        case_id=case_id,
        untrained=untrained,
        summary=summary,
        overlays=[{"name": Path(p).stem, "uri": png_data_uri(p)} for p in overlays],
        viewer_json=_script_json(viewer) if viewer else "",
        has_reference="reference" in (viewer or {}).get("channels", {}),
        heat_half_span=format_value(HEAT_HALF_SPAN),
        viewer_note=_viewer_note(viewer) if viewer else "",
        curve_svg=score_curve_svg(scores, scored_b, threshold),
        histogram_svg=histogram_svg(hist_source, threshold, label="slice score"),
        metrics=sorted((metrics or {}).items()),
        warnings=warnings_list,
        qa_items=sorted(qa.items()),
        provenance_items=_provenance_items(provenance or {}, preset, threshold),
        created=(provenance or {}).get("created_utc", ""),
    )


def _script_json(data: Mapping[str, Any]) -> Markup:
    """JSON for a ``<script type="application/json">`` element: no ``<``, ``>`` or ``&`` can end the element."""
    text = json.dumps(to_jsonable(data), separators=(",", ":"), allow_nan=False)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _viewer_note(viewer: Mapping[str, Any]) -> str:
    n, rows, cols = viewer["shape"]
    note = f"{n} slices of {rows} x {cols} pixels"
    if viewer.get("factor", 1) > 1:
        note += f" (in-plane reduced {viewer['factor']}x for the page; the NIfTI outputs keep the full grid)"
    if not viewer.get("reformat"):
        note += "; no coronal or sagittal view: the slices are too thick for the in-plane spacing"
    return note + "."


def _relative_link(target: Path, base: Path) -> str:
    """A URL-quoted link to ``target`` relative to the folder ``base``: it works from disk and when served."""
    relative = os.path.relpath(target.resolve(), base.resolve())
    return urllib.parse.quote(Path(relative).as_posix())


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def _table(rows: Sequence[Mapping[str, Any]], links: Sequence[str | None] | None = None) -> dict[str, Any]:
    """Pre-format rows for the templates; numeric columns (all values numbers or empty) are right-aligned.

    Long free-text ``reasons`` (why a metric is NaN) would stretch every row, so they become notes under the table.
    """
    names = [n for n in _columns(rows) if n != "reasons"]
    notes = [f"{next(iter(r.values()), '')}: {r['reasons']}" for r in rows if r.get("reasons")]
    columns = [
        {"name": name, "numeric": all(_is_number(r.get(name)) or r.get(name) is None for r in rows)}
        for name in names
    ]
    body = [
        [
            {
                "text": format_value(row.get(name)),
                "href": links[i] if links is not None and name == "case_id" else None,
                "numeric": column["numeric"],
            }
            for name, column in zip(names, columns, strict=True)
        ]
        for i, row in enumerate(rows)
    ]
    return {"columns": columns, "rows": body, "notes": notes}


def write_cohort_html(
    path: PathLike,
    *,
    cases: Sequence[Mapping[str, Any]],
    summary: Sequence[Mapping[str, Any]] = (),
    failures: Sequence[Mapping[str, Any]] = (),
    provenance: Mapping[str, Any] | None = None,
    untrained: bool = False,
    title: str = "aaclip-med cohort report",
    sort_by: str = "score",
    case_pages: Mapping[str, PathLike] | None = None,
    link_from: PathLike | None = None,
    verdicts: Sequence[str] = (),
    case_note: str = "Case ids link to the case pages.",
) -> Path:
    """Write the cohort page: summary metrics, the case table (sorted, linked to case pages) and failures.

    Args:
        path: Output file, usually ``<run folder>/report.html``.
        cases: One row per case (``case_id`` first is best), as in ``cases.csv``.
        summary: Summary metric rows, as in ``summary.csv``.
        failures: Failed-case rows, as in ``failures.csv``.
        provenance: The run.json content; its ``case_precisions`` (precision -> cases) is the provenance's
            precision row, and a warning above the summary when the cases were scored in different precisions.
        untrained: Show the untrained-model banner.
        title: The page title.
        sort_by: Column to sort the case table by, highest first (rows without it go last).
        case_pages: Case id -> the final path of its page; only these case ids are linked. Default
            ``<page folder>/cases/<case_id>/report.html`` where it exists. Links are relative and URL-quoted,
            so the folder works opened from disk.
        link_from: The folder the page will finally sit in (default ``path``'s folder; pass it when ``path`` is
            a staging folder).
        verdicts: Sentences comparing the model with the trivial baselines (shown above the summary table).
        case_note: What the case links open (shown above the case table when a case is linked).

    Returns:
        The written path.
    """
    root = Path(path).parent
    base = Path(link_from) if link_from is not None else root

    def numeric_key(row: Mapping[str, Any]) -> tuple[bool, float]:
        value = row.get(sort_by)
        number = float(value) if isinstance(value, int | float | np.number) else math.nan
        return (not math.isfinite(number), -number if math.isfinite(number) else 0.0)

    def link(row: Mapping[str, Any]) -> str | None:
        if "case_id" not in row:
            return None
        case_id = str(row["case_id"])
        if case_pages is not None:  # the caller's pages (they may not exist yet: staged output)
            return _relative_link(Path(case_pages[case_id]), base) if case_id in case_pages else None
        page = base / "cases" / case_id / "report.html"
        return _relative_link(page, base) if page.is_file() else None

    ordered = sorted(cases, key=numeric_key)
    links = [link(row) for row in ordered]
    prov = provenance or {}
    return _render(
        "cohort_report.html",
        path,
        title=title,
        untrained=untrained,
        n_cases=len(cases),
        n_failures=len(failures),
        sort_by=sort_by,
        cases_table=_table(ordered, links),
        case_note=case_note if any(links) else "No case page was found to link to.",
        summary_table=_table(summary),
        verdicts=list(verdicts),
        precision_note=mixed_precision_note(prov.get("case_precisions")),
        failures_table=_table(failures),
        provenance_items=_provenance_items(prov, None, None),
        created=prov.get("created_utc", ""),
    )
