"""Shared machinery of the DICOM writers: source checks, frame order, who-made-it attributes, PHI, saving.

See the package docstring (:mod:`aaclip_med.dicom_export`) for the array layout and the patient-data rules.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypedDict, TypeVar

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.sr.codedict import codes

from aaclip_med._files import atomic_path
from aaclip_med._version import __version__
from aaclip_med.errors import GeometryError, OutputError, UnsupportedFormatError

__all__ = [
    "MANUFACTURER",
    "build",
    "check_lo",
    "common_attributes",
    "export_blocker",
    "frames_in_source_order",
    "quiet_person_names",
    "save",
    "with_type2",
]

logger = logging.getLogger(__name__)

MANUFACTURER = "aaclip-med"
_MODEL_NAME = "AA-CLIP"
_SOFTWARE = f"aaclip-med {__version__}"
# MONAI Deploy's SEG writer records the algorithm as contributing "Processing Equipment" the same way.
_EQUIPMENT = hd.ContributingEquipment(
    manufacturer=MANUFACTURER,
    purpose_of_reference=codes.DCM.ProcessingEquipment,
    manufacturer_model_name=_MODEL_NAME,
    software_versions=_SOFTWARE,
)
_PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDsSequence")
# Type 2 attributes (may be empty, must be present) that highdicom copies from the sources into the new object.
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "AccessionNumber")  # fmt: skip
_MAX_LO = 64  # LO value representation: SegmentLabel, AlgorithmName, AlgorithmVersion
# Attributes highdicom needs on every source image; geometry of enhanced images lives in functional groups.
_REQUIRED = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "Rows",
    "Columns",
    "Modality",
)
_REQUIRED_SINGLE_FRAME = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")

_T = TypeVar("_T", bound=pydicom.Dataset)


@contextlib.contextmanager
def quiet_person_names() -> Iterator[None]:
    """Silence highdicom's warning about one-component patient names (common in de-identified data)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        yield


def check_lo(**values: str) -> None:
    """Raise :class:`OutputError` unless every value fits the DICOM LO representation (1-64 characters)."""
    for name, value in values.items():
        if not value or len(value) > _MAX_LO:
            msg = f"{name} {value!r} must be 1-{_MAX_LO} characters (DICOM LO); shorten it."
            raise OutputError(msg)


def build(factory: Callable[[], _T], what: str, path: Path) -> _T:
    """Call a highdicom constructor, turning its refusal into a one-line :class:`OutputError`."""
    try:
        return factory()
    except (ValueError, TypeError, AttributeError, KeyError) as err:
        msg = f"highdicom refused to build the {what} for {path}: {_one_line(err)}; check the source series."
        raise OutputError(msg) from err


def frames_in_source_order(
    array: npt.NDArray[np.generic], sources: list[pydicom.Dataset], what: str
) -> npt.NDArray[np.generic]:
    """Check the sources and the array's shape; return ``(n_frames, Rows, Columns)`` in source frame order."""
    if not sources:
        msg = f"No source images given for the {what}; pass load_source_datasets(volume) of a DICOM input."
        raise UnsupportedFormatError(msg)
    if array.ndim != 3:
        msg = f"{what} has shape {array.shape}; DICOM export needs an (I, J, K) array on the source grid."
        raise GeometryError(msg)
    _check_attributes(sources)
    n_frames = int(getattr(sources[0], "NumberOfFrames", 1) or 1)
    multi_frame = len(sources) == 1 and n_frames > 1
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    expected = (cols, rows, n_frames if multi_frame else len(sources))
    if array.shape != expected:
        msg = (
            f"{what} shape {array.shape} does not match the source images (Columns, Rows, slices) = "
            f"{expected}; export the array of the volume read from these files."
        )
        raise GeometryError(msg)
    if any((int(ds.Rows), int(ds.Columns)) != (rows, cols) for ds in sources):
        msg = f"Source images differ in size (first is {rows}x{cols}); export needs one uniform series."
        raise GeometryError(msg)
    frames = np.ascontiguousarray(np.transpose(array, (2, 1, 0)))  # frame k = array[:, :, k].T
    if multi_frame:
        # k follows increasing position along the slice normal; the file's frames may be stored in any order.
        frames = frames[_k_of_frames(sources[0])]
    return frames


def _k_of_frames(ds: pydicom.Dataset) -> npt.NDArray[np.intp]:
    """Return, for each stored frame of an enhanced image, its slice index ``k`` (rank along the normal)."""
    try:
        shared = ds.SharedFunctionalGroupsSequence[0]
        per_frame = ds.PerFrameFunctionalGroupsSequence

        def orientation(item: pydicom.Dataset) -> list[float]:
            seq = item.get("PlaneOrientationSequence") or shared.PlaneOrientationSequence
            return [float(v) for v in seq[0].ImageOrientationPatient]

        positions = np.array(
            [[float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient] for f in per_frame]
        )
        iop = orientation(per_frame[0])
    except (AttributeError, IndexError, KeyError) as err:
        msg = (
            f"Multi-frame source {ds.get('SOPInstanceUID', '?')} lacks plane position/orientation "
            f"functional groups ({_one_line(err)}); DICOM export needs them."
        )
        raise UnsupportedFormatError(msg) from err
    normal = np.cross(iop[:3], iop[3:])
    order = np.argsort(positions @ normal, kind="stable")
    ranks = np.empty_like(order)
    ranks[order] = np.arange(order.size)
    return ranks


class CommonAttributes(TypedDict):
    """Keyword arguments shared by the highdicom SEG and Parametric Map constructors."""

    sop_instance_uid: hd.UID
    instance_number: int
    contributing_equipment: list[hd.ContributingEquipment]
    manufacturer: str
    manufacturer_model_name: str
    software_versions: str
    device_serial_number: str


def common_attributes() -> CommonAttributes:
    """Keyword arguments shared by the SEGs and the Parametric Map: new instance, who made it."""
    return {
        "sop_instance_uid": hd.UID(),
        "instance_number": 1,
        "contributing_equipment": [_EQUIPMENT],
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": _MODEL_NAME,
        "software_versions": _SOFTWARE,
        "device_serial_number": "0",  # software, no physical device
    }


def with_type2(datasets: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The sources, with the Type 2 patient/study attributes highdicom copies added empty where absent.

    Real exports often omit e.g. PatientSex; a copy gets the empty element so the input datasets stay
    untouched.
    """
    out = []
    for ds in datasets:
        missing = [kw for kw in _TYPE2_COPIED if kw not in ds]
        if missing:
            ds = copy.deepcopy(ds)  # a shallow copy would share (and edit) the element dict
            for kw in missing:
                setattr(ds, kw, "")
        out.append(ds)
    return out


def _check_attributes(sources: Sequence[pydicom.Dataset], names: Sequence[str] = ()) -> None:
    multi_frame = len(sources) == 1 and int(getattr(sources[0], "NumberOfFrames", 1) or 1) > 1
    required = _REQUIRED if multi_frame else _REQUIRED + _REQUIRED_SINGLE_FRAME
    for index, ds in enumerate(sources):
        missing = [name for name in required if name not in ds]
        if missing:
            where = names[index] if index < len(names) else None
            where = where or getattr(ds, "filename", None) or f"source image {index}"
            others = sum(any(name not in d for name in missing) for d in sources) - 1
            msg = (
                f"{where}{f' (and {others} more source files)' if others > 0 else ''} lacks {', '.join(missing)}, "
                "which a DICOM SEG/Parametric Map needs; export NIfTI instead or fix the series."
            )
            raise UnsupportedFormatError(msg)


def export_blocker(source_files: Sequence[str]) -> str | None:
    """Why no DICOM SEG or Parametric Map can reference these source files, or ``None`` when one can.

    Reads the headers only, so a run can check this before the slow scoring.

    Args:
        source_files: ``Volume.source_files`` of a DICOM volume (file paths or ``"x.zip::member"``).
    """
    from aaclip_med.io.dicom_series import ZipArchives, read_dataset

    refs = list(dict.fromkeys(source_files))
    if not refs:
        return "the input is not DICOM, so a DICOM SEG/Parametric Map has no source images to reference"
    try:
        with ZipArchives() as zips:
            headers = [read_dataset(ref, header_only=True, archives=zips) for ref in refs]
        _check_attributes(headers, refs)
    except UnsupportedFormatError as err:
        return str(err)
    return None


def save(dataset: pydicom.Dataset, path: Path, include_phi: bool) -> Path:
    """Blank the patient identifiers unless asked to keep them, then write atomically beside ``path``."""
    if not include_phi:
        for keyword in _PHI_KEYWORDS:
            if keyword in dataset:
                # replace the element (attribute assignment would edit it in place, and highdicom shares
                # elements with the source datasets, which must stay untouched)
                old = dataset[keyword]
                dataset[old.tag] = pydicom.DataElement(old.tag, old.VR, [] if old.VR == "SQ" else "")
        dataset.PatientIdentityRemoved = "YES"
        dataset.DeidentificationMethod = "aaclip-med: patient name, ID and birth date blanked"
    try:
        with atomic_path(path) as tmp:
            dataset.save_as(tmp, enforce_file_format=True)
    except OSError as err:
        msg = f"Cannot write {path}: {err.strerror}; check free space and permissions."
        raise OutputError(msg) from err
    logger.debug("wrote %s", path.name)  # its folder may be a staging folder that is renamed away
    return path


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
