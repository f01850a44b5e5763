"""DICOM discovery and series grouping: files, folders, zips and DICOMDIRs to image series.

MONAI's readers take the first series or mix series and sort by InstanceNumber; here every input is grouped by
SeriesInstanceUID, a series is chosen explicitly when there are several, and non-image objects (SR, RTSTRUCT, SEG,
PR, KO, ...) are set aside with a reason. Decoding and geometry live in :mod:`aaclip_med.io.dicom_decode`.
"""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from aaclip_med.errors import DicomSeriesError, UnsupportedFormatError, did_you_mean

__all__ = [
    "Header",
    "SeriesInfo",
    "ZipArchives",
    "archives_for",
    "discover",
    "list_series",
    "read_dataset",
    "select_series",
    "try_read_dataset",
]

logger = logging.getLogger(__name__)

ZIP_SEP = "::"
_DICOMDIR_SOP = "1.2.840.10008.1.3.10"
_NON_IMAGE_MODALITIES = {"SR", "RTSTRUCT", "SEG", "PR", "KO", "RTPLAN", "REG", "DOC", "RWV", "FID", "AU", "ECG"}
_NON_IMAGE_SOP_WORDS = (
    "SR Storage",
    "Presentation State",
    "Structure Set",
    "Segmentation",
    "Key Object",
    "Document",
)


@dataclass(frozen=True)
class Header:
    """One DICOM object read without its pixel data."""

    ref: str  # file path, or "archive.zip::member"
    ds: Dataset

    @property
    def non_image_reason(self) -> str | None:
        """Why this object cannot be read as an image (``None`` for images)."""
        sop = str(getattr(self.ds.get("SOPClassUID"), "name", self.ds.get("SOPClassUID", "")))
        modality = str(self.ds.get("Modality", ""))
        if modality in _NON_IMAGE_MODALITIES or any(word in sop for word in _NON_IMAGE_SOP_WORDS):
            return f"a {modality or '?'} object ({sop})"
        if "Rows" not in self.ds or "Columns" not in self.ds:
            return f"an object without pixel data ({sop or 'unknown SOP class'})"
        return None

    @property
    def n_frames(self) -> int:
        """Number of frames (1 for single-frame images)."""
        return int(self.ds.get("NumberOfFrames", 1) or 1)


@dataclass(frozen=True)
class SeriesInfo:
    """An image series found in an input."""

    uid: str
    number: int | None
    description: str
    modality: str
    headers: tuple[Header, ...]

    @property
    def n_slices(self) -> int:
        """Slices (frames) in the series."""
        return sum(h.n_frames for h in self.headers)

    def label(self) -> str:
        """Short one-line description used in error messages."""
        return f"{self.uid} #{self.number} '{self.description}' {self.modality} {self.n_slices} slices"

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form for ``list_series`` and ``aaclip-med info``."""
        return {
            "series_uid": self.uid,
            "series_number": self.number,
            "series_description": self.description,
            "modality": self.modality,
            "n_slices": self.n_slices,
            "n_files": len(self.headers),
        }


class ZipArchives:
    """The zip archives of one read, each opened (its central directory parsed) once and closed at the end.

    A context manager: pass it through discovery and decoding of one read, so that the thousands of members of
    an archive (e.g. 3D-IRCADb's ``MASKS_DICOM.zip``) do not each re-open it. It holds no global state; use one
    per read, never shared between reads or threads (each thread or Dask task reading a zip opens its own).

    Example:
        >>> with ZipArchives() as zips:  # doctest: +SKIP
        ...     ds = read_dataset("masks.zip::liver/image_0", archives=zips)
    """

    def __init__(self) -> None:
        """Start with no archive open."""
        self._open: dict[str, zipfile.ZipFile] = {}

    def __enter__(self) -> ZipArchives:
        """The handle itself."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close every archive opened, also on errors."""
        self.close()

    def archive(self, path: str | Path) -> zipfile.ZipFile:
        """The open archive at ``path``, opened on first use."""
        key = str(path)
        if key not in self._open:
            self._open[key] = zipfile.ZipFile(key)
        return self._open[key]

    @contextmanager
    def open(self, ref: str, *, header_only: bool = False) -> Iterator[str | IO[bytes]]:
        """A path or file object that ``pydicom.dcmread`` can read for a file reference.

        ``header_only`` streams a zip member (decompressing only the part read) instead of reading it whole.
        """
        if ZIP_SEP not in ref:
            yield ref
            return
        archive, member = ref.split(ZIP_SEP, 1)
        zf = self.archive(archive)
        if header_only:
            with zf.open(member) as stream:
                yield stream
        else:
            yield io.BytesIO(zf.read(member))

    def close(self) -> None:
        """Close the archives opened so far."""
        for zf in self._open.values():
            zf.close()
        self._open.clear()


@contextmanager
def archives_for(given: ZipArchives | None) -> Iterator[ZipArchives]:
    """The caller's open archives, or a handle of its own for one call (closed at its end) when ``None``."""
    if given is not None:
        yield given
        return
    with ZipArchives() as own:
        yield own


def read_dataset(ref: str, *, header_only: bool = False, archives: ZipArchives | None = None) -> Dataset:
    """Read one DICOM object; files without the 128-byte preamble are accepted when they carry a SOP class.

    Args:
        ref: File path or ``"x.zip::member"``.
        header_only: Stop before the pixel data.
        archives: The open archives of the read in progress (one is opened for this call when ``None``).

    Raises:
        UnsupportedFormatError: the file is not DICOM or cannot be parsed.
    """
    with archives_for(archives) as zips:
        for force in (False, True):
            try:
                with zips.open(ref, header_only=header_only) as source:
                    ds = pydicom.dcmread(source, stop_before_pixels=header_only, force=force)
            except InvalidDicomError:
                continue
            except Exception as err:  # pydicom raises many types on corrupt files
                why = f"{type(err).__name__}: {err}".replace("\n", " ")
                msg = f"'{ref}' could not be parsed as DICOM ({why}); check the file is complete."
                raise UnsupportedFormatError(msg) from err
            if not force or "SOPClassUID" in ds:
                return ds
    msg = (
        f"'{ref}' is not a DICOM file (no DICM preamble or SOP class); "
        "pass a DICOM file, folder, zip or DICOMDIR, or a .nii/.nii.gz/.nrrd/.mha/.mhd image."
    )
    raise UnsupportedFormatError(msg)


def try_read_dataset(
    ref: str, *, header_only: bool = False, archives: ZipArchives | None = None
) -> Dataset | None:
    """Like :func:`read_dataset` but ``None`` for files that are not (readable) DICOM, e.g. in a folder scan."""
    try:
        return read_dataset(ref, header_only=header_only, archives=archives)
    except UnsupportedFormatError as err:
        logger.debug("skipping %s", err)
        return None


def _refs(path: Path, folder: str | None, zips: ZipArchives) -> tuple[list[str], str]:
    """File references under ``path`` and the kind of input ("file", "folder", "zip", "dicomdir").

    ``folder``: keep only the files inside a sub-folder of that name (at any depth; folders and zips only).
    """
    if path.is_dir():
        found = (p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        files = sorted(str(p) for p in found if folder is None or folder in p.relative_to(path).parent.parts)
        return files, "folder"
    if zipfile.is_zipfile(path):
        members = [m.filename for m in zips.archive(path).infolist() if not m.is_dir()]
        members = [m for m in members if folder is None or folder in PurePosixPath(m).parent.parts]
        return [f"{path}{ZIP_SEP}{m}" for m in members if not Path(m).name.startswith(".")], "zip"
    return [str(path)], "file"


def _dicomdir_refs(ds: Dataset) -> list[str]:
    from pydicom.fileset import FileSet

    return [str(Path(inst.path)) for inst in FileSet(ds)]


def discover(
    path: Path, folder: str | None = None, archives: ZipArchives | None = None
) -> tuple[list[Header], str]:
    """Read the headers of every DICOM object in a file, folder (recursive), zip or DICOMDIR.

    ``folder``: only the objects inside sub-folders of that name (e.g. ``liver`` in 3D-IRCADb's MASKS_DICOM).
    ``archives``: the open archives of the read in progress (pass the same to the decoding); ``None`` opens and
    closes its own.

    Returns:
        The headers (DICOMDIR objects themselves excluded) and the input kind.

    Raises:
        UnsupportedFormatError: a single file that is not DICOM.
        DicomSeriesError: a folder or zip without any DICOM object.
    """
    with archives_for(archives) as zips:
        refs, kind = _refs(path, folder, zips)
        single = kind == "file"
        headers: list[Header] = []
        for ref in refs:
            read = read_dataset if single else try_read_dataset
            ds = read(ref, header_only=True, archives=zips)
            if ds is None:
                continue
            sop = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
            if sop == _DICOMDIR_SOP or "DirectoryRecordSequence" in ds:
                if single:
                    headers.extend(
                        Header(r, h) for r in _dicomdir_refs(ds) if (h := try_read_dataset(r, header_only=True))
                    )
                    kind = "dicomdir"
                continue
            headers.append(Header(ref, ds))
    if not headers:
        where = f"'{path}'" if folder is None else f"the '{folder}' folders of '{path}'"
        msg = f"No DICOM files found in {where} ({len(refs)} files searched recursively); pass DICOM files."
        raise DicomSeriesError(msg)
    return headers, kind


def _int_or_none(value: Any) -> int | None:  # noqa: ANN401 - a DICOM element value
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def group_series(headers: Sequence[Header]) -> tuple[list[SeriesInfo], list[str]]:
    """Group image headers by SeriesInstanceUID; return the series and the reasons objects were set aside."""
    groups: dict[str, list[Header]] = {}
    skipped: list[str] = []
    for header in headers:
        reason = header.non_image_reason
        if reason is not None:
            skipped.append(f"{header.ref}: {reason}")
            continue
        groups.setdefault(str(header.ds.get("SeriesInstanceUID", "")), []).append(header)
    series = []
    for uid, members in groups.items():
        first = members[0].ds
        series.append(
            SeriesInfo(
                uid=uid,
                number=_int_or_none(first.get("SeriesNumber")),
                description=str(first.get("SeriesDescription", "")),
                modality=str(first.get("Modality", "")),
                headers=tuple(members),
            )
        )
    series.sort(key=lambda s: (s.number if s.number is not None else 1 << 30, s.uid))
    return series, skipped


def _listing(series: Sequence[SeriesInfo]) -> str:
    return "; ".join(s.label() for s in series)


def _matches(info: SeriesInfo, wanted: str) -> bool:
    return wanted in (info.uid, str(info.number)) or wanted.lower() == info.description.strip().lower()


def select_series(
    series: Sequence[SeriesInfo], skipped: Sequence[str], selector: str | int | None, source: str
) -> SeriesInfo:
    """Pick the series to read.

    Raises:
        DicomSeriesError: no image series, several series without a selector, or a selector matching none/several.
    """
    if not series:
        found = skipped[0] if len(skipped) == 1 else f"{len(skipped)} non-image objects, e.g. {skipped[0]}"
        msg = f"'{source}' holds no image series ({found}); pass a CT/MR image series, not SR/RTSTRUCT/SEG/PR/KO."
        raise DicomSeriesError(msg)
    if selector is None:
        if len(series) == 1:
            return series[0]
        msg = (
            f"'{source}' holds {len(series)} series: {_listing(series)}; choose one with series=<UID|number|"
            "description> (CLI --series)."
        )
        raise DicomSeriesError(msg)
    wanted = str(selector).strip()
    hits = [s for s in series if _matches(s, wanted)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        msg = (
            f"Series selector '{wanted}' matches {len(hits)} series in '{source}': {_listing(hits)}; pass the UID."
        )
        raise DicomSeriesError(msg)
    options = [s.uid for s in series] + [str(s.number) for s in series] + [s.description for s in series]
    msg = (
        f"Series '{wanted}' not found in '{source}'; {did_you_mean(wanted, options)}"
        f"found: {_listing(series)}. Pass series= as one of these UIDs, numbers or descriptions."
    )
    raise DicomSeriesError(msg)


def list_series(path: str | Path) -> list[dict[str, Any]]:
    """Describe the image series in a DICOM file, folder, zip or DICOMDIR.

    Returns:
        One dict per series: series_uid, series_number, series_description, modality, n_slices, n_files.

    Example:
        >>> list_series("study/")  # doctest: +SKIP
        [{'series_uid': '1.2...', 'series_number': 2, 'series_description': 'PV', 'modality': 'CT', ...}]
    """
    headers, _ = discover(Path(path))
    series, _ = group_series(headers)
    return [s.as_dict() for s in series]


def iter_datasets(refs: Sequence[str]) -> Iterator[Dataset]:
    """Full datasets (with pixel data) for file references, in order; each distinct file (and zip) is read once."""
    with ZipArchives() as zips:
        for ref in dict.fromkeys(refs):
            yield read_dataset(ref, archives=zips)
