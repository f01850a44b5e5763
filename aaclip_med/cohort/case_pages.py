"""Evaluation case pages: the case report again, with the reference mask in its slice viewer and the metrics.

``aaclip-med eval`` writes ``evaluation/cases/<case_id>.html`` for every case it evaluated against a mask. The
page is rebuilt from the run folder (``heatmap.nii.gz``, ``mask.nii.gz``, ``slices.csv``, ``qa.json``,
``run.json``, the overlays) and the input image, so no model (and no torch) is needed. The image, the reference
mask and the maps are those read for the case's metrics (:class:`~aaclip_med.cohort.case_volumes.CaseVolumes`): the
page reads no volume again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aaclip_med._files import MARKER
from aaclip_med.cohort.case_volumes import CaseVolumes
from aaclip_med.cohort.summary import _slice_table
from aaclip_med.errors import AACLIPMedError

__all__ = ["write_eval_case_page"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _StoredResult:
    """A run folder's result as the viewer reads it (:class:`~aaclip_med.report.viewer.ScoredVolume`)."""

    heatmap: np.ndarray
    mask: np.ndarray
    scored_voxels: np.ndarray | None
    scored: np.ndarray
    slice_scores: np.ndarray
    threshold: float
    slice_axis: int
    window: tuple[float, float] | None


def _stored_result(volumes: CaseVolumes, record: Mapping[str, Any], qa: Mapping[str, Any]) -> _StoredResult:
    heatmap = volumes.heatmap()
    scores, scored = _slice_table(volumes.case_dir)
    unscored = qa.get("unscored_value")  # the "not scored" rule: unscored voxels hold the lowest scored value - 1
    window = qa.get("window") or {}
    bounds = window.get("bounds") if window.get("scope") == "volume" else None
    return _StoredResult(
        heatmap=heatmap,
        mask=volumes.prediction(),
        scored_voxels=heatmap > float(unscored) + 0.5 if unscored is not None else None,
        scored=scored,
        slice_scores=scores,
        threshold=float(record["threshold"]),
        slice_axis=int(qa["slice_axis"]),
        window=(float(bounds[0]), float(bounds[1])) if bounds else None,
    )


def write_eval_case_page(volumes: CaseVolumes, row: Mapping[str, Any], path: Path) -> Path | None:
    """Write the evaluation page of one case (viewer with the reference mask, the case's metric row).

    Args:
        volumes: The case (its ``image`` and ``mask``) and its finished run folder, as read for its metrics.
        row: Its ``cases.csv`` row (the metrics shown).
        path: Output file.

    Returns:
        The written path, or None when the case has no mask or its image or mask cannot be read (logged).
    """
    from aaclip_med import report

    case, case_dir = volumes.case, volumes.case_dir
    if case.mask is None or row.get("reasons"):
        return None
    record = json.loads((case_dir / MARKER).read_text(encoding="utf-8"))
    qa = dict(json.loads((case_dir / "qa.json").read_text(encoding="utf-8")))
    if str(case.image).startswith("sha256:"):
        logger.warning("%s: no evaluation page: the run recorded its input as a hash; give the image in an "
                       "'image' column of the labels CSV (or run with --keep-names)", case.case_id)  # fmt: skip
        return None
    try:
        volume = volumes.image()
        reference = volumes.reference().data > 0
    except AACLIPMedError as err:
        logger.warning("%s: no evaluation page: %s", case.case_id, str(err).splitlines()[0])
        return None
    result = _stored_result(volumes, record, qa)
    if volume.shape != result.heatmap.shape:
        logger.warning("%s: no evaluation page: image %s is not on the run's grid", case.case_id, case.image)
        return None
    order = {int(k): -s for k, s in enumerate(result.slice_scores)}
    overlays = sorted((case_dir / "overlays").glob("slice_*.png"), key=lambda p: order.get(int(p.stem[6:]), 0.0))
    metrics = {k: v for k, v in row.items() if k not in ("case_id", "status", "preset", "split", "label")}
    return report.write_case_html(
        path,
        case_id=case.case_id,
        overlays=overlays,
        slice_scores=result.slice_scores,
        scored=result.scored,
        threshold=result.threshold,
        score=float(record["score"]),
        qa=qa,
        provenance=record,
        metrics=metrics,
        untrained=bool((record.get("model") or {}).get("untrained_backbone", False)),
        flagged=result.scored & np.asarray(result.mask, bool).any(
            axis=tuple(a for a in range(3) if a != result.slice_axis)
        ),
        viewer=report.viewer_data(volume, result, reference=reference),
    )
