"""DICOM outputs for PACS: a BINARY Segmentation of the anomaly mask and a Parametric Map of the heatmap.

Both are built with highdicom on the exact source grid, referencing the source images frame by frame
(DESIGN §4.3, §4.5), so viewers such as OHIF or 3D Slicer place them over the series they came from.

Array layout: our arrays are indexed ``[i, j, k]`` like ``Volume.data``, where slice ``k`` is
``pixel_array.T`` of the k-th source image (``i`` runs along columns, ``j`` along rows). A DICOM frame is
therefore ``array[:, :, k].T`` of shape ``(Rows, Columns)``. ``source_datasets`` are the datasets in ``k``
order, as :func:`aaclip_med.io.load_source_datasets` returns them (sorted by position along the slice
normal); a single multi-frame (enhanced) dataset is also accepted, its frames matched to ``k`` by position.

Patient data: a DICOM SEG or Parametric Map must belong to the same patient and study as its source images,
so highdicom copies the Patient and General Study modules from the sources; they still reference the source
study, series and instances by UID. By default (``include_phi=False``) the patient's name, ID and birth date are
then blanked (Type 2 attributes: present, empty), so no output of a run carries them; pass ``include_phi=True``
(``--include-phi``) for a SEG that a PACS files under the same patient as its source images.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypedDict

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.sr.codedict import codes

from aaclip_med import __version__
from aaclip_med._files import atomic_path
from aaclip_med._typing import PathLike
from aaclip_med.errors import GeometryError, OutputError, UnsupportedFormatError

__all__ = ["write_dicom_seg", "write_parametric_map"]

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


@contextlib.contextmanager
def _quiet_person_names() -> Iterator[None]:
    """Silence highdicom's warning about one-component patient names (common in de-identified data)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        yield


@_quiet_person_names()
def write_dicom_seg(
    mask: npt.NDArray[np.integer] | npt.NDArray[np.bool_],
    source_datasets: Sequence[pydicom.Dataset],
    path: PathLike,
    *,
    segment_label: str = "Anomaly",
    algorithm_name: str = "aaclip-med AA-CLIP",
    algorithm_version: str = __version__,
    omit_empty_frames: bool = True,
    series_number: int = 901,
    include_phi: bool = False,
) -> Path:
    """Write the mask as a BINARY DICOM Segmentation referencing the source images.

    The single segment is a "Lesion" (SCT 52988006) in the category "Morphologically Abnormal Structure"
    (SCT 49755003), found AUTOMATICally by an "Artificial Intelligence" algorithm (DCM 123110). The SEG gets new
    Series and SOP Instance UIDs, the series description "AA-CLIP anomaly mask", and copies the source's patient
    and study modules (see the module docstring). An all-empty mask is written with every frame (empty), since
    a SEG needs at least one frame. The file is written to a temporary name beside ``path`` and moved in place.

    Args:
        mask: ``(I, J, K)`` binary mask on the source grid (non-zero = anomalous).
        source_datasets: Source images in ``k`` order, or one multi-frame image with ``K`` frames.
        path: Output file (``seg.dcm``); parent folders are created.
        segment_label: Segment label (at most 64 characters).
        algorithm_name: Algorithm name recorded in the segment (at most 64 characters).
        algorithm_version: Algorithm version recorded in the segment (at most 64 characters).
        omit_empty_frames: Leave out frames without any anomalous pixel (smaller files; some old viewers
            expect every frame, monai-deploy-app-sdk#397).
        series_number: Series Number of the new SEG series.
        include_phi: Keep the patient's name, ID and birth date (else blanked; see the module docstring).

    Returns:
        The path written.

    Raises:
        UnsupportedFormatError: If a source image lacks an attribute a SEG needs.
        GeometryError: If the mask's shape does not match the source images.
        OutputError: If a label is too long, highdicom refuses the inputs, or the file cannot be written.

    Example:
        >>> write_dicom_seg(result.mask, load_source_datasets(vol), "out/seg.dcm")  # doctest: +SKIP
    """
    for name, value in (
        ("segment_label", segment_label),
        ("algorithm_name", algorithm_name),
        ("algorithm_version", algorithm_version),
    ):
        if not value or len(value) > _MAX_LO:
            msg = f"{name} {value!r} must be 1-{_MAX_LO} characters (DICOM LO); shorten it."
            raise OutputError(msg)
    sources = _with_type2(source_datasets)
    frames = _frames_in_source_order((np.asarray(mask) != 0).astype(np.uint8), sources, "mask")
    if omit_empty_frames and not frames.any():
        logger.info("mask is empty; writing all %d (empty) frames to keep the SEG valid", len(frames))
        omit_empty_frames = False
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.DCM.ArtificialIntelligence, version=algorithm_version
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=segment_label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    path = Path(path)
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[segment],
            series_instance_uid=hd.UID(),
            series_number=series_number,
            omit_empty_frames=omit_empty_frames,
            series_description="AA-CLIP anomaly mask",
            content_description="AA-CLIP anomaly mask",
            content_label="ANOMALY",
            **_common_attributes(),
        )
    except (ValueError, TypeError, AttributeError, KeyError) as err:
        msg = f"highdicom refused to build the SEG for {path}: {_one_line(err)}; check the source series."
        raise OutputError(msg) from err
    return _save(seg, path, include_phi)


@_quiet_person_names()
def write_parametric_map(
    heatmap: npt.NDArray[np.floating],
    source_datasets: Sequence[pydicom.Dataset],
    path: PathLike,
    *,
    series_number: int = 902,
    include_phi: bool = False,
) -> Path:
    """Write the raw heatmap as a float DICOM Parametric Map referencing the source images.

    Values are stored unchanged as 32-bit floats in raw AA-CLIP map units (DESIGN §0), with an identity
    real-world value mapping labelled in UCUM "no units" (``1``). Patient and study modules are copied from the
    sources, as for :func:`write_dicom_seg`.

    Args:
        heatmap: ``(I, J, K)`` float heatmap on the source grid.
        source_datasets: Source images in ``k`` order, or one multi-frame image with ``K`` frames.
        path: Output file; parent folders are created.
        series_number: Series Number of the new series.
        include_phi: Keep the patient's name, ID and birth date (else blanked; see the module docstring).

    Returns:
        The path written.

    Raises:
        UnsupportedFormatError: If a source image lacks an attribute the map needs.
        GeometryError: If the heatmap's shape does not match the source images, or it holds NaN/inf.
        OutputError: If highdicom refuses the inputs or the file cannot be written.
    """
    sources = _with_type2(source_datasets)
    frames = _frames_in_source_order(np.asarray(heatmap, dtype=np.float32), sources, "heatmap")
    if not np.isfinite(frames).all():
        msg = "Heatmap holds NaN or infinite values; a Parametric Map needs finite values (check the model)."
        raise GeometryError(msg)
    lo, hi = float(frames.min()), float(frames.max())
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="AACLIP_MAP",
        lut_explanation="Raw AA-CLIP anomaly map (sum over levels)",
        unit=codes.UCUM.NoUnits,
        value_range=(lo, hi),
        slope=1.0,
        intercept=0.0,
    )
    path = Path(path)
    try:
        pmap = hd.pm.ParametricMap(
            source_images=sources,
            pixel_array=frames,
            series_instance_uid=hd.UID(),
            series_number=series_number,
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[
                hd.VOILUTTransformation(window_center=(lo + hi) / 2.0, window_width=max(hi - lo, 1e-6))
            ],
            content_label="ANOMALY_MAP",
            content_description="AA-CLIP anomaly heatmap",
            series_description="AA-CLIP anomaly heatmap",
            **_common_attributes(),
        )
    except (ValueError, TypeError, AttributeError, KeyError) as err:
        msg = f"highdicom refused to build the Parametric Map for {path}: {_one_line(err)}; check the series."
        raise OutputError(msg) from err
    if "Laterality" not in pmap:
        # General Series Laterality is Type 2C here (the map has no Frame Anatomy): copy it, or leave it empty
        # ("unknown"), which dciodvfy accepts with a warning where an absent attribute is an error.
        pmap.Laterality = sources[0].get("Laterality", "")
    return _save(pmap, path, include_phi)


def _frames_in_source_order(
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


class _CommonAttributes(TypedDict):
    """Keyword arguments shared by the highdicom SEG and Parametric Map constructors."""

    sop_instance_uid: hd.UID
    instance_number: int
    contributing_equipment: list[hd.ContributingEquipment]
    manufacturer: str
    manufacturer_model_name: str
    software_versions: str
    device_serial_number: str


def _common_attributes() -> _CommonAttributes:
    """Keyword arguments shared by the SEG and the Parametric Map: new instance, who made it."""
    return {
        "sop_instance_uid": hd.UID(),
        "instance_number": 1,
        "contributing_equipment": [_EQUIPMENT],
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": _MODEL_NAME,
        "software_versions": _SOFTWARE,
        "device_serial_number": "0",  # software, no physical device
    }


def _with_type2(datasets: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
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


def _check_attributes(sources: list[pydicom.Dataset]) -> None:
    multi_frame = len(sources) == 1 and int(getattr(sources[0], "NumberOfFrames", 1) or 1) > 1
    required = _REQUIRED if multi_frame else _REQUIRED + _REQUIRED_SINGLE_FRAME
    for index, ds in enumerate(sources):
        missing = [name for name in required if name not in ds]
        if missing:
            where = getattr(ds, "filename", None) or f"source image {index}"
            msg = (
                f"{where} lacks {', '.join(missing)}, which a DICOM SEG/Parametric Map needs; "
                "export NIfTI instead or fix the series."
            )
            raise UnsupportedFormatError(msg)


def _save(dataset: pydicom.Dataset, path: Path, include_phi: bool) -> Path:
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
    logger.info("wrote %s", path)
    return path


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
