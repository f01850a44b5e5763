"""DICOM outputs for PACS: Segmentations of the anomaly mask (BINARY) and heatmap (FRACTIONAL), a Parametric Map.

All are built with highdicom on the exact source grid, referencing the source images frame by frame
(DESIGN §4.3, §4.5), so viewers such as OHIF or 3D Slicer place them over the series they came from.
:mod:`~aaclip_med.dicom_export.seg` writes the SEGs, :mod:`~aaclip_med.dicom_export.parametric` the map, and
:mod:`~aaclip_med.dicom_export.common` holds what they share.

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

from aaclip_med.dicom_export.common import MANUFACTURER, export_blocker
from aaclip_med.dicom_export.parametric import write_parametric_map
from aaclip_med.dicom_export.seg import (
    heatmap_probability,
    probability_rule,
    write_dicom_seg,
    write_fractional_seg,
)

__all__ = [
    "MANUFACTURER",
    "export_blocker",
    "heatmap_probability",
    "probability_rule",
    "write_dicom_seg",
    "write_fractional_seg",
    "write_parametric_map",
]
