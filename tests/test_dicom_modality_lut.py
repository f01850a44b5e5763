"""Stored values to modality units through pydicom's apply_modality_lut: rescale, LUT, per-frame groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from aaclip_med.errors import UnsupportedFormatError
from aaclip_med.io import read_volume
from tests.conftest import build_enhanced, build_series


def one_slice(tmp_path: Path) -> tuple[Path, pydicom.Dataset]:
    spec = build_series(tmp_path / "s", n=1)
    return spec.files[0], pydicom.dcmread(spec.files[0])


def test_modality_lut_sequence_is_applied(tmp_path: Path) -> None:
    path, ds = one_slice(tmp_path)
    del ds.RescaleSlope, ds.RescaleIntercept
    first, entries = 10, 50  # stored values run 0..86: below 10 -> entry 0, above 59 -> the last entry
    lut = Dataset()
    lut.LUTDescriptor = [entries, first, 16]
    lut.add_new("LUTData", "US", [3 * i + 5 for i in range(entries)])
    lut.ModalityLUTType = "HU"
    ds.ModalityLUTSequence = [lut]
    ds.save_as(path, enforce_file_format=True)
    vol = read_volume(path)
    stored = ds.pixel_array.T.astype(np.int64)
    expected = 3 * np.clip(stored - first, 0, entries - 1) + 5
    assert vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data[:, :, 0], expected)


def test_per_frame_rescale_of_an_enhanced_object(tmp_path: Path) -> None:
    path = tmp_path / "enhanced.dcm"
    build_enhanced(path)
    ds = pydicom.dcmread(path)
    del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = str(f + 1), "-1000", "HU"
        item.PixelValueTransformationSequence = [transform]
    ds.save_as(path, enforce_file_format=True)
    vol = read_volume(path)
    for f, frame in enumerate(ds.pixel_array):
        k = int(frame[0, 0]) // 100  # build_enhanced stores true slice k as k*100 + r*10 + c, frames shuffled
        np.testing.assert_array_equal(vol.data[:, :, k], frame.T * (f + 1) - 1000.0)


@pytest.mark.parametrize(("slope", "intercept", "offset"), [(None, "-1024", -1024), ("0", "-1024", -1024),
                                                          ("2", None, 0)])  # fmt: skip
def test_broken_rescale_counts_as_identity_for_the_missing_part(
    tmp_path: Path, slope: str | None, intercept: str | None, offset: int
) -> None:
    path, ds = one_slice(tmp_path)
    ds.add_new("RescaleSlope", "DS", slope)
    ds.add_new("RescaleIntercept", "DS", intercept)
    ds.save_as(path, enforce_file_format=True)
    factor = float(slope) if slope and float(slope) else 1.0
    np.testing.assert_array_equal(read_volume(path).data[:, :, 0], ds.pixel_array.T * factor + offset)


def test_unusable_lut_is_a_format_error(tmp_path: Path) -> None:
    path, ds = one_slice(tmp_path)
    del ds.RescaleSlope, ds.RescaleIntercept
    lut = Dataset()
    lut.add_new("LUTData", "US", [1, 2, 3])  # no LUTDescriptor
    ds.ModalityLUTSequence = [lut]
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(UnsupportedFormatError, match="unusable Modality LUT"):
        read_volume(path)
