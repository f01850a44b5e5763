"""Oracle: SimpleITK's ImageSeriesReader (GDCM) reads the shared DICOM series to the same voxels and geometry.

Both readers are brought to one frame before comparing: the array and its RAS affine are reoriented to the
closest canonical (RAS+) axis order, so a reader that stacks the slices the other way round still compares equal
when it means the same world positions. Spacing, origin and direction are compared through the affine (1e-4 mm).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from aaclip_med.io import read_volume

sitk = pytest.importorskip("SimpleITK", reason="SimpleITK is the oracle of this test")

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
HCC048 = "data/liver_ct_hcc_tace_seg_hcc048/HCC048_portal_venous"
IRCADB = "data/liver_3dircadb1_patient01/3Dircadb1.1/PATIENT_DICOM.zip"


def sitk_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The one series of ``folder`` through ImageSeriesReader: array (x, y, z) and its RAS affine."""
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    assert len(ids) == 1, f"{folder} holds {len(ids)} series"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))
    image = reader.Execute()
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), LPS_TO_RAS @ lps


def canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Array and affine in the closest RAS+ axis order (a world-consistent frame for both readers)."""
    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data, np.float32), affine))
    return np.asarray(img.dataobj), np.asarray(img.affine)


def check_against_sitk(source: Path, folder: Path) -> None:
    vol = read_volume(source)
    ours, ours_affine = canonical(vol.data, vol.affine)
    theirs, theirs_affine = canonical(*sitk_series(folder))
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours_affine, theirs_affine, rtol=0, atol=1e-4)  # spacing, direction, origin (mm)
    np.testing.assert_array_equal(ours, theirs)  # HU voxel for voxel (both apply the rescale)
    assert float(np.abs(ours).max()) > 100  # a real CT, not two empty arrays


def test_hcc048_matches_sitk(shared_dir: Path) -> None:
    folder = shared_dir / HCC048
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (the HCC048 DICOM series of ../shared/data)")
    check_against_sitk(folder, folder)


def test_ircadb_zip_matches_sitk(shared_dir: Path, tmp_path: Path) -> None:
    archive = shared_dir / IRCADB
    if not archive.is_file():
        pytest.skip(f"{archive} is absent (the 3D-IRCADb-01 patient 1 CT of ../shared/data)")
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp_path)  # SimpleITK reads folders only; we read the zip itself
    check_against_sitk(archive, tmp_path / "PATIENT_DICOM")
