"""The manifest: one CSV schema for training, scoring and evaluation (DESIGN §0), read into :class:`Case` records.

Columns ``case_id,image,mask,label,preset,split`` (``path`` is an alias of ``image``; an optional ``series``
column selects a DICOM series). Relative paths are taken from the manifest's folder. Every row is checked
before any work starts, and each problem is a one-line :class:`~aaclip_med.errors.ManifestError` naming the
file, the line and the fix.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aaclip_med.errors import ManifestError, did_you_mean

__all__ = ["MANIFEST_COLUMNS", "Case", "check_case_id", "read_manifest"]

MANIFEST_COLUMNS = ("case_id", "image", "mask", "label", "preset", "split", "series", "organ_mask")
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
        split: Free-text split (``train``, ``valid``, ``test``), copied into the sheets.
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
    raise ManifestError(f"{where}: label '{value}' is not 0 or 1; write 0 (normal), 1 (anomalous) or leave empty.")


def _preset(value: str, where: str) -> str | None:
    from aaclip_med.config import MODALITY_PRESETS

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
        raise ManifestError(f"Manifest '{path}': the case_id column is missing (header: {columns}); add it.")
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
        ManifestError: Missing file, bad header, empty image, bad label or preset, bad or duplicate case_id,
            missing image/mask file, no rows.

    Example:
        >>> cases = read_manifest("datasets/brats/manifest.csv")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"Manifest '{path}' does not exist; pass an existing CSV file or a data folder.")
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
                              _preset(row.get("preset", ""), where), row.get("split") or None,
                              row.get("series") or None, where, organ))
    if not cases:
        raise ManifestError(f"Manifest '{path}' has a header but no rows; add one row per study.")
    return cases

