"""Evaluate finished predictions against reference masks: ``aaclip-med eval`` and :func:`evaluate`.

Predictions are a ``run`` folder (``run.json`` beside ``heatmap.nii.gz``) or a ``batch`` folder (``cases/<id>/``).
Labels are a mask file (one run), a manifest CSV (``case_id,mask,label``), or a folder of masks named after the
case ids (``<case_id>.nii.gz``, or a DICOM sub-folder ``<case_id>/``). The sheets are those of a cohort run
(:mod:`~aaclip_med.cohort.summary`), plus ``slice_metrics.csv`` and ``summary.json``, written atomically into one
folder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aaclip_med._files import INPUT_SUFFIXES, MARKER, case_name, check_output_folder, staged_output, written_files
from aaclip_med._typing import PathLike
from aaclip_med.cohort.case_volumes import CaseVolumes
from aaclip_med.cohort.summary import SUMMARY_SHEET_COLUMNS, CohortSheets, assemble, case_columns
from aaclip_med.errors import ManifestError
from aaclip_med.manifest import Case, read_manifest
from aaclip_med.privacy import Naming

__all__ = ["EvalResult", "evaluate", "find_runs"]

logger = logging.getLogger(__name__)

_CASE_NOTE = (
    "Case ids link to the case pages: for a case with a reference mask, its evaluation page "
    "(cases/<case_id>.html: "
    "the slice viewer with the reference outline in green, and the case's metrics); else the run's report.html."
)


@dataclass(frozen=True)
class EvalResult:
    """The evaluation sheets and where they were written."""

    out_dir: Path
    sheets: CohortSheets
    files: dict[str, Path]


def find_runs(predictions: PathLike) -> tuple[Path, list[str]]:
    """The folder holding the case folders, and the finished case ids, of a run or batch output folder.

    Raises:
        ManifestError: the folder holds no finished aaclip-med output.
    """
    root = Path(predictions)
    if (root / MARKER).is_file() and (root / "heatmap.nii.gz").is_file():
        return root.parent, [root.name]
    cases_dir = root / "cases"
    ids = sorted(p.name for p in cases_dir.glob("*") if (p / MARKER).is_file()) if cases_dir.is_dir() else []
    if not ids:
        msg = (
            f"{root}: no finished predictions (a `run` folder with run.json and heatmap.nii.gz, or a `batch` "
            "folder with cases/<id>/run.json). Point eval at the output of `aaclip-med run` or `batch`."
        )
        raise ManifestError(msg)
    return cases_dir, ids


def _source(cases_dir: Path, case_id: str) -> Path:
    record = json.loads((cases_dir / case_id / MARKER).read_text(encoding="utf-8"))
    inputs = record.get("inputs") or [{}]
    return Path(inputs[0].get("path", case_id))


def _mask_in_folder(folder: Path, case_id: str) -> Path | None:
    for path in sorted(folder.iterdir()):
        if path.is_dir() and path.name == case_id:
            return path
        if path.is_file() and path.name.lower().endswith(INPUT_SUFFIXES) and case_name(path) == case_id:
            return path
    return None


def _cases(cases_dir: Path, ids: list[str], labels: PathLike) -> list[Case]:
    src = Path(labels)
    if not src.exists():
        msg = f"Labels {src}: no such file or folder. Pass a mask, a manifest CSV or a folder of masks."
        raise ManifestError(msg)
    if src.suffix.lower() == ".csv":
        rows = read_manifest(src, images=False)  # the images are known from the predictions' run.json
        by_id = {  # an image column (the baselines' input) wins over the run's record, which may be a hash
            c.case_id: c if c.image != Path() else replace(c, image=_source(cases_dir, c.case_id))
            for c in rows
            if c.case_id in ids
        }
        if not by_id:
            msg = (
                f"No case id of {src} matches a prediction in {cases_dir} (predictions: {', '.join(ids[:3])}"
                f"{', ...' if len(ids) > 3 else ''}); use the case ids of the run (its cases.csv)."
            )
            raise ManifestError(msg)
        unknown = sorted(set(ids) - set(by_id))
        if unknown:
            logger.warning("no labels in %s for %d case(s): %s", src, len(unknown), ", ".join(unknown[:5]))
        return [by_id[i] if i in by_id else Case(i, _source(cases_dir, i)) for i in ids]
    if src.is_file():
        if len(ids) != 1:
            msg = f"Labels {src} is one mask but {cases_dir} holds {len(ids)} cases; pass a manifest or a folder."
            raise ManifestError(msg)
        return [Case(ids[0], _source(cases_dir, ids[0]), mask=src)]
    masks = {i: _mask_in_folder(src, i) for i in ids}
    if any(masks.values()):
        return [Case(i, _source(cases_dir, i), mask=masks[i]) for i in ids]
    if len(ids) == 1:
        return [Case(ids[0], _source(cases_dir, ids[0]), mask=src)]  # the folder is the mask (a DICOM series)
    msg = (
        f"No mask in {src} is named after a case id ({', '.join(ids[:3])}, ...); name them <case_id>.nii.gz, "
        "pass a manifest CSV, or run batch with --keep-names (it names cases by hashes otherwise)."
    )
    raise ManifestError(msg)


@dataclass
class _CasePages:
    """Writes ``cases/<id>.html`` (viewer with the reference mask) where a mask exists; every case's page link.

    Called by :func:`~aaclip_med.cohort.summary.assemble` as each case's row is done, with the volumes its metrics
    were computed from: the page reads no image or mask again.
    """

    out: Path  # the evaluation folder (the links)
    tmp: Path  # its staging folder (the files)
    links: dict[str, Path] = field(default_factory=dict)

    def __call__(self, row: dict[str, Any], volumes: CaseVolumes) -> None:
        from aaclip_med.cohort.case_pages import write_eval_case_page

        case_id = volumes.case.case_id
        name = f"cases/{case_id}.html"
        if write_eval_case_page(volumes, row, self.tmp / name) is not None:
            self.links[case_id] = self.out / name
        elif (volumes.case_dir / "report.html").is_file():
            self.links[case_id] = volumes.case_dir / "report.html"


def evaluate(
    predictions: PathLike,
    labels: PathLike,
    out_dir: PathLike | None = None,
    *,
    normalisation: str = "none",
    xlsx: bool = False,
    labels_threshold: float | None = None,
    overwrite: bool = False,
    organ: str | None = None,
    organ_label: int | None = None,
) -> EvalResult:
    """Evaluate a run or batch output folder against reference masks and write the evaluation sheets.

    Args:
        predictions: Output folder of ``aaclip-med run`` or ``aaclip-med batch``.
        labels: A mask (one run), a manifest CSV (``case_id,mask,label``), or a folder of ``<case_id>`` masks.
        out_dir: Where the sheets go; default ``<predictions>/evaluation``.
        normalisation: ``none`` (raw map units), ``set`` (min-max over the evaluated set, as the reference
            code) or ``volume``; recorded in ``summary.csv``.
        xlsx: Also write ``evaluation.xlsx`` with one sheet per CSV.
        labels_threshold: Binarise label maps at this value (``> t``); without it a label map holding
            non-integer values (an image passed by mistake) is refused.
        overwrite: Replace an earlier evaluation in ``out_dir`` (only the files it wrote); else it is refused.
        organ: Structure to read from the labels' ``organ_mask`` folders or zips (TotalSegmentator, IRCADb).
        organ_label: Label of the organ in the labels' ``organ_mask`` label maps (None: > 0). A case without
            an ``organ_mask`` column uses the organ mask its run was scored with (``organ_mask.nii.gz``).

    Returns:
        The sheets (``slice_metrics``, ``cases``, ``summary``) and the written files.

    Raises:
        ManifestError: no predictions, or labels that match no case.
        GeometryError: a mask is not on its image's grid.

    Example:
        >>> evaluate("reports/study", "study_mask.nii.gz")  # doctest: +SKIP
    """
    from aaclip_med import metrics, report

    cases_dir, ids = find_runs(predictions)
    cases = _cases(cases_dir, ids, labels)
    out = Path(out_dir) if out_dir is not None else Path(predictions) / "evaluation"
    check_output_folder(out, [labels], overwrite=overwrite)
    names = {"slice_metrics": "slice_metrics.csv", "cases": "cases.csv", "summary": "summary.csv",
             "json": "summary.json"}
    with staged_output(out) as tmp:  # an error below deletes the staging folder: nothing half-written is left
        pages = _CasePages(out, tmp)  # written case by case, from the volumes the metrics read
        sheets = assemble(cases, cases_dir, {}, normalisation=normalisation, labels_threshold=labels_threshold,
                          organ=organ, organ_label=organ_label, on_case=pages)  # fmt: skip
        skipped = [f"{r['case_id']}: {r['reasons']}" for r in sheets.cases if r.get("reasons")]
        if skipped and not sheets.summary:  # every case was skipped: sheets of nothing would only mislead
            msg = f"Nothing could be evaluated against {labels}; first case {skipped[0]}"
            raise ManifestError(msg.replace("evaluation skipped: ", ""))
        report.write_sheet(sheets.slice_metrics, tmp / names["slice_metrics"], metrics.SLICE_METRIC_COLUMNS)
        report.write_sheet(sheets.cases, tmp / names["cases"], columns=case_columns(sheets.cases))
        report.write_sheet(sheets.summary, tmp / names["summary"], columns=SUMMARY_SHEET_COLUMNS)
        report.write_json({"normalisation": normalisation, "verdicts": sheets.verdicts, "summary": sheets.summary,
                           "cases": sheets.cases}, tmp / names["json"])  # fmt: skip
        if xlsx:
            names["xlsx"] = "evaluation.xlsx"
            tables = {"summary": sheets.summary, "cases": sheets.cases, "slice_metrics": sheets.slice_metrics}
            report.write_xlsx(tables, tmp / names["xlsx"])
        prov = report.provenance({"normalisation": normalisation, "labels_threshold": labels_threshold},
                                 sheets.provenance_model.get("metadata"), [labels],
                                 extra={"case_precisions": sheets.precisions},
                                 name_input=Naming().path)  # label paths often hold a patient's name: hashed
        names["report"] = "report.html"
        report.write_cohort_html(tmp / names["report"], cases=sheets.cases, summary=sheets.summary,
                                 failures=sheets.failures, untrained=sheets.untrained, provenance=prov,
                                 title="aaclip-med evaluation", case_pages=pages.links, link_from=out,
                                 verdicts=sheets.verdicts, case_note=_CASE_NOTE)  # fmt: skip
        names["marker"] = MARKER
        prov["outputs"] = [*written_files(tmp), MARKER]
        report.write_json(prov, tmp / MARKER)
    return EvalResult(out, sheets, {k: out / v for k, v in names.items()})
