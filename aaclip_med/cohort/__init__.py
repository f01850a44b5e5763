"""Cohorts: many studies from a manifest CSV or a data folder, scored into one run folder.

- :mod:`~aaclip_med.cohort.manifest`: :class:`Case`, :func:`read_manifest`, :func:`discover`, :func:`shard`.
- :mod:`~aaclip_med.cohort.runner`: :func:`run_cohort` (in-process or on a Dask cluster, ``--continue``,
  ``--num-parts/--part-id``).
- :mod:`~aaclip_med.cohort.summary`: the cohort sheets assembled from the finished case folders.

Example:
    >>> from aaclip_med.cohort import run_cohort
    >>> res = run_cohort("manifest.csv", "reports/cohort", resume=True)  # doctest: +SKIP
"""

from __future__ import annotations

from aaclip_med.cohort.evaluate import EvalResult, evaluate, find_runs
from aaclip_med.cohort.manifest import (
    Case,
    discover,
    is_mask_name,
    load_cases,
    read_manifest,
    shard,
    write_manifest,
)
from aaclip_med.cohort.runner import CaseOutcome, CohortResult, run_case, run_cohort
from aaclip_med.cohort.summary import CASE_SHEET_COLUMNS, FAILURE_COLUMNS, assemble

__all__ = [
    "CASE_SHEET_COLUMNS",
    "FAILURE_COLUMNS",
    "Case",
    "CaseOutcome",
    "CohortResult",
    "EvalResult",
    "assemble",
    "discover",
    "evaluate",
    "find_runs",
    "is_mask_name",
    "load_cases",
    "read_manifest",
    "run_case",
    "run_cohort",
    "shard",
    "write_manifest",
]
