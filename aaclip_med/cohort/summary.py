"""The cohort sheets (``cases``, ``summary``, ``failures``, ``slice_metrics`` CSVs) from finished case folders.

Each CSV has one schema, named after the file: :data:`CASE_SHEET_COLUMNS` (``cases.csv``),
:data:`SUMMARY_SHEET_COLUMNS` (``summary.csv``), :data:`FAILURE_COLUMNS` (``failures.csv``) and
:data:`~aaclip_med.metrics.SLICE_METRIC_COLUMNS` (``slice_metrics.csv``); :func:`assemble` builds their rows for
``batch`` and ``eval`` alike.

Everything is read back from ``cases/<case_id>/`` (``run.json``, ``slices.csv``, ``heatmap.nii.gz``,
``mask.nii.gz``), so the sheets are the same however the cases were computed (in-process, on N workers, in
shards, across resumed runs). Cases are visited in case-id order, one at a time: pixel metrics go through a
:class:`~aaclip_med.metrics.PixelAccumulator` per preset, so memory does not grow with the cohort.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from aaclip_med._files import MARKER
from aaclip_med.cohort.baselines import CASE_BASELINE_COLUMNS, RegionSet, region_rows, verdicts
from aaclip_med.cohort.case_volumes import CaseVolumes, read_array
from aaclip_med.errors import AACLIPMedError, ConfigError, ManifestError
from aaclip_med.manifest import Case
from aaclip_med.metrics.rows import CASE_METRIC_COLUMNS, SUMMARY_COLUMNS
from aaclip_med.organ import GRID_TOL_MM
from aaclip_med.volume import Volume

__all__ = [
    "CASE_SHEET_COLUMNS",
    "FAILURE_COLUMNS",
    "SUMMARY_SHEET_COLUMNS",
    "CohortSheets",
    "assemble",
    "case_columns",
    "case_record",
]

logger = logging.getLogger(__name__)

_CASE_HEAD = ("case_id", "status", "score", "threshold", "n_flagged", "label", "preset", "split", "seconds",
              "precision", "int8_guard_r")
# Columns of cases.csv (batch and eval folders), one row per case: the run's columns (_CASE_HEAD, always written;
# precision and int8_guard_r from the case's run.json model.metadata: what its maps were computed in),
# then the evaluation's (cases with a mask) in this order; case_columns() leaves out those no row has.
CASE_SHEET_COLUMNS = (
    *_CASE_HEAD,
    *(c for c in (*CASE_METRIC_COLUMNS, *CASE_BASELINE_COLUMNS, "baseline_reasons") if c not in _CASE_HEAD),
)
# Columns of summary.csv (batch and eval folders): one row per preset x map x region (baselines.region_rows), the
# peer-paper summary_rows() columns after the group.
SUMMARY_SHEET_COLUMNS = ("preset", "map", "region", *SUMMARY_COLUMNS[1:])
# Columns of failures.csv (batch folders), one row per failed or missing case.
FAILURE_COLUMNS = ("case_id", "image", "error", "message")



@dataclass
class CohortSheets:
    """The rows of the cohort sheets, as written."""

    cases: list[dict[str, Any]] = field(default_factory=list)
    slice_metrics: list[dict[str, Any]] = field(default_factory=list)  # slice_metrics.csv (cases with masks)
    summary: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    provenance_model: dict[str, Any] = field(default_factory=dict)  # the first finished case's run.json "model"
    precisions: dict[str, int] = field(default_factory=dict)  # precision -> finished cases (case_precisions)
    untrained: bool = False
    verdicts: list[str] = field(default_factory=list)  # where a trivial baseline beats the model, in words


def case_record(case_dir: Path) -> dict[str, Any]:
    """The finished case's ``run.json`` (empty when the case is not finished)."""
    path = case_dir / MARKER
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text(encoding="utf-8")))


def _slice_table(case_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    with (case_dir / "slices.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    scores = np.array([float(r["score"]) for r in rows], dtype=np.float64)
    scored = np.array([r["scored"] == "True" for r in rows], dtype=bool)
    return scores, scored


def _affine(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(cast(nib.Nifti1Image, nib.load(str(path))).affine)


@dataclass
class _Group:
    """Accumulated evaluation state of one preset."""

    pixels: Any = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    volume_labels: list[float] = field(default_factory=list)
    volume_scores: list[float] = field(default_factory=list)
    image_labels: list[np.ndarray] = field(default_factory=list)
    image_scores: list[np.ndarray] = field(default_factory=list)
    regions: RegionSet = field(default_factory=RegionSet)  # in-region and baseline pixel metrics


@dataclass(frozen=True)
class _Scale:
    """Map normalisation for evaluation (DESIGN §0: an evaluation option only; raw units on disk)."""

    mode: str = "none"  # none | set (one min-max over the evaluated set, as the reference code) | volume
    lo: float = 0.0
    hi: float = 1.0

    def apply(self, heatmap: np.ndarray, threshold: float) -> tuple[np.ndarray, float]:
        from aaclip_med.metrics.rows import minmax, set_range_kept

        if self.mode == "none":
            return heatmap, threshold
        lo, hi = (self.lo, self.hi) if self.mode == "set" else (float(heatmap.min()), float(heatmap.max()))
        if self.mode == "set" and set_range_kept(hi):
            return heatmap, threshold
        return minmax(heatmap, lo, hi), float(minmax(threshold, lo, hi))


_MAX_LABELS = 255  # a label map has a few classes; an image passed as labels has hundreds of distinct values


def label_mask(volume: Volume, threshold: float | None = None) -> np.ndarray:
    """The reference mask of a label map: ``> 0`` (any label), or ``> threshold`` when one is given.

    Raises:
        ManifestError: Without ``threshold``, the map holds non-integer values or more than 255 distinct ones:
            it is an image, not a label map (e.g. a FLAIR passed as --labels).
    """
    data = volume.data
    if threshold is not None:
        return np.asarray(data > threshold)
    fractional = data[data != np.round(data)]
    why = ""
    if fractional.size:
        why = f"holds non-integer values (e.g. {float(fractional.flat[0]):.4g})"
    elif np.unique(data.ravel()[:: max(1, data.size // 4_000_000)]).size > _MAX_LABELS:  # a sample: fast
        why = f"holds more than {_MAX_LABELS} distinct values"
    if why:
        msg = (
            f"Label map {volume.source} {why}: it looks like an image, not a mask. Pass the mask, or "
            "--labels-threshold T to binarise it at T."
        )
        raise ManifestError(msg)
    return np.asarray(data > 0)


def _set_range(cases: Sequence[Case], cases_dir: Path) -> tuple[float, float]:
    """Min and max over the heatmaps of the finished cases that have masks (first pass of set normalisation)."""
    lo, hi = np.inf, -np.inf
    for case in cases:
        path = cases_dir / case.case_id / "heatmap.nii.gz"
        if case.mask is not None and path.is_file():
            heat = read_array(path)
            lo, hi = min(lo, float(heat.min())), max(hi, float(heat.max()))
    return (lo, hi) if lo <= hi else (0.0, 1.0)


def _metrics(
    volumes: CaseVolumes,
    record: Mapping[str, Any],
    group: _Group,
    scale: _Scale,
    slices: list[dict[str, Any]],
    organ_src: Mapping[str, Any],
    labels_threshold: float | None = None,
) -> dict[str, Any]:
    """Per-case metric columns; feeds the group's accumulators and the slice rows."""
    from aaclip_med import metrics

    case, case_dir = volumes.case, volumes.case_dir
    score, threshold = float(record["score"]), float(record["threshold"])
    if case.mask is None:
        if case.label is not None:
            group.volume_labels.append(float(case.label))
            group.volume_scores.append(score)
        return {}
    reasons: list[str] = []
    heatmap, threshold = scale.apply(volumes.heatmap(), threshold)
    ref_volume = volumes.reference()
    ref = label_mask(ref_volume, labels_threshold)
    why = ""
    if ref.shape != heatmap.shape:
        why = f"mask {case.mask} shape {ref.shape} differs from the image {heatmap.shape}; resample the mask"
    elif not np.allclose(ref_volume.affine, _affine(case_dir / "heatmap.nii.gz"), atol=GRID_TOL_MM):
        why = f"mask {case.mask} has the image's shape but another position/spacing (affine); resample the mask"
    if why:
        logger.warning("%s: %s", case.case_id, why)
        return {"reasons": why}
    qa = json.loads((case_dir / "qa.json").read_text(encoding="utf-8"))
    axis = int(qa["slice_axis"])
    spacing = qa.get("spacing_mm")
    slice_scores, scored = _slice_table(case_dir)
    if "unscored_value" not in qa:  # written before the "not scored" rule: apply it to the skipped slices now
        from aaclip_med.postprocess import mark_unscored

        heatmap, value = mark_unscored(heatmap, np.expand_dims(scored, tuple(a for a in range(3) if a != axis)))
        slice_scores = np.where(scored, slice_scores, value)
    if group.pixels is None:
        group.pixels = metrics.PixelAccumulator(threshold=threshold)
    group.pixels.update(heatmap, ref, slice_axis=axis, regions_cache=volumes.regions)
    row = metrics.case_row(case.case_id, score=score, label=case.label, heatmap=heatmap, mask=ref,
                           threshold=threshold, pred_mask=volumes.prediction() > 0, spacing=spacing,
                           slice_axis=axis, reasons=reasons, regions_cache=volumes.regions)
    group.rows.append(row)
    group.volume_labels.append(row["label"])
    group.volume_scores.append(score)
    preset = str(qa.get("preset") or record.get("config", {}).get("preset"))
    row.update(group.regions.update(volumes, heatmap, ref, preset, axis, **organ_src))
    slices.extend(metrics.slice_metric_rows(case.case_id, slice_scores, scored=scored, heatmap=heatmap, mask=ref,
                                     threshold=threshold, slice_axis=axis))  # fmt: skip
    other = tuple(a for a in range(3) if a != axis)
    group.image_labels.append(np.asarray(ref.any(axis=other), dtype=np.float64))
    group.image_scores.append(slice_scores)
    return {k: v for k, v in row.items() if k not in ("case_id", "score", "threshold")}


def _organ_source(case: Case, case_dir: Path, organ: str | None, label: int | None) -> dict[str, Any]:
    """The organ region of a case: its ``organ_mask`` column (with the selection given), else the run's own.

    A run scored with ``--organ-mask`` wrote the mask it used as ``organ_mask.nii.gz``; that one is binary.
    """
    if case.organ_mask is not None:
        return {"organ_mask": case.organ_mask, "organ": organ, "label": label}
    own = case_dir / "organ_mask.nii.gz"
    return {"organ_mask": own if own.is_file() else None}


def _summary(groups: Mapping[str, _Group], normalisation: str) -> list[dict[str, Any]]:
    rows = _model_summary(groups, normalisation)
    return region_rows({name: g.regions for name, g in groups.items() if g.regions.pixels}, rows)


def _model_summary(groups: Mapping[str, _Group], normalisation: str) -> list[dict[str, Any]]:
    from aaclip_med import metrics

    results = {}
    for name, g in groups.items():
        if not g.volume_scores:
            continue
        reasons: list[str] = []
        results[name] = metrics.evaluate_set(
            image_labels=np.concatenate(g.image_labels) if g.image_labels else None,
            image_scores=np.concatenate(g.image_scores) if g.image_scores else None,
            volume_labels=g.volume_labels,
            volume_scores=g.volume_scores,
            pixels=g.pixels,
            cases=g.rows,
            normalisation=normalisation,  # type: ignore[arg-type]
            reasons=reasons,
        )
    return metrics.summary_rows(results, group_column="preset") if results else []


def _seconds(record: Mapping[str, Any]) -> float:
    return float(sum(v for v in record.get("timings", {}).values() if isinstance(v, int | float)))


def _precision(record: Mapping[str, Any]) -> dict[str, Any]:
    """The precision the case's maps were computed in and its model's int8 guard r (None: no guard ran).

    The guard ran once per model (per cohort worker, on its first case); every case that model scored records it.
    A guard whose r is undefined (a constant or non-finite map) gives NaN.
    """
    meta = record.get("model", {}).get("metadata") or {}
    guard = meta.get("int8_guard")
    r = guard.get("r") if isinstance(guard, Mapping) else None
    return {"precision": meta.get("precision") or None,
            "int8_guard_r": (math.nan if r is None else float(r)) if isinstance(guard, Mapping) else None}


def _precision_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Finished cases per precision, most cases first; warns once when they differ."""
    from aaclip_med.report.run_json import NOT_RECORDED, mixed_precision_note

    counts = Counter(str(r.get("precision") or NOT_RECORDED) for r in rows if r.get("status") == "done")
    ordered = dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    note = mixed_precision_note(ordered)
    if note:
        logger.warning("%s", note)
    return ordered


def assemble(
    cases: Sequence[Case],
    cases_dir: Path,
    failures: Mapping[str, Mapping[str, str]],
    *,
    normalisation: str = "none",
    labels_threshold: float | None = None,
    organ: str | None = None,
    organ_label: int | None = None,
    on_case: Callable[[dict[str, Any], CaseVolumes], None] | None = None,
) -> CohortSheets:
    """Build the cohort rows from the case folders.

    Args:
        cases: Every case of the cohort (or of one part).
        cases_dir: ``OUT/cases``.
        failures: Case id -> ``{"error", "message"}`` for cases that failed in this run.
        normalisation: Maps as stored (``none``, raw units), min-max over the whole evaluated set (``set``, the
            reference code's evaluation; AUROC/AP unchanged, thresholds rescaled) or per volume (``volume``).
        labels_threshold: Binarise masks at this value (:func:`label_mask`).
        organ: Structure selected in the cases' ``organ_mask`` folders or zips (as ``--organ``).
        organ_label: Label selected in the cases' ``organ_mask`` label maps (as ``--organ-label``).
        on_case: Called with each finished case's ``cases.csv`` row and its :class:`CaseVolumes` once the row
            is complete, while the case's volumes are still held (``eval`` writes the case page there, so no
            volume is read twice).

    Returns:
        The rows of ``cases.csv``, ``summary.csv`` and ``failures.csv``, the model record of the first finished
        case and the finished cases' precisions (a warning is logged when they differ).
    """
    sheets = CohortSheets()
    groups: dict[str, _Group] = {}
    if normalisation not in ("none", "set", "volume"):
        msg = f"normalisation={normalisation!r} is not known; use none, set or volume."
        raise ConfigError(msg)
    scale = _Scale(normalisation, *(_set_range(cases, cases_dir) if normalisation == "set" else (0.0, 1.0)))
    for case in sorted(cases, key=lambda c: c.case_id):
        base = {"case_id": case.case_id, "label": case.label, "preset": case.preset, "split": case.split}
        record = case_record(cases_dir / case.case_id)
        if not record:
            fail = failures.get(case.case_id, {"error": "NotRun", "message": "no finished output folder"})
            sheets.cases.append({**base, "status": "failed" if case.case_id in failures else "missing"})
            sheets.failures.append({"case_id": case.case_id, "image": str(case.image), **fail})
            continue
        preset = str(record.get("config", {}).get("preset") or case.preset or "")
        row = {**base, "status": "done", "score": float(record["score"]), "threshold": float(record["threshold"]),
               "n_flagged": int(record.get("n_flagged", 0)), "preset": preset, "seconds": _seconds(record),
               **_precision(record)}
        volumes = CaseVolumes(case, cases_dir / case.case_id)  # one case's reads, let go with the next case
        try:
            group = groups.setdefault(preset, _Group())
            organ_src = _organ_source(case, volumes.case_dir, organ, organ_label)
            row.update(_metrics(volumes, record, group, scale, sheets.slice_metrics, organ_src, labels_threshold))
        except AACLIPMedError as err:
            row["reasons"] = f"evaluation skipped: {str(err).splitlines()[0]}"
            logger.warning("%s: %s", case.case_id, row["reasons"])
        sheets.cases.append(row)
        if on_case is not None:
            on_case(row, volumes)
        if not sheets.provenance_model:
            sheets.provenance_model = dict(record.get("model", {}))
            sheets.untrained = bool(sheets.provenance_model.get("untrained_backbone", False))
    sheets.precisions = _precision_counts(sheets.cases)
    sheets.summary = _summary(groups, normalisation)
    sheets.verdicts = verdicts(sheets.summary)
    return sheets


def case_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The columns of one ``cases.csv``: :data:`CASE_SHEET_COLUMNS` less the evaluation columns no row has."""
    return [c for c in CASE_SHEET_COLUMNS if c in _CASE_HEAD or any(c in r for r in rows)]
