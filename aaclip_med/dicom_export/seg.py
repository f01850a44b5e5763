"""DICOM Segmentations: the anomaly mask (BINARY) and the heatmap as an anomaly probability (FRACTIONAL).

Both hold one segment, a "Lesion" (SCT 52988006) in the category "Morphologically Abnormal Structure"
(SCT 49755003), found AUTOMATICally by an "Artificial Intelligence" algorithm (DCM 123110), and reference the
source images frame by frame (see :mod:`aaclip_med.dicom_export` for the layout and the patient-data rules).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.sr.codedict import codes

from aaclip_med._typing import PathLike
from aaclip_med._version import __version__
from aaclip_med.dicom_export.common import (
    build,
    check_lo,
    common_attributes,
    frames_in_source_order,
    quiet_person_names,
    save,
    with_type2,
)
from aaclip_med.errors import GeometryError

__all__ = ["heatmap_probability", "probability_rule", "write_dicom_seg", "write_fractional_seg"]

logger = logging.getLogger(__name__)

_ALGORITHM_NAME = "aaclip-med AA-CLIP"
MAX_FRACTIONAL_VALUE = 255  # 8-bit FRACTIONAL SEG: stored value = round(255 * probability)


def heatmap_probability(heatmap: npt.ArrayLike, n_levels: int = 4) -> npt.NDArray[np.float32]:
    """Map the raw AA-CLIP heatmap to an anomaly probability in [0, 1]: ``clip(heatmap / n_levels, 0, 1)``.

    The heatmap is the sum over ``n_levels`` levels of ``50·(s_abn − s_nor) + 0.5`` (DESIGN §0), so
    ``heatmap / n_levels`` is the level mean of the reference code's anomaly map: 0.5 where the abnormal and
    normal anchors are equally close (the default threshold, ``0.5·n_levels``), rising linearly by 0.5 per 0.01
    of cosine-similarity difference. Values outside [0, 1] are clipped, so the probability saturates where the
    anchors differ by more than 0.01 on average. Voxels the model did not score hold the lowest scored value minus
    1 (the "not scored" rule, DESIGN §0), so they get the lowest probability of the volume and never outrank a
    scored voxel.

    Args:
        heatmap: Raw heatmap in DESIGN §0 units.
        n_levels: Number of levels summed into the heatmap (``len(model.layout.taps)``, 4 for AA-CLIP).

    Returns:
        float32 probabilities, same shape.

    Raises:
        GeometryError: If ``n_levels`` is not positive or the heatmap holds NaN or infinite values.
    """
    if n_levels < 1:
        msg = f"n_levels={n_levels} must be >= 1 (the number of levels summed into the heatmap)."
        raise GeometryError(msg)
    values = np.asarray(heatmap, dtype=np.float32)
    if not np.isfinite(values).all():
        msg = "Heatmap holds NaN or infinite values; a FRACTIONAL SEG needs finite values (check the model)."
        raise GeometryError(msg)
    probabilities: npt.NDArray[np.float32] = np.clip(values / np.float32(n_levels), 0.0, 1.0)
    return probabilities


def probability_rule(n_levels: int = 4) -> str:
    """The mapping of :func:`heatmap_probability` in words, as recorded in the FRACTIONAL SEG (ASCII)."""
    return (
        f"Anomaly probability = clip(heatmap / {n_levels}, 0, 1), where heatmap is the raw AA-CLIP map: the sum "
        f"over {n_levels} levels of 50*(s_abn - s_nor) + 0.5 (cosine similarities to the abnormal and normal "
        "text anchors). 0.5 = both anchors equally close; voxels not scored (empty slices, outside the body) hold "
        "the lowest scored value minus 1, so their probability is the volume's lowest. "
        f"Stored as round({MAX_FRACTIONAL_VALUE} * probability)."
    )


@quiet_person_names()
def write_dicom_seg(
    mask: npt.NDArray[np.integer] | npt.NDArray[np.bool_],
    source_datasets: Sequence[pydicom.Dataset],
    path: PathLike,
    *,
    segment_label: str = "Anomaly",
    algorithm_name: str = _ALGORITHM_NAME,
    algorithm_version: str = __version__,
    omit_empty_frames: bool = True,
    series_number: int = 901,
    include_phi: bool = False,
) -> Path:
    """Write the mask as a BINARY DICOM Segmentation referencing the source images.

    The SEG gets new Series and SOP Instance UIDs, the series description "AA-CLIP anomaly mask", and copies the
    source's patient and study modules (see the package docstring). An all-empty mask is written with every
    frame (empty), since a SEG needs at least one frame. The file is written to a temporary name beside
    ``path`` and moved in place.

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
        include_phi: Keep the patient's name, ID and birth date (else blanked; see the package docstring).

    Returns:
        The path written.

    Raises:
        UnsupportedFormatError: If a source image lacks an attribute a SEG needs.
        GeometryError: If the mask's shape does not match the source images.
        OutputError: If a label is too long, highdicom refuses the inputs, or the file cannot be written.

    Example:
        >>> write_dicom_seg(result.mask, load_source_datasets(vol), "out/seg.dcm")  # doctest: +SKIP
    """
    return _write_segmentation(
        (np.asarray(mask) != 0).astype(np.uint8),
        source_datasets,
        Path(path),
        fractional=False,
        description="AA-CLIP anomaly mask",
        content_description="AA-CLIP anomaly mask",
        content_label="ANOMALY",
        segment_text=None,
        segment_label=segment_label,
        algorithm_name=algorithm_name,
        algorithm_version=algorithm_version,
        omit_empty_frames=omit_empty_frames,
        series_number=series_number,
        include_phi=include_phi,
    )


@quiet_person_names()
def write_fractional_seg(
    heatmap: npt.NDArray[np.floating],
    source_datasets: Sequence[pydicom.Dataset],
    path: PathLike,
    *,
    n_levels: int = 4,
    segment_label: str = "Anomaly probability",
    algorithm_name: str = _ALGORITHM_NAME,
    algorithm_version: str = __version__,
    omit_empty_frames: bool = True,
    series_number: int = 903,
    include_phi: bool = False,
) -> Path:
    """Write the heatmap as a FRACTIONAL (PROBABILITY) DICOM Segmentation referencing the source images.

    The raw heatmap is mapped to [0, 1] by :func:`heatmap_probability` (``clip(heatmap / n_levels, 0, 1)``) and
    stored as 8-bit values ``round(255 · probability)`` (Maximum Fractional Value 255), so a reader's rescaled
    value is within 1/510 of the probability. The rule is recorded in the segment's Segment Description and,
    short, in the Content Description; the series description is "AA-CLIP anomaly probability". Everything else
    (segment codes, algorithm identification, source references, patient data, atomic write) is as for
    :func:`write_dicom_seg`.

    Args:
        heatmap: ``(I, J, K)`` raw heatmap on the source grid (DESIGN §0 units; unscored voxels lowest).
        source_datasets: Source images in ``k`` order, or one multi-frame image with ``K`` frames.
        path: Output file (``heatmap_seg.dcm``); parent folders are created.
        n_levels: Number of levels summed into the heatmap (``len(model.layout.taps)``).
        segment_label: Segment label (at most 64 characters).
        algorithm_name: Algorithm name recorded in the segment (at most 64 characters).
        algorithm_version: Algorithm version recorded in the segment (at most 64 characters).
        omit_empty_frames: Leave out frames whose probability is 0 everywhere (e.g. skipped slices).
        series_number: Series Number of the new SEG series.
        include_phi: Keep the patient's name, ID and birth date (else blanked; see the package docstring).

    Returns:
        The path written.

    Raises:
        UnsupportedFormatError: If a source image lacks an attribute a SEG needs.
        GeometryError: If the heatmap's shape does not match the sources, or it holds NaN/inf.
        OutputError: If a label is too long, highdicom refuses the inputs, or the file cannot be written.
    """
    return _write_segmentation(
        heatmap_probability(heatmap, n_levels),
        source_datasets,
        Path(path),
        fractional=True,
        description="AA-CLIP anomaly probability",
        content_description=f"AA-CLIP heatmap/{n_levels} clipped to [0,1]",
        content_label="ANOMALY_PROB",
        segment_text=probability_rule(n_levels),
        segment_label=segment_label,
        algorithm_name=algorithm_name,
        algorithm_version=algorithm_version,
        omit_empty_frames=omit_empty_frames,
        series_number=series_number,
        include_phi=include_phi,
    )


def _write_segmentation(
    array: npt.NDArray[np.uint8] | npt.NDArray[np.float32],
    source_datasets: Sequence[pydicom.Dataset],
    path: Path,
    *,
    fractional: bool,
    description: str,
    content_description: str,
    content_label: str,
    segment_text: str | None,
    segment_label: str,
    algorithm_name: str,
    algorithm_version: str,
    omit_empty_frames: bool,
    series_number: int,
    include_phi: bool,
) -> Path:
    """Build and save a one-segment SEG of ``array`` (uint8 0/1 for BINARY, float32 in [0, 1] for FRACTIONAL)."""
    check_lo(segment_label=segment_label, algorithm_name=algorithm_name, algorithm_version=algorithm_version)
    what = "FRACTIONAL SEG" if fractional else "SEG"
    sources = with_type2(source_datasets)
    frames = frames_in_source_order(array, sources, "heatmap" if fractional else "mask")
    if omit_empty_frames and not frames.any():
        logger.info("%s is empty; writing all %d (empty) frames to keep it valid", what, len(frames))
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
    if segment_text is not None:
        segment.SegmentDescription = segment_text  # ST, up to 1024 characters
    seg = build(
        lambda: hd.seg.Segmentation(
            source_images=sources,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL
            if fractional
            else hd.seg.SegmentationTypeValues.BINARY,
            fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,  # FRACTIONAL only
            max_fractional_value=MAX_FRACTIONAL_VALUE,  # FRACTIONAL only
            segment_descriptions=[segment],
            series_instance_uid=hd.UID(),
            series_number=series_number,
            omit_empty_frames=omit_empty_frames,
            series_description=description,
            content_description=content_description,
            content_label=content_label,
            **common_attributes(),
        ),
        what,
        path,
    )
    return save(seg, path, include_phi)
