"""DICOM SEG / Parametric Map export: frames reference the right source images and carry array[:, :, k].T."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from aaclip_med.dicom_export import (
    heatmap_probability,
    write_dicom_seg,
    write_fractional_seg,
    write_parametric_map,
)
from aaclip_med.errors import GeometryError, OutputError, UnsupportedFormatError
from aaclip_med.io import load_source_datasets, read_volume

ROWS, COLS, N_SLICES = 12, 16, 6
ROW_COS = np.array([np.cos(0.3), np.sin(0.3), 0.0])  # oblique: rotated 0.3 rad about the z axis
COL_COS = np.array([-np.sin(0.3) * np.cos(0.2), np.cos(0.3) * np.cos(0.2), -np.sin(0.2)])
NORMAL = np.cross(ROW_COS, COL_COS)


def _ct_slice(index: int, study: str, series: str, frame_of_ref: str) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Patient", "P001", "19700101", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_ref
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", "A1"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 3, index + 1
    ds.Manufacturer, ds.PositionReferenceIndicator = "synthetic", ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.KVP, ds.AcquisitionNumber = "120", 1
    ds.ImageOrientationPatient = [*ROW_COS.round(6).tolist(), *COL_COS.round(6).tolist()]
    ds.ImagePositionPatient = (np.array([-10.0, -20.0, 30.0]) + 2.5 * index * NORMAL).round(4).tolist()
    ds.PixelSpacing, ds.SliceThickness = [0.8, 0.6], "2.5"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = ROWS, COLS, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.PixelData = (np.arange(ROWS * COLS, dtype=np.int16).reshape(ROWS, COLS) + 10 * index).tobytes()
    return ds


def _sorted_by_position(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    return sorted(datasets, key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, float), NORMAL)))


@pytest.fixture
def series(tmp_path: Path) -> list[pydicom.Dataset]:
    """A 6-slice oblique CT series written under shuffled names, read back in k (position) order."""
    study, ser, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
    folder = tmp_path / "ct"
    folder.mkdir()
    names = [f"IM{n:03d}.dcm" for n in random.Random(1).sample(range(100), N_SLICES)]
    for index, name in enumerate(names):
        _ct_slice(index, study, ser, frame_of_ref).save_as(folder / name, enforce_file_format=True)
    return _sorted_by_position([pydicom.dcmread(p) for p in sorted(folder.iterdir())])


def _block_mask() -> np.ndarray:
    mask = np.zeros((COLS, ROWS, N_SLICES), np.uint8)
    mask[3:9, 2:5, 2:4] = 1  # i (columns) 3-8, j (rows) 2-4, slices 2 and 3
    mask[0, 0, 2] = 1  # a corner voxel tells a transposed frame from the right one
    return mask


def _legacy_enhanced(series: list[pydicom.Dataset]) -> pydicom.Dataset:
    """One multi-frame CT built from the series in reverse, so stored frame order != k order."""
    return hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=series[::-1],
        series_instance_uid=generate_uid(),
        series_number=4,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )


def test_include_phi_keeps_patient_identity(series, tmp_path: Path) -> None:
    seg = hd.seg.segread(write_dicom_seg(_block_mask(), series, tmp_path / "seg.dcm", include_phi=True))
    assert (seg.PatientID, str(seg.PatientName)) == ("P001", "Test^Patient")


def test_seg_frames_reference_sources_and_hold_transposed_slices(series, tmp_path: Path) -> None:
    mask = _block_mask()
    out = write_dicom_seg(mask, series, tmp_path / "out" / "seg.dcm")
    seg = hd.seg.segread(out)
    assert seg.SeriesDescription == "AA-CLIP anomaly mask"
    assert seg.Manufacturer == "aaclip-med"
    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == series[0].StudyInstanceUID
    assert (seg.PatientID, str(seg.PatientName), seg.PatientBirthDate) == ("", "", "")  # no PHI by default
    assert series[0].PatientID == "P001"  # sources untouched
    assert seg.SeriesInstanceUID != series[0].SeriesInstanceUID
    desc = seg.get_segment_description(1)
    assert desc.segment_label == "Anomaly"
    assert desc.segmented_property_type == hd.sr.CodedConcept.from_code(pydicom.sr.codedict.codes.SCT.Lesion)
    assert seg.NumberOfFrames == 2  # empty frames omitted
    by_uid = {ds.SOPInstanceUID: k for k, ds in enumerate(series)}
    for frame_item, pixels in zip(seg.PerFrameFunctionalGroupsSequence, seg.pixel_array, strict=True):
        uid = frame_item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = by_uid[uid]
        np.testing.assert_array_equal(pixels, mask[:, :, k].T)
    stacked = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in series], segment_numbers=[1])
    np.testing.assert_array_equal(stacked[..., 0], np.transpose(mask, (2, 1, 0)))
    assert not list(out.parent.glob(".*tmp"))  # atomic write left no temporary file


def test_seg_of_empty_mask_is_valid(series, tmp_path: Path) -> None:
    out = write_dicom_seg(np.zeros((COLS, ROWS, N_SLICES), np.uint8), series, tmp_path / "seg.dcm")
    seg = hd.seg.segread(out)
    assert seg.NumberOfFrames == N_SLICES
    assert not seg.pixel_array.any()


def test_seg_from_multiframe_source_matches_frames_by_position(series, tmp_path: Path) -> None:
    enhanced = _legacy_enhanced(series)
    mask = _block_mask()
    out = write_dicom_seg(mask, [enhanced], tmp_path / "seg.dcm", omit_empty_frames=False)
    seg = hd.seg.segread(out)
    positions = [
        np.array(f.PlanePositionSequence[0].ImagePositionPatient, float) @ NORMAL
        for f in enhanced.PerFrameFunctionalGroupsSequence
    ]
    stored = seg.get_pixels_by_source_frame(
        enhanced.SOPInstanceUID, list(range(1, N_SLICES + 1)), segment_numbers=[1]
    )[..., 0]
    for frame, k in enumerate(np.argsort(np.argsort(positions))):
        np.testing.assert_array_equal(stored[frame], mask[:, :, k].T)


def test_single_file_input(series, tmp_path: Path) -> None:
    mask = np.zeros((COLS, ROWS, 1), np.uint8)
    mask[1:4, 5:7, 0] = 1
    out = write_dicom_seg(mask, series[:1], tmp_path / "seg.dcm")
    np.testing.assert_array_equal(hd.seg.segread(out).pixel_array, mask[:, :, 0].T)


def test_wrong_shape_and_missing_geometry_raise(series, tmp_path: Path) -> None:
    with pytest.raises(GeometryError, match="Columns, Rows"):
        write_dicom_seg(np.zeros((ROWS, COLS, N_SLICES), np.uint8), series, tmp_path / "seg.dcm")
    broken = [pydicom.Dataset(ds) for ds in series]
    del broken[2].FrameOfReferenceUID
    with pytest.raises(UnsupportedFormatError, match="FrameOfReferenceUID"):
        write_dicom_seg(_block_mask(), broken, tmp_path / "seg.dcm")
    with pytest.raises(OutputError, match="64"):
        write_dicom_seg(_block_mask(), series, tmp_path / "seg.dcm", segment_label="x" * 65)
    assert not (tmp_path / "seg.dcm").exists()


def test_parametric_map_round_trip(series, tmp_path: Path) -> None:
    heat = np.random.default_rng(0).normal(1.0, 0.5, (COLS, ROWS, N_SLICES)).astype(np.float32)
    out = write_parametric_map(heat, series, tmp_path / "pm.dcm")
    pmap = pydicom.dcmread(out)
    assert pmap.Manufacturer == "aaclip-med"
    by_uid = {ds.SOPInstanceUID: k for k, ds in enumerate(series)}
    for frame_item, pixels in zip(pmap.PerFrameFunctionalGroupsSequence, pmap.pixel_array, strict=True):
        uid = frame_item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_array_equal(pixels, heat[:, :, by_uid[uid]].T)


def _heatmap() -> np.ndarray:
    """Raw heatmap spanning below 0 and above 4 (both clipped), with slice 1 skipped (all 0)."""
    heat = np.linspace(-1.0, 5.0, COLS * ROWS * N_SLICES, dtype=np.float32).reshape(COLS, ROWS, N_SLICES)
    heat[:, :, 1] = 0.0
    return heat


def test_heatmap_probability_rule() -> None:
    heat = np.array([-3.0, 0.0, 1.0, 2.0, 4.0, 9.0], np.float32)
    np.testing.assert_allclose(heatmap_probability(heat, 4), [0.0, 0.0, 0.25, 0.5, 1.0, 1.0])
    with pytest.raises(GeometryError, match="NaN"):
        heatmap_probability(np.array([np.nan]))
    with pytest.raises(GeometryError, match="n_levels"):
        heatmap_probability(heat, 0)


def test_fractional_seg_holds_probability_on_source_instances_in_position_order(series, tmp_path: Path) -> None:
    heat = _heatmap()
    seg = hd.seg.segread(write_fractional_seg(heat, series, tmp_path / "heatmap_seg.dcm"))
    assert (seg.SegmentationType, seg.SegmentationFractionalType) == ("FRACTIONAL", "PROBABILITY")
    assert seg.MaximumFractionalValue == 255 and seg.SeriesDescription == "AA-CLIP anomaly probability"
    assert (seg.PatientID, str(seg.PatientName), seg.PatientBirthDate) == ("", "", "")  # no PHI by default
    item = seg.SegmentSequence[0]
    assert "clip(heatmap / 4, 0, 1)" in item.SegmentDescription
    assert item.SegmentAlgorithmType == "AUTOMATIC" and item.SegmentAlgorithmName == "aaclip-med AA-CLIP"
    expected = np.clip(heat / 4.0, 0.0, 1.0)
    by_uid = {ds.SOPInstanceUID: k for k, ds in enumerate(series)}
    ks = []
    for frame_item, stored in zip(seg.PerFrameFunctionalGroupsSequence, seg.pixel_array, strict=True):
        k = by_uid[frame_item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        ks.append(k)
        position = frame_item.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(np.array(position, float), np.array(series[k].ImagePositionPatient, float))
        np.testing.assert_allclose(stored / 255.0, expected[:, :, k].T, atol=1 / 255)
    # frames run monotonically along the slice normal (highdicom picks the direction); slice 1 was skipped
    # (heatmap 0), so its empty frame is omitted
    assert ks in ([0, 2, 3, 4, 5], [5, 4, 3, 2, 0])
    stacked = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in series], segment_numbers=[1])
    np.testing.assert_allclose(stacked[..., 0], np.transpose(expected, (2, 1, 0)), atol=1 / 255)


def test_fractional_seg_refuses_bad_heatmaps(series, tmp_path: Path) -> None:
    heat = _heatmap()
    heat[0, 0, 0] = np.inf
    with pytest.raises(GeometryError, match="infinite"):
        write_fractional_seg(heat, series, tmp_path / "f.dcm")
    with pytest.raises(GeometryError, match="Columns, Rows"):
        write_fractional_seg(np.zeros((ROWS, COLS, N_SLICES), np.float32), series, tmp_path / "f.dcm")
    assert not (tmp_path / "f.dcm").exists()


def test_seg_of_volume_read_by_io_lands_on_its_source_slices(series, tmp_path: Path) -> None:
    folder = Path(series[0].filename).parent
    vol = read_volume(folder)
    datasets = load_source_datasets(vol)
    for k, ds in enumerate(datasets):  # the CONTRACTS layout: data[:, :, k] == pixel_array.T of the k-th file
        np.testing.assert_allclose(vol.data[:, :, k], ds.pixel_array.T.astype(np.float32) - 1024.0)
    mask = (vol.data > vol.data.mean()).astype(np.uint8)
    seg = hd.seg.segread(write_dicom_seg(mask, datasets, tmp_path / "seg.dcm", omit_empty_frames=False))
    stacked = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in datasets], segment_numbers=[1])
    np.testing.assert_array_equal(stacked[..., 0], np.transpose(mask, (2, 1, 0)))


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy missing (apt-get install dicom3tools)")
def test_dciodvfy_reports_no_errors(series, tmp_path: Path) -> None:
    empty = np.zeros((COLS, ROWS, N_SLICES), np.uint8)
    heat = np.linspace(-1.0, 3.0, COLS * ROWS * N_SLICES, dtype=np.float32).reshape(COLS, ROWS, N_SLICES)
    outputs = [
        write_dicom_seg(_block_mask(), series, tmp_path / "seg.dcm"),
        write_dicom_seg(empty, series, tmp_path / "empty.dcm"),
        write_dicom_seg(_block_mask(), [_legacy_enhanced(series)], tmp_path / "multiframe.dcm"),
        write_parametric_map(heat, series, tmp_path / "pm.dcm"),
        write_fractional_seg(_heatmap(), series, tmp_path / "fractional.dcm"),
        write_fractional_seg(_heatmap(), [_legacy_enhanced(series)], tmp_path / "fractional_multiframe.dcm"),
    ]
    for out in outputs:
        result = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True, check=False)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{out.name}: " + "; ".join(errors)
