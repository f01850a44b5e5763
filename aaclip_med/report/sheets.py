"""Tabular and JSON outputs: CSV sheets (the primary format), optional Excel workbooks and numpy-safe JSON.

Scores are written as floats at full precision (the shortest text that reads back to the same value), never
rounded or scaled by 100 (DESIGN §4.6). Every file is written atomically.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import enum
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from aaclip_med._files import atomic_path
from aaclip_med._typing import Array, JSONValue, PathLike
from aaclip_med.errors import ConfigError

__all__ = ["SLICE_COLUMNS", "slice_rows", "to_jsonable", "write_json", "write_sheet", "write_xlsx"]

logger = logging.getLogger(__name__)

# Columns of a run folder's slices.csv (`run`, and `batch`'s cases/<case_id>/), one row per slice along the slice
# axis, built by slice_rows. The per-slice evaluation sheet of `eval` and `batch` is another file,
# slice_metrics.csv (aaclip_med.metrics.SLICE_METRIC_COLUMNS).
SLICE_COLUMNS: tuple[str, ...] = (
    "case_id",  # the case (manifest case_id, or the input's name for `run`)
    "slice",  # index along the slice axis, 0-based, in the volume's stored order
    "position_mm",  # world position of the slice centre (RAS+ mm) along the world axis closest to the slice axis
    "score",  # slice score in raw map units: max of the map in the score region (the unscored value if not scored)
    "scored",  # True when the slice had enough foreground (and organ, with an organ mask) to be scored
    "flagged",  # True when scored and the slice has a mask voxel (without a mask given: score > threshold)
    "mask_voxels",  # voxels of the slice in the anomaly mask (empty when no mask was given)
)

_XLSX_BAD_CHARS = set("[]:*?/\\")


def slice_rows(
    case_id: str,
    slice_scores: Array,
    scored: Array,
    threshold: float,
    *,
    positions_mm: Sequence[float] | None = None,
    mask: Array | None = None,
    slice_axis: int | None = None,
) -> list[dict[str, Any]]:
    """Build the rows of a run folder's ``slices.csv`` (columns :data:`SLICE_COLUMNS`).

    Args:
        case_id: The case identifier.
        slice_scores: ``(n_slices,)`` slice scores in map units.
        scored: ``(n_slices,)`` bool, True where the slice was scored.
        threshold: The map threshold; without ``mask`` a scored slice is flagged when its score exceeds it.
        positions_mm: Optional ``(n_slices,)`` slice positions in mm.
        mask: Optional 3D anomaly mask, counted per slice along ``slice_axis``; a scored slice is then flagged
            when it has a mask voxel, so ``flagged`` and the mask always agree.
        slice_axis: The voxel slice axis of ``mask``; required with ``mask``.

    Returns:
        One dict per slice.

    Raises:
        ConfigError: ``mask`` is given without ``slice_axis``.
    """
    scores = np.asarray(slice_scores, dtype=np.float64)
    scored_b = np.asarray(scored, dtype=bool)
    counts: list[int | None] = [None] * scores.size
    if mask is not None:
        if slice_axis is None:
            msg = "slice_rows: a mask was given without slice_axis; pass slice_axis=result.slice_axis."
            raise ConfigError(msg)
        other = tuple(a for a in range(np.ndim(mask)) if a != slice_axis)
        counts = np.count_nonzero(np.asarray(mask), axis=other).tolist()
    return [
        {
            "case_id": case_id,
            "slice": k,
            "position_mm": None if positions_mm is None else float(positions_mm[k]),
            "score": float(scores[k]),
            "scored": bool(scored_b[k]),
            "flagged": bool(scored_b[k] and _flag(scores[k], threshold, counts[k])),
            "mask_voxels": counts[k],
        }
        for k in range(scores.size)
    ]


def _flag(score: float, threshold: float, mask_voxels: int | None) -> bool:
    """A slice's flag: it has a mask voxel; without a mask, its score exceeds the threshold."""
    return score > threshold if mask_voxels is None else mask_voxels > 0


def to_jsonable(obj: object) -> JSONValue:
    """Convert ``obj`` to plain JSON types: numpy scalars and arrays, paths, dataclasses, enums, datetimes.

    Non-finite floats become None so the output is strict JSON (readable by browsers and ``jq``).

    Args:
        obj: Any nesting of mappings, sequences and the types above.

    Returns:
        The same data made of dict, list, str, int, float, bool and None.

    Example:
        >>> to_jsonable({"a": np.float32(0.5), "b": np.arange(2), "c": float("nan")})
        {'a': 0.5, 'b': [0, 1], 'c': None}
    """
    if isinstance(obj, np.ndarray | np.generic):
        return to_jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        items = sorted(obj, key=str) if isinstance(obj, set | frozenset) else obj
        return [to_jsonable(v) for v in items]
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, dt.datetime | dt.date):
        return obj.isoformat()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    return str(obj)


def write_json(obj: object, path: PathLike, *, indent: int = 2) -> Path:
    """Write ``obj`` as strict, UTF-8 JSON, atomically (see :func:`to_jsonable` for the accepted types).

    Args:
        obj: The data.
        path: Output file.
        indent: JSON indentation.

    Returns:
        The written path.
    """
    text = json.dumps(to_jsonable(obj), indent=indent, ensure_ascii=False, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    logger.debug("Wrote %s", path)
    return Path(path)


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, np.floating):
        return str(value)  # numpy's shortest round-trip text at the value's own precision
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(to_jsonable(value))
    return value


def write_sheet(rows: Sequence[Mapping[str, Any]], path: PathLike, columns: Sequence[str] | None = None) -> Path:
    """Write rows as a CSV sheet (comma-separated, header line, UTF-8), atomically.

    Args:
        rows: One mapping per row.
        path: Output ``.csv`` file.
        columns: Column order; keys outside it are left out. None: every key, in first-seen order.

    Returns:
        The written path.

    Example:
        >>> write_sheet([{"case_id": "a", "score": 0.123456789}], "cases.csv")  # doctest: +SKIP
        PosixPath('cases.csv')
    """
    header = list(columns) if columns is not None else _columns(rows)
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore", restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _csv_cell(row.get(key)) for key in header})
    logger.debug("Wrote %d rows to %s", len(rows), path)
    return Path(path)


def _xlsx_cell(value: object) -> str | int | float | bool | None:
    cell = to_jsonable(value)
    if isinstance(cell, list | dict):
        return json.dumps(cell)
    return cell


def write_xlsx(sheets: Mapping[str, Sequence[Mapping[str, Any]]], path: PathLike) -> Path:
    """Write several sheets into one Excel workbook (needs the optional ``openpyxl``), atomically.

    Args:
        sheets: Sheet name (1-31 characters, none of the characters Excel forbids: ``[]:*?/`` and backslash)
            to rows.
        path: Output ``.xlsx`` file.

    Returns:
        The written path.

    Raises:
        ConfigError: openpyxl is not installed, or a sheet name is not valid in Excel.
    """
    try:
        from openpyxl import Workbook
    except ImportError as err:
        msg = f"Writing {path} needs openpyxl; install it with: pip install 'aaclip-med[xlsx]' (or openpyxl)."
        raise ConfigError(msg) from err
    workbook = Workbook()
    workbook.remove(workbook.active)
    for name, rows in sheets.items():
        if not name or len(name) > 31 or _XLSX_BAD_CHARS & set(name):
            msg = f"Excel sheet name {name!r} is invalid; use 1-31 characters without []:*?/\\."
            raise ConfigError(msg)
        sheet = workbook.create_sheet(name)
        header = _columns(rows)
        sheet.append(header)
        for row in rows:
            sheet.append([_xlsx_cell(row.get(key)) for key in header])
    with atomic_path(path) as tmp:
        workbook.save(tmp)
    return Path(path)
