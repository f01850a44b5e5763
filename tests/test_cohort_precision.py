"""A cohort says in which precision each case was scored (issue 16 follow-up).

Cohort workers each build their model and run their own int8 guard (``precision auto`` on a CPU without AMX), and a
resumed cohort keeps the cases of earlier runs, so the cases of one cohort can differ. ``cases.csv`` gets
``precision`` and ``int8_guard_r`` per case, the cohort's ``run.json`` ``case_precisions`` (counts) and its
report a provenance row and, when the cases differ, a warning. All of it is read from the case folders' run.json:
here a tiny-model fp32 cohort, some of whose finished cases are then rewritten as a guarded worker would have
written them, and assembled again by a resumed run.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from aaclip_med.cohort import evaluate, run_cohort
from aaclip_med.report.run_json import describe_case_precisions, mixed_precision_note
from tests.test_cohort import CONFIG, make_cohort

pytestmark = pytest.mark.filterwarnings("ignore:aaclip-tiny:UserWarning")  # random weights: numbers unused
NOTE = "Cases were scored in different precisions"
GUARD = {"max_abs_diff": 0.01, "slices": 8, "threshold": 0.999}  # as aaclip_med.model.guard.compare_maps writes


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return {r["case_id"]: r for r in csv.DictReader(fh)}


def _run_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


@pytest.fixture(autouse=True)
def _records(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """caplog listens on the root logger; the CLI's logging setup (run by other tests, maybe with -q) stops
    aaclip_med's records from propagating and may raise its level: undo both for the test."""
    monkeypatch.setattr(logging.getLogger("aaclip_med"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="aaclip_med")


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and NOTE in r.getMessage()]


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished fp32 batch folder of 4 cases (case_3 unreadable: failed) and its manifest (with masks)."""
    root = tmp_path_factory.mktemp("precision")
    manifest = make_cohort(root / "data", n=4, corrupt="case_3")
    run_cohort(manifest, root / "batch", config=CONFIG, progress=False)
    return manifest, root / "batch"


@pytest.fixture
def batch(scored: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    manifest, out = scored
    shutil.copytree(out, tmp_path / "batch")
    return manifest, tmp_path / "batch"


def _rescore(path: Path, precision: str, r: float | None, passed: bool) -> None:
    """Rewrite a finished case's run.json as a worker whose int8 guard gave ``r`` would have written it."""
    record = _run_json(path)
    record["model"]["metadata"].update(precision=precision, int8_guard={"r": r, **GUARD, "passed": passed})
    path.write_text(json.dumps(record), encoding="utf-8")


def test_uniform_cohort_states_its_precision_without_warning(
    batch: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    manifest, out = batch
    rows = _rows(out / "cases.csv")
    header = list(next(iter(rows.values())))
    assert header[header.index("seconds") + 1 : header.index("seconds") + 3] == ["precision", "int8_guard_r"]
    assert {cid: (r["precision"], r["int8_guard_r"]) for cid, r in rows.items()} == {
        "case_0": ("fp32", ""), "case_1": ("fp32", ""), "case_2": ("fp32", ""), "case_3": ("", "")  # failed
    }  # fmt: skip
    assert _run_json(out / "run.json")["case_precisions"] == {"fp32": 3}
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "fp32: 3 cases" in html and NOTE not in html and 'id="precision-note"' not in html
    with caplog.at_level(logging.WARNING):
        run_cohort(manifest, out, config=CONFIG, resume=True, progress=False)
    assert not _warnings(caplog)


def test_mixed_precisions_are_columns_counts_a_warning_and_a_report_note(
    batch: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest, out = batch
    cases = out / "cases"
    _rescore(cases / "case_0" / "run.json", "int8", 0.99962, passed=True)  # a worker whose guard passed
    _rescore(cases / "case_2" / "run.json", "fp32", 0.98712, passed=False)  # one whose guard failed
    _rescore(cases / "case_1" / "run.json", "int8", None, passed=True)  # r undefined (a flat map) but passed
    with caplog.at_level(logging.WARNING):
        res = run_cohort(manifest, out, config=CONFIG, resume=True, progress=False)  # assembles the folders
    assert res.n_skipped == 3
    rows = _rows(out / "cases.csv")
    assert {cid: r["precision"] for cid, r in rows.items()} == {
        "case_0": "int8", "case_1": "int8", "case_2": "fp32", "case_3": ""
    }  # fmt: skip
    assert float(rows["case_0"]["int8_guard_r"]) == 0.99962 and float(rows["case_2"]["int8_guard_r"]) == 0.98712
    assert math.isnan(float(rows["case_1"]["int8_guard_r"])) and rows["case_3"]["int8_guard_r"] == ""
    record = _run_json(out / "run.json")
    assert list(record["case_precisions"].items()) == [("int8", 2), ("fp32", 1)]  # most cases first
    (warning,) = _warnings(caplog)
    assert "int8: 2 cases, fp32: 1 case" in warning and "pin --precision fp32" in warning
    html = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="precision-note"' in html and NOTE in html and "compare scores across cases with care" in html
    assert "<th>precision</th><td>int8: 2 cases, fp32: 1 case</td>" in html  # provenance: all cases, not the 1st

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ev = evaluate(out, manifest, tmp_path / "eval")  # eval reads the same case folders
    assert {cid: r["precision"] for cid, r in _rows(ev.files["cases"]).items()} == {
        "case_0": "int8", "case_1": "int8", "case_2": "fp32"
    }  # fmt: skip
    assert _run_json(ev.files["marker"])["case_precisions"] == {"int8": 2, "fp32": 1}
    assert NOTE in ev.files["report"].read_text(encoding="utf-8") and len(_warnings(caplog)) == 1


def test_precision_words() -> None:
    assert describe_case_precisions({"int8": 3, "fp32": 1}) == "int8: 3 cases, fp32: 1 case"
    assert describe_case_precisions({}) is None
    assert mixed_precision_note({"bf16": 2}) is None and mixed_precision_note(None) is None
    note = mixed_precision_note({"int8": 1, "not recorded": 1})
    assert note is not None and note.startswith(f"{NOTE} (int8: 1 case, not recorded: 1 case)")
