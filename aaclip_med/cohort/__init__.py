"""Cohorts: many studies from a manifest CSV or a data folder, scored into one run folder.

- :mod:`~aaclip_med.cohort.runner`: :func:`run_cohort` (in-process or on a Dask cluster, ``--continue``,
  ``--num-parts/--part-id``: :func:`shard`).
- :mod:`~aaclip_med.cohort.summary`: the cohort sheets assembled from the finished case folders.

The cases come from :mod:`aaclip_med.manifest` (:class:`Case`, :func:`read_manifest`, :func:`write_manifest`) or
:mod:`aaclip_med.discovery` (:func:`discover`); they are re-exported here for convenience.

Example:
    >>> from aaclip_med.cohort import run_cohort
    >>> res = run_cohort("manifest.csv", "reports/cohort", resume=True)  # doctest: +SKIP
"""

from __future__ import annotations

from aaclip_med.cohort.evaluate import EvalResult, evaluate, find_runs
from aaclip_med.cohort.runner import CaseOutcome, CohortResult, run_case, run_cohort, shard
from aaclip_med.cohort.summary import CASE_SHEET_COLUMNS, FAILURE_COLUMNS, SUMMARY_SHEET_COLUMNS, assemble
from aaclip_med.discovery import discover, is_mask_name, load_cases
from aaclip_med.manifest import Case, read_manifest, write_manifest

__all__ = [
    "CASE_SHEET_COLUMNS",
    "FAILURE_COLUMNS",
    "SUMMARY_SHEET_COLUMNS",
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
