"""Reading volumes onto their source grid, and writing NIfTI maps back on it.

``read_volume`` never resamples: the returned :class:`~aaclip_med.volume.Volume` keeps the stored voxel grid and
its exact affine, so ``write_nifti(mask, path, like=volume)`` overlays the input voxel for voxel in any viewer.
Inputs are never modified.

Modules:

- :mod:`~aaclip_med.io.read`: :func:`read_volume` (routes by suffix), :func:`read_dicom_folder`,
  :func:`describe_volume`, :func:`load_source_datasets`, :func:`guess_modality`;
- :mod:`~aaclip_med.io.image_file`: NIfTI (read, :func:`write_nifti`) and NRRD/NHDR, MHA/MHD through SimpleITK;
- :mod:`~aaclip_med.io.dicom_series`: DICOM discovery (files, folders, zips, DICOMDIR), series grouping and
  selection, :func:`list_series`;
- :mod:`~aaclip_med.io.dicom_decode`: pixel decoding, the modality LUT (pydicom) and the slice geometry.

Example:
    >>> from aaclip_med.io import read_volume, write_nifti
    >>> vol = read_volume("study/")  # doctest: +SKIP
    >>> write_nifti(vol.data > 100, "bright.nii.gz", like=vol)  # doctest: +SKIP
"""

from __future__ import annotations

from aaclip_med.io.dicom_series import list_series
from aaclip_med.io.image_file import write_nifti
from aaclip_med.io.read import (
    describe_volume,
    guess_modality,
    load_source_datasets,
    read_dicom_folder,
    read_volume,
)

__all__ = [
    "describe_volume",
    "guess_modality",
    "list_series",
    "load_source_datasets",
    "read_dicom_folder",
    "read_volume",
    "write_nifti",
]
