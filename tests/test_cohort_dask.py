"""Cohorts on Dask: a 2-worker LocalCluster gives the same sheets as the in-process run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from aaclip_med.cohort import run_cohort
from tests.test_cohort import CONFIG, make_cohort

pytest.importorskip("dask.distributed", reason="needs the 'distributed' extra (dask[distributed])")


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as fh:
        return {r["case_id"]: r for r in csv.DictReader(fh)}


@pytest.mark.slow  # two spawned worker processes each import torch and build the model (~30 s on 2 cores)
def test_two_workers_match_in_process(tmp_path: Path) -> None:
    manifest = make_cohort(tmp_path / "data", n=4, corrupt="case_2")
    local = run_cohort(manifest, tmp_path / "inproc", config=CONFIG, progress=False)
    dist = run_cohort(manifest, tmp_path / "dask", config=CONFIG, workers=2, progress=False)
    assert (dist.n_done, dist.n_failed) == (local.n_done, local.n_failed) == (3, 1)
    a, b = _rows(tmp_path / "inproc" / "cases.csv"), _rows(tmp_path / "dask" / "cases.csv")
    assert a.keys() == b.keys() and b["case_2"]["status"] == "failed"
    for cid in a:
        assert a[cid]["status"] == b[cid]["status"]
        assert a[cid]["precision"] == b[cid]["precision"] == ("fp32" if a[cid]["status"] == "done" else "")
        for col in ("score", "threshold", "n_flagged", "pixel_auroc", "dice"):
            x, y = (float(r[cid][col]) if r[cid][col] else np.nan for r in (a, b))
            np.testing.assert_allclose(x, y, rtol=1e-5, equal_nan=True, err_msg=f"{cid} {col}")
    sa, sb = _rows(tmp_path / "inproc" / "failures.csv"), _rows(tmp_path / "dask" / "failures.csv")
    assert sa["case_2"]["error"] == sb["case_2"]["error"] == "UnsupportedFormatError"
