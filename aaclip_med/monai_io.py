"""A MONAI ``ImageReader`` over :func:`aaclip_med.io.read_volume`, so MONAI pipelines load studies as we do.

``LoadImage(reader=AACLIPMedReader())`` and ``LoadImaged(keys, reader=AACLIPMedReader())`` return a
``MetaTensor`` whose voxels and affine are exactly those of :func:`~aaclip_med.io.read_volume`: DICOM series
grouped by SeriesInstanceUID and sorted along the slice normal (not by InstanceNumber), one series chosen by
``series``, rescale applied, LPS converted to RAS, NIfTI/NRRD/MHA on their stored grid. The reading logic is
not repeated here; this module only translates a :class:`~aaclip_med.volume.Volume` into MONAI's
``(array, meta)`` pair and back (:func:`to_volume`).

Example:
    >>> from monai.transforms import LoadImaged
    >>> load = LoadImaged("image", reader=AACLIPMedReader(series=3), ensure_channel_first=True)  # doctest: +SKIP
    >>> load({"image": "study/"})["image"].affine  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from monai.data.image_reader import ImageReader
from monai.utils.enums import MetaKeys, SpaceKeys

from aaclip_med._files import INPUT_SUFFIXES, volume_suffix
from aaclip_med._typing import Array, PathLike
from aaclip_med.errors import AACLIPMedError, ConfigError
from aaclip_med.io import read_volume
from aaclip_med.volume import Volume

if TYPE_CHECKING:
    import torch

__all__ = ["AACLIPMedReader", "ReadFailure", "to_volume"]

# Volume.meta entries copied into the MetaTensor meta: plain values that MONAI's collate can batch
_META_KEYS = ("format", "series_uid", "series_number", "series_description", "dicom_input", "n_files")


def _paths(data: Sequence[PathLike] | PathLike) -> list[PathLike]:
    return [data] if isinstance(data, (str, os.PathLike)) else list(data)


class ReadFailure(NamedTuple):
    """The error :meth:`AACLIPMedReader.read` met, raised again by :meth:`AACLIPMedReader.get_data`."""

    error: AACLIPMedError


class AACLIPMedReader(ImageReader):
    """Read DICOM (file, folder, zip), NIfTI, NRRD, MHA and MHD through :func:`aaclip_med.io.read_volume`.

    Args:
        series: DICOM only: SeriesInstanceUID, SeriesNumber or SeriesDescription when a folder holds several.
        modality: Overrides the modality recorded in the meta (``"CT"``/``"MR"``).
        volume_index: Which volume of a 4D image to read.

    The meta dict holds ``affine`` and ``original_affine`` (voxel to RAS+ mm, float64, exactly the volume's),
    ``space="RAS"``, ``spatial_shape``, ``original_channel_dim="no_channel"``, ``modality``,
    ``modality_guessed``, ``slice_axis`` and the series identifiers; no patient data.
    """

    def __init__(
        self, series: str | int | None = None, modality: str | None = None, volume_index: int | None = None
    ) -> None:
        super().__init__()
        self.series = series
        self.modality = modality
        self.volume_index = volume_index

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True for one path that :func:`~aaclip_med.io.read_volume` reads: a folder or a known suffix."""
        names = _paths(filename)
        if len(names) != 1:
            return False
        path = Path(names[0])
        return path.is_dir() or volume_suffix(path) in ("", *INPUT_SUFFIXES)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Volume | ReadFailure:
        """Read one study; ``kwargs`` (``series``, ``modality``, ``volume_index``) override the constructor's.

        An error is returned as a :class:`ReadFailure` and raised by :meth:`get_data`: ``LoadImage`` catches
        errors of ``read`` and silently falls back to MONAI's own readers, which would ignore our series
        selection and ordering.
        """
        names = _paths(data)
        if len(names) != 1:
            msg = (
                f"AACLIPMedReader reads one study per call, got {len(names)} paths "
                f"({', '.join(map(str, names[:3]))}); pass one file or one DICOM folder."
            )
            return ReadFailure(ConfigError(msg))
        options = {"series": self.series, "modality": self.modality, "volume_index": self.volume_index, **kwargs}
        try:
            return read_volume(names[0], **options)
        except AACLIPMedError as err:
            return ReadFailure(err)

    def get_data(self, img: Volume | ReadFailure) -> tuple[Array, dict[str, Any]]:
        """The voxel array (I, J, K) float32 and MONAI's meta dict for a volume read by :meth:`read`.

        Raises:
            AACLIPMedError: the error :meth:`read` met (e.g. ``DicomSeriesError`` for an ambiguous folder).
        """
        if isinstance(img, ReadFailure):
            raise img.error
        meta: dict[str, Any] = {k: img.meta[k] for k in _META_KEYS if img.meta.get(k) is not None}
        meta.update(
            {
                MetaKeys.AFFINE: img.affine.copy(),
                MetaKeys.ORIGINAL_AFFINE: img.affine.copy(),
                MetaKeys.SPACE: SpaceKeys.RAS,
                MetaKeys.SPATIAL_SHAPE: np.asarray(img.shape),
                MetaKeys.ORIGINAL_CHANNEL_DIM: "no_channel",
                "modality": img.modality or "",
                "modality_guessed": bool(img.meta.get("modality_guessed", False)),
                "slice_axis": img.slice_axis,
            }
        )
        return img.data, meta


def to_volume(image: torch.Tensor | Array, source: str | None = None) -> Volume:
    """A :class:`~aaclip_med.volume.Volume` from a MONAI ``MetaTensor`` (or array plus ``affine`` in its meta).

    Takes the data as it is now (after any MONAI transforms) with its current affine, so
    :func:`~aaclip_med.inference.score_volume` and :func:`~aaclip_med.io.write_nifti` work on it. A leading
    channel of size 1 (``EnsureChannelFirst``) is dropped.

    Raises:
        GeometryError: the data is not 3D (after dropping a single channel) or the affine is not 4x4.
    """
    meta: dict[str, Any] = dict(getattr(image, "meta", {}) or {})
    affine = np.asarray(getattr(image, "affine", meta.get(MetaKeys.AFFINE, np.eye(4))), dtype=np.float64)
    data = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float32)
    if data.ndim == 4 and data.shape[0] == 1:
        data = data[0]
    name = source or str(meta.get("filename_or_obj", "MetaTensor"))
    modality = str(meta.get("modality") or "") or None
    kept = {k: meta[k] for k in (*_META_KEYS, "modality_guessed") if k in meta}
    return Volume(data, affine, modality, name, kept)
