"""Real studies from ../shared/data (skipped when absent): ordering, HU, shared grids and NIfTI round trips."""

from __future__ import annotations

import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from aaclip_med.io import read_volume, write_nifti
from tests.conftest import file_hashes


def _existing(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


def _extract(archive: Path, dest: Path, prefix: str) -> Path:
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(dest, members=[m for m in zf.namelist() if m.startswith(prefix)])
    return dest / prefix


@pytest.fixture(scope="module")
def ircad(shared_dir: Path) -> Path:
    return _existing(shared_dir / "data" / "liver_3dircadb1_patient01" / "3Dircadb1.1")


def test_hcc048_shuffled_names_sorted_by_position(shared_dir: Path) -> None:
    folder = _existing(shared_dir / "data" / "liver_ct_hcc_tace_seg_hcc048" / "HCC048_portal_venous")
    before = file_hashes(folder)
    vol = read_volume(folder)
    positions = vol.meta["slice_positions_mm"]
    assert vol.shape == (512, 512, 16) and vol.modality == "CT"
    assert positions[0] == pytest.approx(-268.5) and positions[-1] == pytest.approx(-231.0)
    assert np.all(np.diff(positions) > 0)
    assert np.all(np.diff([(vol.affine @ [0, 0, k, 1])[2] for k in range(16)]) > 0)  # k goes superior
    assert -3024 <= vol.data.min() <= -1000 and vol.data.max() > 100
    names = [Path(f).name for f in vol.source_files]
    assert names != sorted(names)  # the file names are deliberately out of z order
    assert vol.meta["warnings"] == [] and file_hashes(folder) == before


def test_ircad_ct_and_liver_mask_share_a_grid(ircad: Path, tmp_path: Path) -> None:
    ct = read_volume(_extract(ircad / "PATIENT_DICOM.zip", tmp_path, "PATIENT_DICOM/"))
    liver = read_volume(_extract(ircad / "MASKS_DICOM.zip", tmp_path, "MASKS_DICOM/liver/"))
    assert ct.shape == (512, 512, 129) == liver.shape
    np.testing.assert_allclose(ct.affine, liver.affine, atol=1e-4)
    assert ct.data.min() >= -3024 and ct.data.max() > 100
    assert 0 < (liver.data > 0).mean() < 0.2
    assert float(ct.data[liver.data > 0].mean()) > 0  # the mask covers soft tissue, not air


def test_ircad_zip_read_directly(ircad: Path, tmp_path: Path) -> None:
    archive = ircad / "PATIENT_DICOM.zip"
    before = file_hashes(archive)
    vol = read_volume(archive)
    folder = read_volume(_extract(archive, tmp_path, "PATIENT_DICOM/"))
    assert vol.shape == folder.shape == (512, 512, 129)
    np.testing.assert_array_equal(vol.data, folder.data)
    assert vol.source_files[0].startswith(f"{archive}::PATIENT_DICOM/")
    assert file_hashes(archive) == before


@pytest.mark.parametrize(
    "relative",
    [
        "brain_brats2015_deepmedic/brats2015TrainingData/test/brats_2013_pat0001_1/Flair_subtrMeanDivStd.nii.gz",
        "brain_tcga_lgg_brainles_pseudo_gt/TCGA-DU-7294/TCGA-DU-7294_brainles/raw_bet/TCGA-DU-7294_fla_bet.nii.gz",
    ],
    ids=["brats", "tcga"],
)
def test_nifti_affine_round_trip(shared_dir: Path, tmp_path: Path, relative: str) -> None:
    path = _existing(shared_dir / "data" / relative)
    vol = read_volume(path)
    assert vol.shape == (240, 240, 155) and vol.modality == "MR" and vol.slice_axis == 2
    slices = list(vol.iter_slices())
    from aaclip_med.volume import stack_slices

    np.testing.assert_array_equal(stack_slices(slices, like=vol), vol.data)
    out = write_nifti(vol.data > vol.data.mean(), tmp_path / "mask.nii.gz", like=vol)
    back = nib.load(out)
    np.testing.assert_allclose(back.affine, nib.load(path).affine, atol=1e-4)
    assert back.shape == vol.shape
