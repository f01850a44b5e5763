"""Reports: overlay PNGs, CSV/Excel sheets, JSON and provenance (run.json), and self-contained HTML pages.

Nothing here imports the model; every function takes plain arrays (or a ``Volume`` and ``VolumeResult``) and
writes its file atomically (temporary sibling + ``os.replace``).

Example:
    >>> from aaclip_med import report
    >>> paths = report.write_volume_overlays(vol, res, "out/overlays")  # doctest: +SKIP
    >>> report.write_sheet(report.slice_rows("case1", res.slice_scores, res.scored, res.threshold),
    ...                    "out/slices.csv", report.SLICE_COLUMNS)  # doctest: +SKIP
    >>> report.write_json(report.provenance(cfg, model.metadata(), ["study/"]), "out/run.json")  # doctest: +SKIP
"""

from __future__ import annotations

from aaclip_med.report.html import UNTRAINED_BANNER, png_data_uri, write_case_html, write_cohort_html
from aaclip_med.report.overlays import (
    HEAT_HALF_SPAN,
    UNTRAINED_CAPTION,
    OverlaySlice,
    heat_scale,
    slice_position_mm,
    top_slices,
    volume_overlay_slices,
    window_limits,
    write_overlays,
    write_volume_overlays,
)
from aaclip_med.report.run_json import describe_precision, input_record, package_versions, provenance
from aaclip_med.report.sheets import SLICE_COLUMNS, slice_rows, to_jsonable, write_json, write_sheet, write_xlsx
from aaclip_med.report.viewer import viewer_data

__all__ = [
    "HEAT_HALF_SPAN",
    "SLICE_COLUMNS",
    "UNTRAINED_BANNER",
    "UNTRAINED_CAPTION",
    "OverlaySlice",
    "describe_precision",
    "heat_scale",
    "input_record",
    "package_versions",
    "png_data_uri",
    "provenance",
    "slice_position_mm",
    "slice_rows",
    "to_jsonable",
    "top_slices",
    "viewer_data",
    "volume_overlay_slices",
    "window_limits",
    "write_case_html",
    "write_cohort_html",
    "write_json",
    "write_overlays",
    "write_sheet",
    "write_volume_overlays",
    "write_xlsx",
]
