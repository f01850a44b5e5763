"""DICOM reading: grouping, sorting, geometry, multi-frame, DICOMDIR, zip, compression and bad input."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

from aaclip_med.errors import DicomSeriesError, UnsupportedFormatError
from aaclip_med.io import list_series, load_source_datasets, read_volume
from tests.conftest import SeriesSpec, build_enhanced, build_series, file_hashes

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def check_against_spec(vol, spec: SeriesSpec) -> None:
    n = len(spec.ipps)
    assert vol.shape == (spec.cols, spec.rows, n)
    for k in range(n):  # data[i=col, j=row, k] equals the rescaled pixel (row, col) of slice k
        np.testing.assert_array_equal(vol.data[:, :, k], spec.hu[k].T)
    for i, j, k in [(0, 0, 0), (spec.cols - 1, spec.rows - 1, n - 1), (3, 2, 1)]:
        lps = spec.ipps[k] + i * spec.pixel_spacing[1] * spec.row_dir + j * spec.pixel_spacing[0] * spec.col_dir
        np.testing.assert_allclose(vol.affine @ [i, j, k, 1], [*(LPS_TO_RAS @ lps), 1], atol=1e-4)
    np.testing.assert_allclose(
        vol.spacing, (spec.pixel_spacing[1], spec.pixel_spacing[0], spec.slice_spacing), atol=1e-5
    )


def test_shuffled_oblique_series(dicom_series: SeriesSpec) -> None:
    before = file_hashes(dicom_series.folder)
    vol = read_volume(dicom_series.folder)
    check_against_spec(vol, dicom_series)
    assert vol.modality == "CT" and vol.meta["format"] == "dicom"
    assert vol.source_files == tuple(str(p) for p in dicom_series.files)
    positions = vol.meta["slice_positions_mm"]
    assert positions == sorted(positions)
    assert vol.meta["warnings"] == []
    assert file_hashes(dicom_series.folder) == before


def test_phi_kept_out_of_meta(dicom_series: SeriesSpec) -> None:
    vol = read_volume(dicom_series.folder)
    assert vol.phi == {"PatientName": "Doe^Jane", "PatientID": "PID-12345", "PatientBirthDate": "19700101"}
    text = repr(dict(vol.meta))
    assert "Doe" not in text and "PID-12345" not in text and "19700101" not in text


def test_files_without_extension_in_nested_folders(tmp_path: Path) -> None:
    spec = build_series(tmp_path / "study" / "a" / "b", suffix="")
    (tmp_path / "study" / "README.txt").write_text("not dicom")
    check_against_spec(read_volume(tmp_path / "study"), spec)


def test_single_file_is_one_slice(dicom_series: SeriesSpec) -> None:
    vol = read_volume(dicom_series.files[2])
    assert vol.shape == (dicom_series.cols, dicom_series.rows, 1)
    np.testing.assert_allclose(vol.affine[:3, 3], LPS_TO_RAS @ dicom_series.ipps[2], atol=1e-4)


def test_two_series_need_a_selector(tmp_path: Path) -> None:
    a = build_series(tmp_path / "mix", series_number=3, description="arterial", seed=1)
    b = build_series(tmp_path / "mix", series_number=4, description="portal venous", seed=2, n=3, modality="MR")
    with pytest.raises(DicomSeriesError, match="holds 2 series") as err:
        read_volume(tmp_path / "mix")
    assert a.series_uid in str(err.value) and "portal venous" in str(err.value) and "\n" not in str(err.value)
    assert read_volume(tmp_path / "mix", series=a.series_uid).shape[2] == 5
    assert read_volume(tmp_path / "mix", series=4).modality == "MR"
    assert read_volume(tmp_path / "mix", series="Portal Venous").shape[2] == 3
    with pytest.raises(DicomSeriesError, match="did you mean 'portal venous'"):
        read_volume(tmp_path / "mix", series="portal venus")
    listed = list_series(tmp_path / "mix")
    assert [(s["series_number"], s["n_slices"]) for s in listed] == [(3, 5), (4, 3)]
    assert b.series_uid in {s["series_uid"] for s in listed}


def test_enhanced_multiframe(tmp_path: Path) -> None:
    spec = build_enhanced(tmp_path / "enhanced.dcm")
    vol = read_volume(spec.files[0])
    check_against_spec(vol, spec)
    assert vol.meta["sop_class"] == "Enhanced CT Image Storage"
    assert len(load_source_datasets(vol)) == 1


def test_dicomdir(tmp_path: Path, dicom_series: SeriesSpec) -> None:
    from pydicom.fileset import FileSet

    fs = FileSet()
    for path in dicom_series.files:
        fs.add(pydicom.dcmread(path))
    fs.write(tmp_path / "media")
    vol = read_volume(tmp_path / "media" / "DICOMDIR")
    assert vol.meta["dicom_input"] == "dicomdir"
    np.testing.assert_array_equal(vol.data, read_volume(dicom_series.folder).data)
    assert read_volume(tmp_path / "media").shape == vol.shape  # the folder holding the DICOMDIR works too


def test_zip(tmp_path: Path, dicom_series: SeriesSpec) -> None:
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in dicom_series.files:
            zf.write(path, f"inner/{path.name}")
    before = file_hashes(archive)
    vol = read_volume(archive)
    check_against_spec(vol, dicom_series)
    assert all(ref.startswith(f"{archive}::inner/") for ref in vol.source_files)
    datasets = load_source_datasets(vol)
    assert [ds.SOPInstanceUID for ds in datasets] == [
        pydicom.dcmread(p).SOPInstanceUID for p in dicom_series.files
    ]
    assert file_hashes(archive) == before


def test_warnings_missing_duplicate_unequal(tmp_path: Path) -> None:
    build_series(tmp_path / "gap", positions=[0, 2.5, 5, 10, 12.5])
    with pytest.warns(UserWarning, match="missing slices"):
        vol = read_volume(tmp_path / "gap")
    assert any("missing" in w for w in vol.meta["warnings"])
    spec = build_series(tmp_path / "dup", n=4)
    shutil.copy(spec.files[1], tmp_path / "dup" / "copy_of_one.dcm")
    with pytest.warns(UserWarning, match="share a position"):
        assert read_volume(tmp_path / "dup").shape[2] == 4
    build_series(tmp_path / "uneq", positions=[0, 2.5, 5.0, 7.0, 9.5])
    with pytest.warns(UserWarning, match="unequal slice spacing"):
        read_volume(tmp_path / "uneq")


def test_rescale_ct_small_in_hu(testdata) -> None:
    ds = pydicom.dcmread(testdata("CT_small.dcm"))
    vol = read_volume(testdata("CT_small.dcm"))
    expected = ds.pixel_array.T * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(vol.data[:, :, 0], expected)
    assert vol.modality == "CT"


@pytest.mark.parametrize(
    "name", ["JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "MR_small_jpeg_ls_lossless.dcm"]
)
@pytest.mark.filterwarnings("ignore:.*identity geometry assumed")
def test_compressed_transfer_syntaxes(testdata, name: str) -> None:
    vol = read_volume(testdata(name))
    assert vol.data.ndim == 3 and vol.data.shape[2] == 1 and np.isfinite(vol.data).all()
    assert vol.data.max() > vol.data.min()


def test_missing_plugin_names_the_package(testdata, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self):
        raise RuntimeError("Unable to decode the pixel data")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(fail))
    with pytest.raises(UnsupportedFormatError, match="pylibjpeg-openjpeg"):
        read_volume(testdata("JPEG2000.dcm"))


def test_structured_report_is_rejected(testdata, tmp_path: Path, dicom_series: SeriesSpec) -> None:
    with pytest.raises(UnsupportedFormatError, match=r"SR object .*not an image"):
        read_volume(testdata("test-SR.dcm"))
    only_sr = tmp_path / "sr"
    only_sr.mkdir()
    shutil.copy(testdata("test-SR.dcm"), only_sr / "report.dcm")
    with pytest.raises(DicomSeriesError, match="no image series"):
        read_volume(only_sr)
    shutil.copy(testdata("test-SR.dcm"), dicom_series.folder / "report.dcm")
    assert read_volume(dicom_series.folder).shape[2] == 5  # the SR beside a series is set aside


def test_truncated_pixel_data(tmp_path: Path, dicom_series: SeriesSpec) -> None:
    ds = pydicom.dcmread(dicom_series.files[0])
    ds.PixelData = ds.PixelData[:-20]
    bad = tmp_path / "short.dcm"
    ds.save_as(bad)
    with pytest.raises(UnsupportedFormatError, match="short.dcm"):
        read_volume(bad)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(dicom_series.files[0].read_bytes()[:-40])
    with pytest.raises(UnsupportedFormatError, match="cut.dcm"):
        read_volume(cut)


def test_non_dicom_named_dcm(tmp_path: Path) -> None:
    fake = tmp_path / "fake.dcm"
    fake.write_text("hello, I am not DICOM")
    with pytest.raises(UnsupportedFormatError, match=r"fake.dcm' is not a DICOM file"):
        read_volume(fake)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.dcm").write_text("nope")
    with pytest.raises(DicomSeriesError, match="No DICOM files found"):
        read_volume(folder)
