"""The batch loop: :func:`run_cohort` scores every case of a cohort into ``OUT/cases/<case_id>/``.

Each case is one :func:`~aaclip_med.pipeline.run_study` call, which writes its folder atomically (a hidden
``.partial`` sibling renamed into place, ``run.json`` last), so a case is finished exactly when its folder holds
``run.json``. A failing case costs only itself: its error becomes a row of ``failures.csv``.

Executors: in-process (default), or tasks on a Dask distributed cluster (``workers=N`` starts a
``LocalCluster`` of N single-threaded processes; ``scheduler="tcp://host:port"`` uses a running cluster). Each
worker process builds the model once (a module-level cache keyed by the model settings) and scores cases one at a
time with ``cores // N`` torch threads. The sheets are assembled from the folders afterwards, in case-id order,
so the results do not depend on the executor or on the order cases finish.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import socket
import time
import traceback
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aaclip_med._files import MARKER, check_cohort_folder
from aaclip_med._typing import PathLike
from aaclip_med.cohort.summary import FAILURE_COLUMNS, SUMMARY_SHEET_COLUMNS, assemble, case_columns
from aaclip_med.config import RunConfig
from aaclip_med.discovery import load_cases
from aaclip_med.errors import AACLIPMedError, ConfigError, ManifestError
from aaclip_med.manifest import Case

if TYPE_CHECKING:
    from aaclip_med.model.aaclip import AACLIP

__all__ = ["CaseOutcome", "CohortResult", "cached_model", "run_case", "run_cohort", "shard"]

logger = logging.getLogger(__name__)

_MODELS: dict[str, AACLIP] = {}  # one model per process (per worker), keyed by its settings


@dataclass(frozen=True)
class CaseOutcome:
    """What happened to one case in this run."""

    case_id: str
    status: str  # "done" or "failed"
    seconds: float
    error: str = ""  # exception type name
    message: str = ""  # its first line


@dataclass(frozen=True)
class CohortResult:
    """The rows of the cohort sheets and where they were written."""

    out_dir: Path
    cases: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    n_done: int  # cases computed in this run
    n_failed: int
    n_skipped: int  # finished before (resume)
    files: dict[str, Path] = field(default_factory=dict)


def _model_key(config: RunConfig) -> str:
    inf = config.inference
    keys = ("model", "backbone_weights", "adapter_weights", "image_size", "device", "precision", "backend", "seed")
    return json.dumps({k: getattr(inf, k) for k in keys}, sort_keys=True, default=str)


def cached_model(config: RunConfig) -> AACLIP:
    """The model ``config`` names, built once per process."""
    from aaclip_med.pipeline import load_model

    key = _model_key(config)
    if key not in _MODELS:
        _MODELS[key] = load_model(config)
    return _MODELS[key]


def run_case(case: Case, cases_dir: Path, config: RunConfig, model: AACLIP | None = None) -> CaseOutcome:
    """Score one case into ``cases_dir/<case_id>``; every error becomes a failed :class:`CaseOutcome`."""
    from aaclip_med.pipeline import run_study

    t0 = time.perf_counter()
    cfg = dataclasses.replace(config, preset=case.preset or config.preset)
    try:
        run_study(case.image, cases_dir / case.case_id, config=cfg, model=model or cached_model(cfg),
                  series=case.series, case_id=case.case_id, organ_mask=case.organ_mask,
                  overwrite=True)  # the cohort owns cases/
    except AACLIPMedError as err:
        return _failed(case, err, t0)
    except Exception as err:  # a bug or an unforeseen input: record it, keep the cohort going
        logger.debug("case %s:\n%s", case.case_id, traceback.format_exc())
        return _failed(case, err, t0)
    return CaseOutcome(case.case_id, "done", time.perf_counter() - t0)


def _failed(case: Case, err: BaseException, t0: float) -> CaseOutcome:
    message = (str(err).splitlines() or [""])[0]
    logger.warning("case %s failed: %s: %s", case.case_id, type(err).__name__, message)
    return CaseOutcome(case.case_id, "failed", time.perf_counter() - t0, type(err).__name__, message)


def _worker_task(case: Case, cases_dir: Path, config: RunConfig, threads: int | None) -> CaseOutcome:
    """Dask task: set the worker's torch threads once, then score the case with the worker's cached model."""
    import torch

    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return run_case(case, cases_dir, config)


def _in_process(
    todo: Sequence[Case], cases_dir: Path, cfg: RunConfig, model: AACLIP | None
) -> Iterator[CaseOutcome]:
    model = model or (cached_model(cfg) if todo else None)
    for case in todo:
        yield run_case(case, cases_dir, cfg, model)


def _check_scheduler(scheduler: str | None) -> None:
    """Fail fast on a scheduler that is not 'local' nor a reachable ``tcp://HOST:PORT`` (no 30 s connect wait).

    Raises:
        ConfigError: malformed address, unknown host, or nothing listening there.
    """
    if scheduler in (None, "local"):
        return
    scheme, _, rest = str(scheduler).partition("://")
    host, _, port = rest.rpartition(":")
    if scheme not in ("tcp", "tls") or not host or not port.isdigit():
        msg = f"scheduler={scheduler!r} is not valid; use 'local' or the address of a Dask scheduler, tcp://HOST:PORT."
        raise ConfigError(msg)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        msg = (f"Cannot reach the Dask scheduler {scheduler} ({err.strerror or err}); start it with "
               "`dask scheduler` or use 'local'.")
        raise ConfigError(msg) from err


def _dask(todo: Sequence[Case], cases_dir: Path, cfg: RunConfig, workers: int, scheduler: str | None
          ) -> Iterator[CaseOutcome]:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as err:
        msg = "workers/scheduler need dask.distributed; install it with: pip install 'aaclip-med[distributed]'."
        raise ConfigError(msg) from err
    with contextlib.ExitStack() as stack:
        if scheduler in (None, "local"):
            n = workers or os.cpu_count() or 1
            cluster = stack.enter_context(LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                       dashboard_address=None))
            client = stack.enter_context(Client(cluster))
            threads: int | None = max(1, (os.cpu_count() or 1) // n)
        else:
            try:
                client = stack.enter_context(Client(scheduler, timeout="30s"))
            except (OSError, TimeoutError) as err:
                msg = (f"Cannot reach the Dask scheduler {scheduler} ({err}); start it with `dask scheduler` "
                       "or use 'local'.")
                raise ConfigError(msg) from err
            threads = None
        token = uuid.uuid4().hex[:8]
        futures = {client.submit(_worker_task, case, cases_dir, cfg, threads, key=f"aaclip-{case.case_id}-{token}",
                                 pure=False, retries=0): case for case in todo}
        for future in as_completed(futures):
            case = futures[future]
            try:
                yield future.result()
            except Exception as err:  # the worker died (KilledWorker) or the task was cancelled
                yield _failed(case, err, time.perf_counter())


def _anonymous(cases: list[Case], source: Path, cfg: RunConfig) -> list[Case]:
    """Cases found in a folder get hashed ids unless names are kept (a manifest's ids are the user's own)."""
    from aaclip_med.pipeline import naming

    names = naming(cfg.export)
    if names.keep_names or (source.is_file() and source.suffix.lower() == ".csv"):
        return cases
    out = [dataclasses.replace(c, case_id=names.case_id(f"{c.case_id}::{c.series or ''}", c.case_id))
           for c in cases]  # fmt: skip
    if len({c.case_id for c in out}) != len(out):
        msg = f"Two cases of {source} get the same hashed id; pass --keep-names or write a manifest."
        raise ManifestError(msg)
    return out


def _remove_stale(cases_dir: Path, cases: Sequence[Case]) -> None:
    """Delete hidden ``.partial``/``.old-`` leftovers of killed runs, for this run's cases only."""
    if not cases_dir.is_dir():
        return
    ids = sorted((c.case_id for c in cases), key=len, reverse=True)
    for entry in cases_dir.iterdir():
        name = entry.name
        if not name.startswith(".") or not (name.endswith(".partial") or ".old-" in name):
            continue
        if any(name.startswith(f".{cid}.") for cid in ids):
            logger.info("removing stale %s", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _execute(todo: Sequence[Case], cases_dir: Path, cfg: RunConfig, *, workers: int, scheduler: str | None,
             model: AACLIP | None, progress: bool) -> list[CaseOutcome]:
    from tqdm.auto import tqdm

    distributed = workers > 0 or scheduler is not None
    if distributed and model is not None:
        warnings.warn("run_cohort: model= is ignored with workers/scheduler; each worker builds the model from "
                      "config.inference", stacklevel=3)
    outcomes = []
    if distributed:
        source = _dask(todo, cases_dir, cfg, workers, scheduler)
    else:
        source = _in_process(todo, cases_dir, cfg, model)
    with tqdm(total=len(todo), desc="cases", unit="case", disable=not progress) as bar:
        for outcome in source:
            outcomes.append(outcome)
            bar.update(1)
            bar.set_postfix(failed=sum(o.status == "failed" for o in outcomes))
    return outcomes


def shard(cases: Sequence[Case], num_parts: int = 1, part_id: int = 0) -> list[Case]:
    """The cases of one part (nnU-Net ``--num-parts/--part-id``): sorted by id, case i goes to part i % N.

    Raises:
        ManifestError: ``num_parts < 1`` or ``part_id`` outside ``[0, num_parts)``.

    Example:
        >>> [c.case_id for c in shard([Case(i, Path(i)) for i in "cba"], 2, 0)]
        ['a', 'c']
    """
    if num_parts < 1 or not 0 <= part_id < num_parts:
        msg = f"num_parts={num_parts}, part_id={part_id} is invalid; use num_parts >= 1, 0 <= part_id < num_parts."
        raise ManifestError(msg)
    ordered = sorted(cases, key=lambda c: c.case_id)
    return [c for i, c in enumerate(ordered) if i % num_parts == part_id]


def run_cohort(
    source: PathLike,
    out_dir: PathLike,
    *,
    config: RunConfig | None = None,
    resume: bool = False,
    num_parts: int = 1,
    part_id: int = 0,
    workers: int = 0,
    scheduler: str | None = None,
    progress: bool = True,
    model: AACLIP | None = None,
    overwrite: bool = False,
) -> CohortResult:
    """Score every study of a cohort and write the cohort sheets (layout: ``pipelines/README.md``).

    Args:
        source: A manifest CSV (``case_id,image,mask,label,preset,split``), a data folder (discovery rules:
            :mod:`aaclip_med.discovery`) or a single study.
        out_dir: Output folder: ``cases/<case_id>/`` per case plus ``cases.csv``, ``summary.csv``,
            ``failures.csv``, ``report.html`` and ``run.json``.
        config: Run settings; a case's manifest ``preset`` overrides ``config.preset``.
        resume: Skip cases whose folder holds ``run.json`` (``--continue``); partial ones are redone.
        num_parts: Split the cohort into this many parts (sorted case ids, case i in part i % num_parts).
        part_id: The part this call computes. With ``num_parts > 1`` only ``cases/`` and
            ``parts/{cases,failures}.part<K>of<N>.csv`` are written; a final call with ``num_parts=1`` and
            ``resume=True`` assembles the cohort sheets.
        workers: Dask ``LocalCluster`` worker processes (0: in-process).
        scheduler: ``"local"`` (a LocalCluster) or the address of a running Dask scheduler (``tcp://host:port``);
            workers must see the same file system.
        progress: Show a progress bar over cases.
        model: A model already built (in-process only); else built once from ``config.inference``.
        overwrite: Recompute a finished cohort folder (without it, only ``resume`` may reuse one).

    Returns:
        The sheet rows, counts and written files.

    Raises:
        ManifestError: Bad manifest or sharding arguments.
        OutputError: ``out_dir`` is not a cohort output folder, is a finished one (without ``resume`` or
            ``overwrite``), or it is, lies inside or contains the data folder or a case image.
        ConfigError: Dask is missing or the scheduler cannot be reached.

    Example:
        >>> res = run_cohort("datasets/brats/manifest.csv", "reports/brats", workers=2)  # doctest: +SKIP
        >>> res.n_failed, res.summary[0]["pixel_auroc"]  # doctest: +SKIP
    """
    from aaclip_med import report
    from aaclip_med.pipeline import naming

    t_start = time.perf_counter()
    cfg = config or RunConfig()
    cfg = dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, progress=False))
    out = Path(out_dir)
    _check_scheduler(scheduler)
    cases = _anonymous(load_cases(source), Path(source), cfg)
    organs = [c.organ_mask for c in cases if c.organ_mask is not None]
    inputs = [c.image for c in cases] + organs + ([] if Path(source).is_file() else [Path(source)])
    check_cohort_folder(out, inputs, resume=resume, overwrite=overwrite, num_parts=num_parts)
    mine = shard(cases, num_parts, part_id)
    cases_dir = out / "cases"
    _remove_stale(cases_dir, mine)
    finished = {c.case_id for c in mine if resume and (cases_dir / c.case_id / MARKER).is_file()}
    todo = [c for c in mine if c.case_id not in finished]
    logger.info("%d cases (%d finished before, %d to run)", len(mine), len(finished), len(todo))
    outcomes = _execute(todo, cases_dir, cfg, workers=workers, scheduler=scheduler, model=model, progress=progress)
    failed = {o.case_id: {"error": o.error, "message": o.message} for o in outcomes if o.status == "failed"}
    sheets = assemble(mine, cases_dir, failed, organ=cfg.inference.organ, organ_label=cfg.inference.organ_label)
    names = naming(cfg.export)
    images = {c.case_id: c.image for c in mine}
    for row in sheets.failures:  # no input path (a patient's name, often) in the sheets unless names are kept
        image = images.get(row["case_id"], row["image"])
        row["image"], row["message"] = names.path(image), names.scrub(row["message"], [image])
    files: dict[str, Path] = {}
    tag = f".part{part_id}of{num_parts}" if num_parts > 1 else ""
    base = out / "parts" if tag else out
    files["cases"] = report.write_sheet(sheets.cases, base / f"cases{tag}.csv", columns=case_columns(sheets.cases))
    files["failures"] = report.write_sheet(sheets.failures, base / f"failures{tag}.csv", columns=FAILURE_COLUMNS)
    result = CohortResult(out, sheets.cases, sheets.summary, sheets.failures,
                          n_done=sum(o.status == "done" for o in outcomes), n_failed=len(sheets.failures),
                          n_skipped=len(finished), files=files)
    if tag:
        return result
    files["summary"] = report.write_sheet(sheets.summary, out / "summary.csv", columns=SUMMARY_SHEET_COLUMNS)
    if sheets.slice_metrics:
        from aaclip_med.metrics import SLICE_METRIC_COLUMNS

        files["slice_metrics"] = report.write_sheet(sheets.slice_metrics, out / "slice_metrics.csv",
                                                    columns=SLICE_METRIC_COLUMNS)
    metadata = sheets.provenance_model.get("metadata") or (model.metadata() if model is not None else {})
    prov = report.provenance(
        cfg, metadata, [source] if Path(source).is_file() else [], {"total_s": time.perf_counter() - t_start},
        name_input=names.path,
        extra={"source": names.path(source), "n_cases": len(mine), "n_done_this_run": result.n_done,
               "n_failed": result.n_failed, "n_skipped": result.n_skipped, "workers": workers,
               "scheduler": scheduler, "case_precisions": sheets.precisions},
    )
    files["report"] = report.write_cohort_html(out / "report.html", cases=sheets.cases, summary=sheets.summary,
                                               failures=sheets.failures, provenance=prov,
                                               untrained=sheets.untrained, verdicts=sheets.verdicts)
    files["run"] = report.write_json(prov, out / MARKER)
    logger.info("cohort %s: %d finished, %d failed", out, len(mine) - result.n_failed, result.n_failed)
    return result
