"""aaclip-med inside MONAI: the `ImageReader` against `read_volume`, and the dictionary transforms against ours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged, Orientationd

from aaclip_med.errors import ConfigError, DicomSeriesError, UnsupportedFormatError
from aaclip_med.io import read_volume
from aaclip_med.monai_io import AACLIPMedReader, to_volume
from aaclip_med.monai_transforms import CLIPInputd, ModelInputd, PresetForegroundd, PresetWindowd
from aaclip_med.presets import get_preset
from aaclip_med.transforms import foreground_mask, slice_transform, window
from aaclip_med.volume import Volume
from tests.conftest import SeriesSpec, build_series

# Axes of a display slice stack: rows run to posterior, columns to patient left, slices to superior
DISPLAY_AXCODES = "PLS"


def _same_as_read_volume(img: MetaTensor, vol: Volume) -> None:
    assert isinstance(img, MetaTensor) and img.dtype == torch.float32
    np.testing.assert_array_equal(img.numpy(), vol.data)
    assert img.affine.dtype == torch.float64
    np.testing.assert_array_equal(img.affine.numpy(), vol.affine)  # exact, not close
    np.testing.assert_array_equal(img.meta["original_affine"], vol.affine)
    assert img.meta["modality"] == vol.modality and img.meta["space"] == "RAS"


def test_load_image_equals_read_volume_on_an_oblique_dicom_series(dicom_series: SeriesSpec) -> None:
    img = LoadImage(reader=AACLIPMedReader())(dicom_series.folder)
    vol = read_volume(dicom_series.folder)
    _same_as_read_volume(img, vol)
    assert img.meta["series_uid"] == dicom_series.series_uid
    np.testing.assert_allclose(img.pixdim.numpy(), [1.3, 0.7, 2.5], rtol=1e-6)  # MONAI reads our spacing
    assert "PatientName" not in img.meta and "Doe^Jane" not in repr(dict(img.meta))


def test_load_image_equals_read_volume_on_nifti(nifti_path: Path) -> None:
    _same_as_read_volume(LoadImage(reader=AACLIPMedReader())(nifti_path), read_volume(nifti_path))


def test_series_selection_is_ours(tmp_path: Path) -> None:
    """Two series in one folder: MONAI's readers would merge or pick the first; ours asks, or takes `series`."""
    build_series(tmp_path / "mix", n=5, series_number=3, seed=1)
    build_series(tmp_path / "mix", n=3, series_number=4, description="other", seed=2)
    with pytest.raises(DicomSeriesError, match="series"):
        LoadImage(reader=AACLIPMedReader())(tmp_path / "mix")
    img = LoadImage(reader=AACLIPMedReader(series=4))(tmp_path / "mix")
    _same_as_read_volume(img, read_volume(tmp_path / "mix", series=4))
    assert img.shape == (9, 7, 3) and img.meta["series_number"] == 4


def test_load_imaged_orientation_gives_the_display_slices(dicom_series: SeriesSpec) -> None:
    """LoadImaged + EnsureChannelFirstd + Orientationd("PLS"): slice k is what score_volume shows the model."""
    load = Compose(
        [
            LoadImaged("image", reader=AACLIPMedReader()),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes=DISPLAY_AXCODES, labels=None),
        ]
    )
    img = load({"image": str(dicom_series.folder)})["image"]
    vol = read_volume(dicom_series.folder)
    assert img.shape == (1, 7, 9, 5)
    for k, expected in enumerate(vol.iter_slices()):
        np.testing.assert_array_equal(img[0, :, :, k].numpy(), expected)
    back = to_volume(img)
    assert back.shape == (7, 9, 5) and back.modality == "CT"
    for k, expected in enumerate(back.iter_slices()):  # the reoriented grid slices the same way
        np.testing.assert_array_equal(expected, vol.get_slice(k))


def test_reader_refuses_several_paths_and_knows_its_suffixes(tmp_path: Path, nifti_path: Path) -> None:
    reader = AACLIPMedReader()
    assert reader.verify_suffix(nifti_path) and reader.verify_suffix(tmp_path) and reader.verify_suffix("a.mha")
    assert not reader.verify_suffix("a.png") and not reader.verify_suffix([nifti_path, nifti_path])
    with pytest.raises(ConfigError, match="one study per call"):
        reader.get_data(reader.read([nifti_path, nifti_path]))
    with pytest.raises(UnsupportedFormatError, match="does not exist"):  # not MONAI's fallback readers
        LoadImaged("image", reader=reader)({"image": str(tmp_path / "absent.nii.gz")})


def test_window_and_foreground_transforms_are_ours(nifti_path: Path) -> None:
    vol = read_volume(nifti_path)
    preset = get_preset("brain_mri")
    img = LoadImage(reader=AACLIPMedReader())(nifti_path)
    out = Compose([PresetForegroundd("image", preset), PresetWindowd("image", preset)])({"image": img})
    np.testing.assert_array_equal(out["image_foreground"], foreground_mask(vol.data, preset.foreground))
    np.testing.assert_array_equal(out["image"].numpy(), window(vol.data, preset.window, preset.foreground))
    assert isinstance(out["image"], MetaTensor)
    np.testing.assert_array_equal(out["image"].affine.numpy(), vol.affine)  # meta survives
    plain = PresetWindowd("image", "ct")({"image": np.array([[-2000.0, 0.0], [300.0, 40.0]], np.float32)})
    assert isinstance(plain["image"], np.ndarray)


@pytest.mark.parametrize("preset", ["ct", "liver_ct", "brain_mri", "reference"])
def test_model_input_matches_slice_transform(nifti_path: Path, preset: str) -> None:
    slice2d = read_volume(nifti_path).get_slice(7)
    expected = slice_transform(preset, 48)(slice2d)
    for given in (slice2d, slice2d[None], torch.from_numpy(slice2d[None].copy())):
        got = ModelInputd("image", preset, 48)({"image": given})["image"]
        assert got.shape == (3, 48, 48)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="one slice"):
        ModelInputd("image", preset, 48)({"image": np.zeros((2, 4, 4))})


def test_window_then_clip_input_equals_slice_transform_for_a_fixed_window() -> None:
    """A fixed HU window is the same per slice and per volume, so window + CLIPInputd == slice_transform."""
    slice2d = np.random.default_rng(0).normal(0, 300, (30, 26)).astype(np.float32)
    chain = Compose([PresetWindowd("image", "liver_ct"), CLIPInputd("image", size=40)])
    got = chain({"image": slice2d[None]})["image"]
    torch.testing.assert_close(got, slice_transform("liver_ct", 40)(slice2d), rtol=0, atol=1e-6)


def test_real_studies_through_load_image(shared_dir: Path) -> None:
    """HCC048 (shuffled file names) and a BRATS FLAIR: MetaTensor and affine equal read_volume's."""
    data = shared_dir / "data"
    for path in (
        data / "liver_ct_hcc_tace_seg_hcc048" / "HCC048_portal_venous",
        data / "brain_brats2015_deepmedic/brats2015TrainingData/test/brats_2013_pat0001_1"
        / "Flair_subtrMeanDivStd.nii.gz",
    ):
        if not path.exists():
            pytest.skip(f"{path} is absent")
        _same_as_read_volume(LoadImage(reader=AACLIPMedReader())(path), read_volume(path))
