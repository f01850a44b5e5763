"""The manifest: one CSV schema for training, scoring and evaluation (DESIGN §0), read into :class:`Case` records.

Columns :data:`MANIFEST_COLUMNS`: ``case_id,image,mask,label,preset,split`` (``path`` is an alias of ``image``),
optionally ``series`` (selects a DICOM series) and ``organ_mask``. Relative paths are taken from the manifest's
folder. Every row is checked before any work starts, and each problem is a one-line
:class:`~aaclip_med.errors.ManifestError` naming the file, the line and the fix.

``split`` has one vocabulary for every command (:data:`SPLITS`): ``train``, ``val`` and ``test``, with
``training``, ``valid`` and ``validation`` read as their aliases; :func:`read_manifest` and
:func:`write_manifest` store the canonical name. Training uses ``train`` rows (and rows without a split), selects
epochs and calibrates on ``val`` rows and never looks at ``test`` rows; ``batch`` and ``eval`` copy the split
into ``cases.csv``.

This module is the one owner of the manifest: :class:`Case`, :func:`read_manifest`, :func:`write_manifest` and
the split table. Finding the cases of a folder instead is :mod:`aaclip_med.discovery`.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from aaclip_med._files import atomic_path
from aaclip_med.errors import ManifestError, did_you_mean

__all__ = ["MANIFEST_COLUMNS", "SPLITS", "Case", "check_case_id", "check_split", "read_manifest", "write_manifest"]

# Columns of a manifest CSV, in the order write_manifest writes them (series and organ_mask only when used).
MANIFEST_COLUMNS = ("case_id", "image", "mask", "label", "preset", "split", "series", "organ_mask")
# The one split vocabulary (manifest column, training folder layouts): accepted spelling -> canonical name.
SPLITS = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test",
}  # fmt: skip
_BAD_ID = re.compile(r"[/\\\x00]")


@dataclass(frozen=True, slots=True)
class Case:
    """One study of a cohort.

    Attributes:
        case_id: Unique id; names the output folder ``cases/<case_id>/``.
        image: Anything :func:`~aaclip_med.io.read_volume` reads.
        mask: Reference label map on the image grid (> 0 = anomaly), or None.
        label: Volume label 0/1 from the manifest, or None (then ``mask.any()`` when a mask is given).
        preset: Modality preset name, or None for the run's preset / the modality default.
        split: ``train``, ``val`` or ``test`` (:data:`SPLITS`), or None when the manifest leaves it empty.
        series: DICOM series selector (UID, number or description), or None.
        where: Where the case came from (``manifest.csv line 3``), for messages.
        organ_mask: Organ (or brain) mask on the image grid (> 0 = organ), or None; ``eval`` then also reports
            the pixel metrics inside it.
    """

    case_id: str
    image: Path
    mask: Path | None = None
    label: int | None = None
    preset: str | None = None
    split: str | None = None
    series: str | None = None
    where: str = ""
    organ_mask: Path | None = None


def _label(value: str, where: str) -> int | None:
    if value == "":
        return None
    if value in ("0", "1"):
        return int(value)
    msg = f"{where}: label '{value}' is not 0 or 1; write 0 (normal), 1 (anomalous) or leave empty."
    raise ManifestError(msg)


def _preset(value: str, where: str) -> str | None:
    from aaclip_med.presets import MODALITY_PRESETS

    if value == "":
        return None
    if value not in MODALITY_PRESETS:
        msg = (
            f"{where}: preset '{value}' is not known; {did_you_mean(value, MODALITY_PRESETS)}"
            f"use one of {', '.join(MODALITY_PRESETS)} or leave empty."
        )
        raise ManifestError(msg)
    return value


def check_case_id(case_id: str, where: str) -> str:
    """Return ``case_id`` when it can name a folder.

    Raises:
        ManifestError: It is empty, ``.``/``..``, starts with a dot or holds a path separator.
    """
    if not case_id or case_id in (".", "..") or case_id.startswith(".") or _BAD_ID.search(case_id):
        msg = (f"{where}: case_id '{case_id}' cannot name a folder; use letters, digits, '_' or '-' "
               "(no '/', no leading '.').")
        raise ManifestError(msg)
    return case_id


def check_split(value: str | None, where: str) -> str | None:
    """The canonical name of a split (``valid`` -> ``val``), or None for an empty one.

    Raises:
        ManifestError: The split is not in :data:`SPLITS`.

    Example:
        >>> check_split("Validation", "manifest.csv line 2")
        'val'
    """
    key = (value or "").strip().lower()
    if not key:
        return None
    if key not in SPLITS:
        msg = f"{where}: split '{value}' is not known; {did_you_mean(key, SPLITS)}use train, val or test."
        raise ManifestError(msg)
    return SPLITS[key]


def _header(path: Path, fieldnames: Sequence[str] | None, images: bool) -> tuple[list[str], str | None]:
    columns = [c.strip() for c in fieldnames or []]
    if not columns:
        msg = f"Manifest '{path}' is empty; write a header line case_id,image,mask,label,preset,split."
        raise ManifestError(msg)
    known = (*MANIFEST_COLUMNS, "path")
    unknown = [c for c in columns if c not in known]
    if unknown:
        msg = (
            f"Manifest '{path}': unknown column '{unknown[0]}'; {did_you_mean(unknown[0], known)}"
            f"allowed: {', '.join(MANIFEST_COLUMNS)} (path = alias of image). Rename or drop it."
        )
        raise ManifestError(msg)
    if "image" in columns and "path" in columns or images and "image" not in columns and "path" not in columns:
        msg = f"Manifest '{path}': needs exactly one of the columns 'image' or 'path' (header: {columns})."
        raise ManifestError(msg)
    if "case_id" not in columns:
        msg_0 = f"Manifest '{path}': the case_id column is missing (header: {columns}); add it."
        raise ManifestError(msg_0)
    return columns, next((c for c in ("image", "path") if c in columns), None)


def read_manifest(path: str | Path, *, check_files: bool = True, images: bool = True) -> list[Case]:
    """Read a cohort manifest CSV.

    Args:
        path: The CSV file.
        check_files: Fail when an image or mask path does not exist.
        images: Require the image column; ``False`` reads a labels-only sheet (``case_id,mask,label``) for
            evaluation, whose cases then have an empty ``image``.

    Returns:
        One case per row, in file order.

    Raises:
        ManifestError: Missing file, bad header, empty image, bad label, preset or split, bad or duplicate
            case_id, missing image/mask file, no rows.

    Example:
        >>> cases = read_manifest("datasets/brats/manifest.csv")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        msg = f"Manifest '{path}' does not exist; pass an existing CSV file or a data folder."
        raise ManifestError(msg)
    cases: list[Case] = []
    seen: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        msg = f"Manifest '{path}' is not a CSV text file ({err.reason}); pass a manifest CSV or a data folder."
        raise ManifestError(msg) from err
    with io.StringIO(text, newline="") as fh:
        reader = csv.DictReader(fh)
        _, image_col = _header(path, reader.fieldnames, images)
        for n, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            where = f"{path.name} line {n}"
            if not any(row.values()):
                continue
            case_id = check_case_id(row.get("case_id", ""), where)
            if case_id in seen:
                msg = f"{where}: case_id '{case_id}' repeats {seen[case_id]}; case ids must be unique."
                raise ManifestError(msg)
            seen[case_id] = where
            if image_col is not None and not row.get(image_col):
                msg = f"{where}: the {image_col} column is empty; give the image of case '{case_id}'."
                raise ManifestError(msg)
            image = path.parent / row[image_col] if image_col is not None else None
            mask = path.parent / row["mask"] if row.get("mask") else None
            organ = path.parent / row["organ_mask"] if row.get("organ_mask") else None
            for kind, p in (("image", image), ("mask", mask), ("organ_mask", organ)):
                if check_files and p is not None and not p.exists():
                    msg = f"{where}: {kind} '{p}' does not exist; fix the path (relative to {path.parent})."
                    raise ManifestError(msg)
            cases.append(Case(case_id, image or Path(), mask, _label(row.get("label", ""), where),
                              _preset(row.get("preset", ""), where), check_split(row.get("split"), where),
                              row.get("series") or None, where, organ))
    if not cases:
        msg_0 = f"Manifest '{path}' has a header but no rows; add one row per study."
        raise ManifestError(msg_0)
    return cases



def write_manifest(cases: Sequence[Case], path: str | Path) -> Path:
    """Write cases as a manifest CSV, atomically, with paths relative to its folder.

    The columns are :data:`MANIFEST_COLUMNS`, less ``series`` and ``organ_mask`` when no case uses them.

    Args:
        cases: The cases, written in this order.
        path: The CSV file.

    Returns:
        The written path; :func:`read_manifest` reads it back to the same cases (splits in their canonical names).

    Raises:
        ManifestError: Two cases share a case id, or a split is not known.
    """
    path = Path(path)
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        msg = f"write_manifest: case_id '{dup}' repeats; case ids must be unique."
        raise ManifestError(msg)
    cases = [replace(c, split=check_split(c.split, c.where or f"case '{c.case_id}'")) for c in cases]

    def rel(p: Path | None) -> str:
        return "" if p is None else Path(os.path.relpath(Path(p).resolve(), path.parent.resolve())).as_posix()

    optional = {"series": any(c.series for c in cases), "organ_mask": any(c.organ_mask for c in cases)}
    columns = [k for k in MANIFEST_COLUMNS if optional.get(k, True)]
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for c in cases:
            writer.writerow({"case_id": c.case_id, "image": rel(c.image), "mask": rel(c.mask),
                             "label": "" if c.label is None else c.label, "preset": c.preset or "",
                             "split": c.split or "", "series": c.series or "", "organ_mask": rel(c.organ_mask)})
    return path
