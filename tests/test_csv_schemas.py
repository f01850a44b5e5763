"""One schema per CSV file: each CSV that `run`, `batch` and `eval` write is read back, its header compared with
the constant named after the file (train_log.csv: tests/training/test_train.py; manifests: tests/test_manifest.py).
"""

from __future__ import annotations

import csv
from pathlib import Path

from aaclip_med.cohort import evaluate, run_cohort
from aaclip_med.cohort.summary import CASE_SHEET_COLUMNS, FAILURE_COLUMNS, SUMMARY_SHEET_COLUMNS
from aaclip_med.config import ExportConfig, InferenceConfig, RunConfig
from aaclip_med.metrics import SLICE_METRIC_COLUMNS
from aaclip_med.report import SLICE_COLUMNS
from tests.test_cohort import make_cohort
from tests.test_pipeline import BrightnessModel

SCHEMAS = {
    "slices.csv": SLICE_COLUMNS,  # a run folder: `run`, and `batch`'s cases/<case_id>/
    "slice_metrics.csv": SLICE_METRIC_COLUMNS,  # `batch` and `eval`, cases with masks
    "cases.csv": CASE_SHEET_COLUMNS,  # evaluation columns only when some case has them
    "summary.csv": SUMMARY_SHEET_COLUMNS,
    "failures.csv": FAILURE_COLUMNS,
}
RUN_COLUMNS = CASE_SHEET_COLUMNS.index("int8_guard_r") + 1  # cases.csv: the run's columns, always written
CONFIG = RunConfig(preset="mri", inference=InferenceConfig(threshold=0.5, progress=False),
                   export=ExportConfig(overlays=0, html=False))


def _header(path: Path) -> tuple[str, ...]:
    with path.open(newline="", encoding="utf-8") as fh:
        return tuple(next(csv.reader(fh)))


def _check(root: Path) -> dict[str, int]:
    """Compare every CSV under ``root`` with its schema; returns how many files of each name were checked."""
    seen: dict[str, int] = {}
    for path in sorted(root.rglob("*.csv")):
        assert path.name in SCHEMAS, f"{path}: a CSV without a schema constant"
        header, schema = _header(path), SCHEMAS[path.name]
        if path.name == "cases.csv":  # the run's columns always, then the evaluation's in the schema's order
            assert header[:RUN_COLUMNS] == schema[:RUN_COLUMNS], path
            assert header == tuple(c for c in schema if c in header), path
        else:
            assert header == schema, path
        seen[path.name] = seen.get(path.name, 0) + 1
    return seen


def test_every_written_csv_has_its_schema(tmp_path: Path) -> None:
    manifest = make_cohort(tmp_path / "data", n=3, corrupt="case_2")
    out = tmp_path / "batch"
    run_cohort(manifest, out, config=CONFIG, model=BrightnessModel(32), progress=False)
    assert _check(out) == {"slices.csv": 2, "slice_metrics.csv": 1, "cases.csv": 1, "summary.csv": 1,
                           "failures.csv": 1}
    assert "pixel_auroc" in _header(out / "cases.csv")  # the evaluation columns of cases with masks
    res = evaluate(out, manifest, tmp_path / "eval")
    assert _check(res.out_dir) == {"slice_metrics.csv": 1, "cases.csv": 1, "summary.csv": 1}
    labels_free = tmp_path / "nomask"
    run_cohort(tmp_path / "data" / "img" / "case_0.nii.gz", labels_free, config=CONFIG, model=BrightnessModel(32),
               progress=False)
    assert _check(labels_free) == {"slices.csv": 1, "cases.csv": 1, "summary.csv": 1, "failures.csv": 1}
    assert _header(labels_free / "cases.csv") == CASE_SHEET_COLUMNS[:RUN_COLUMNS]  # no mask: the run's columns
