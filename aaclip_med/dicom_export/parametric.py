"""DICOM Parametric Map of the raw heatmap (32-bit float, identity real-world value mapping)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.sr.codedict import codes

from aaclip_med._typing import PathLike
from aaclip_med.dicom_export.common import (
    build,
    common_attributes,
    frames_in_source_order,
    quiet_person_names,
    save,
    with_type2,
)
from aaclip_med.errors import GeometryError

__all__ = ["write_parametric_map"]


@quiet_person_names()
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
    sources, as for :func:`~aaclip_med.dicom_export.write_dicom_seg`.

    Args:
        heatmap: ``(I, J, K)`` float heatmap on the source grid.
        source_datasets: Source images in ``k`` order, or one multi-frame image with ``K`` frames.
        path: Output file; parent folders are created.
        series_number: Series Number of the new series.
        include_phi: Keep the patient's name, ID and birth date (else blanked; see the package docstring).

    Returns:
        The path written.

    Raises:
        UnsupportedFormatError: If a source image lacks an attribute the map needs.
        GeometryError: If the heatmap's shape does not match the source images, or it holds NaN/inf.
        OutputError: If highdicom refuses the inputs or the file cannot be written.
    """
    sources = with_type2(source_datasets)
    frames = frames_in_source_order(np.asarray(heatmap, dtype=np.float32), sources, "heatmap")
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
    pmap = build(
        lambda: hd.pm.ParametricMap(
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
            **common_attributes(),
        ),
        "Parametric Map",
        path,
    )
    if "Laterality" not in pmap:
        # General Series Laterality is Type 2C here (the map has no Frame Anatomy): copy it, or leave it empty
        # ("unknown"), which dciodvfy accepts with a warning where an absent attribute is an error.
        pmap.Laterality = sources[0].get("Laterality", "")
    return save(pmap, path, include_phi)
