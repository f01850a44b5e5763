"""read_volume for NIfTI/NRRD/MHA, write_nifti on the source grid, describe_volume and bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from aaclip_med.errors import ConfigError, DicomSeriesError, GeometryError, UnsupportedFormatError
from aaclip_med.io import describe_volume, load_source_datasets, read_volume, write_nifti
from tests.conftest import SeriesSpec, file_hashes, rotation

OBLIQUE = np.eye(4)
OBLIQUE[:3, :3] = rotation() @ np.diag([-0.9, -1.1, 2.0])  # orthonormal directions: ITK refuses sheared ones
OBLIQUE[:3, 3] = (30.0, 40.0, -10.0)


def test_nifti_read(nifti_path: Path) -> None:
    before = file_hashes(nifti_path)
    vol = read_volume(nifti_path)
    img = nib.load(nifti_path)
    np.testing.assert_array_equal(vol.affine, img.affine)
    np.testing.assert_array_equal(vol.data, img.get_fdata(dtype=np.float32))
    assert vol.shape == (32, 32, 16) and vol.orientation == "LPS" and vol.spacing == pytest.approx((1, 1.2, 2))
    assert vol.modality == "MR" and vol.meta["modality_guessed"] is True and vol.meta["format"] == "nifti"
    assert read_volume(nifti_path, modality="ct").modality == "CT"
    assert file_hashes(nifti_path) == before


def test_ct_is_guessed_from_air(tmp_path: Path) -> None:
    data = np.full((20, 20, 4), -1000, np.int16)
    data[5:15, 5:15] = 40
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "ct.nii.gz")
    vol = read_volume(tmp_path / "ct.nii.gz")
    assert vol.modality == "CT" and vol.meta["modality_guessed"] and vol.data.dtype == np.float32


def test_dicom_mask_round_trip_marks_the_right_voxel(tmp_path: Path, dicom_series: SeriesSpec) -> None:
    vol = read_volume(dicom_series.folder)
    mask = np.zeros(vol.shape, bool)
    i, j, k = dicom_series.cols - 1, 0, 4  # corner: last column, first row, last slice
    mask[i, j, k] = True
    out = write_nifti(mask, tmp_path / "out" / "mask.nii.gz", like=vol)
    img = nib.load(out)
    assert img.shape == vol.shape and img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, vol.affine, atol=1e-4)
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    np.testing.assert_allclose(img.get_qform(), vol.affine, atol=1e-4)
    ((ii, jj, kk),) = np.argwhere(np.asanyarray(img.dataobj) == 1)
    lps = (
        dicom_series.ipps[kk]
        + ii * dicom_series.pixel_spacing[1] * dicom_series.row_dir
        + jj * dicom_series.pixel_spacing[0] * dicom_series.col_dir
    )
    np.testing.assert_allclose((img.affine @ [ii, jj, kk, 1])[:3], lps * [-1, -1, 1], atol=1e-4)
    assert (ii, jj, kk) == (i, j, k)
    # the pixel marked is pixel (row 0, last column) of the slice file at position k
    assert dicom_series.hu[kk][jj, ii] == vol.data[ii, jj, kk]
    assert [p.name for p in out.parent.iterdir()] == ["mask.nii.gz"]  # atomic write left no temp file


def test_write_float_map_and_reread(tmp_path: Path, nifti_path: Path) -> None:
    vol = read_volume(nifti_path)
    heat = vol.data.astype(np.float64) / 7
    out = write_nifti(heat, tmp_path / "heat.nii", like=vol)
    back = read_volume(out)
    assert nib.load(out).get_data_dtype() == np.float32
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-6)
    np.testing.assert_allclose(back.data, heat.astype(np.float32))
    with pytest.raises(GeometryError, match=r"array shape \(2, 2, 2\) differs"):
        write_nifti(np.zeros((2, 2, 2)), tmp_path / "bad.nii.gz", like=vol)


def test_nifti_2d_and_4d(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.ones((8, 9), np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    assert read_volume(tmp_path / "flat.nii.gz").shape == (8, 9, 1)
    data = np.stack([np.full((4, 5, 3), v, np.float32) for v in range(3)], axis=-1)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "four.nii.gz")
    with pytest.raises(GeometryError, match=r"4D with 3 volumes; pass volume_index=0..2"):
        read_volume(tmp_path / "four.nii.gz")
    assert read_volume(tmp_path / "four.nii.gz", volume_index=2).data.max() == 2
    with pytest.raises(GeometryError, match="volume_index=5 is out of range"):
        read_volume(tmp_path / "four.nii.gz", volume_index=5)


def test_nan_voxels_are_replaced_with_the_minimum(tmp_path: Path) -> None:
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5) + 10
    data[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.warns(UserWarning, match="1 NaN/inf voxels replaced by the volume minimum 10"):
        vol = read_volume(tmp_path / "nan.nii.gz")
    assert np.isfinite(vol.data).all() and vol.data[1, 1, 1] == 10 and len(vol.meta["warnings"]) == 1


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_sitk_formats_match_nifti_geometry(tmp_path: Path, suffix: str) -> None:
    import SimpleITK as sitk

    data = np.random.default_rng(0).normal(size=(6, 7, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, OBLIQUE), tmp_path / "ref.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "ref.nii.gz")), str(tmp_path / f"img{suffix}"))
    ref, vol = read_volume(tmp_path / "ref.nii.gz"), read_volume(tmp_path / f"img{suffix}")
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-4)
    np.testing.assert_array_equal(vol.data, ref.data)
    assert vol.meta["format"] == "sitk"


def test_describe_volume(dicom_series: SeriesSpec) -> None:
    info = describe_volume(read_volume(dicom_series.folder))
    assert info["shape"] == [9, 7, 5] and info["modality"] == "CT" and info["series_number"] == 3
    assert info["n_slices"] == 5 and info["warnings"] == [] and info["value_range"][0] == -1024
    assert "Doe" not in repr(info)


def test_bad_inputs(tmp_path: Path, nifti_path: Path) -> None:
    with pytest.raises(UnsupportedFormatError, match="does not exist"):
        read_volume(tmp_path / "nowhere.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomSeriesError, match="is empty"):
        read_volume(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UnsupportedFormatError, match=r"Unsupported file type '.txt'"):
        read_volume(tmp_path / "notes.txt")
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(nifti_path.read_bytes()[:400])
    with pytest.raises(UnsupportedFormatError, match="corrupt.nii.gz' is not a readable NIfTI"):
        read_volume(corrupt)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"garbage" * 10))
    with pytest.raises(UnsupportedFormatError, match="garbage.nii.gz"):
        read_volume(garbage)
    with pytest.raises(UnsupportedFormatError, match="not read from DICOM"):
        load_source_datasets(read_volume(nifti_path))


def test_selectors_of_the_other_format_are_refused(nifti_path: Path, dicom_series: SeriesSpec) -> None:
    with pytest.raises(ConfigError, match=r"only selects among DICOM series.*drop --series"):
        read_volume(nifti_path, series="2")
    with pytest.raises(ConfigError, match=r"only applies to 4D .*is DICOM; drop --volume-index"):
        read_volume(dicom_series.folder, volume_index=1)


def test_error_messages_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFormatError) as err:
        read_volume(tmp_path / "missing")
    assert "\n" not in str(err.value)
