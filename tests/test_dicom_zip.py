"""DICOM in zip archives: one open per read (closed also on errors), streamed headers, same volume as a folder."""

from __future__ import annotations

import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from aaclip_med.dicom_export.common import export_blocker
from aaclip_med.errors import UnsupportedFormatError
from aaclip_med.io import list_series, load_source_datasets, read_dicom_folder, read_volume
from tests.conftest import SeriesSpec, build_series

MASKS = "data/liver_3dircadb1_patient01/3Dircadb1.1/MASKS_DICOM.zip"


class _Opened:
    """Every zipfile.ZipFile made while patched in (aaclip_med.io.dicom_series looks it up at each call)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.archives: list[zipfile.ZipFile] = []
        original = zipfile.ZipFile
        opened = self.archives

        class Counting(original):  # type: ignore[misc, valid-type]
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, **kwargs)
                opened.append(self)

        monkeypatch.setattr("aaclip_med.io.dicom_series.zipfile.ZipFile", Counting)

    def take(self) -> list[zipfile.ZipFile]:
        """The archives opened since the last call; asserts they are all closed again."""
        taken, self.archives[:] = list(self.archives), []
        assert all(zf.fp is None for zf in taken), "a zip archive was left open after the read"
        return taken


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> _Opened:
    return _Opened(monkeypatch)


def _masks_zip(tmp_path: Path, compression: int = zipfile.ZIP_STORED) -> tuple[Path, SeriesSpec, SeriesSpec]:
    """A 3D-IRCADb-like archive: MASKS/<structure>/image_<k> for two structures (two series)."""
    liver = build_series(tmp_path / "liver", seed=3)
    spleen = build_series(tmp_path / "spleen", seed=4)
    archive = tmp_path / "masks.zip"
    with zipfile.ZipFile(archive, "w", compression) as zf:
        for spec, name in ((liver, "liver"), (spleen, "spleen")):
            for k, path in enumerate(spec.files):
                zf.write(path, f"MASKS/{name}/image_{k}")
    return archive, liver, spleen


def test_a_zip_is_opened_once_per_read(tmp_path: Path, opened: _Opened) -> None:
    archive, liver, _ = _masks_zip(tmp_path)
    opened.take()  # writing the archive
    vol = read_dicom_folder(archive, "liver")  # discovery + decoding of 5 members of a 10-member archive
    assert len(opened.take()) == 1
    np.testing.assert_array_equal(vol.data, read_volume(liver.folder).data)
    assert len(list_series(archive)) == 2
    assert len(opened.take()) == 1
    assert len(load_source_datasets(vol)) == len(liver.files)
    assert len(opened.take()) == 1
    assert export_blocker(vol.source_files) is None
    assert len(opened.take()) == 1
    read_volume(archive, series=liver.series_uid)
    assert len(opened.take()) == 1


def test_the_zip_is_closed_when_the_read_fails(tmp_path: Path, opened: _Opened) -> None:
    series = build_series(tmp_path / "series")
    ds = pydicom.dcmread(series.files[-1])
    ds.PixelData = ds.PixelData[:-20]  # the header reads, the decoding fails
    ds.save_as(series.files[-1])
    archive = tmp_path / "broken.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in series.files:
            zf.write(path, path.name)
    opened.take()
    with pytest.raises(UnsupportedFormatError, match=rf"broken.zip::{series.files[-1].name}"):
        read_volume(archive)
    assert len(opened.take()) == 1


def _without_preamble(path: Path, series_uid: str) -> bytes:
    """A copy in another series without preamble, DICM and file meta: readable only with pydicom's force."""
    ds = pydicom.dcmread(path)
    ds.SeriesInstanceUID = series_uid
    copy = path.parent.with_name("other.dcm")  # outside the series folder
    ds.save_as(copy, enforce_file_format=True)
    data = copy.read_bytes()
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00"  # (0002,0000) group length
    return data[144 + int.from_bytes(data[140:144], "little") :]


@pytest.mark.filterwarnings("ignore:Expected implicit VR")  # pydicom's guess for the member without file meta
def test_deflated_zip_equals_the_folder(tmp_path: Path, opened: _Opened) -> None:
    """Headers are streamed from compressed members (re-read with force when needed); same volume as the folder."""
    series = build_series(tmp_path / "series")
    other = generate_uid()
    archive = tmp_path / "deflated.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("readme.txt", "not DICOM")
        zf.writestr("other/raw", _without_preamble(series.files[0], other))
        for path in series.files:
            zf.write(path, f"s/{path.name}")
    opened.take()
    found = {s["series_uid"]: s["n_files"] for s in list_series(archive)}
    assert found == {series.series_uid: len(series.files), other: 1}
    from_zip, from_folder = read_volume(archive, series=series.series_uid), read_volume(series.folder)
    assert len(opened.take()) == 2  # one per read
    assert from_zip.data.dtype == np.float32
    np.testing.assert_array_equal(from_zip.data, from_folder.data)
    np.testing.assert_array_equal(from_zip.affine, from_folder.affine)
    assert {k: v for k, v in from_zip.meta.items() if k != "dicom_input"} == {
        k: v for k, v in from_folder.meta.items() if k != "dicom_input"
    }
    assert from_zip.phi == from_folder.phi


def test_concurrent_reads_of_one_archive_keep_their_own_handles(tmp_path: Path) -> None:
    """Threads (e.g. Dask workers) reading structures of the same zip each get their own, closed handle."""
    archive, liver, spleen = _masks_zip(tmp_path, zipfile.ZIP_DEFLATED)
    names = ["liver", "spleen"] * 4
    with ThreadPoolExecutor(4) as pool:
        volumes = list(pool.map(lambda name: read_dicom_folder(archive, name), names))
    for name, vol in zip(names, volumes, strict=True):
        expected = read_volume((liver if name == "liver" else spleen).folder)
        np.testing.assert_array_equal(vol.data, expected.data)
        np.testing.assert_array_equal(vol.affine, expected.affine)


def test_ircadb_mask_structure_opens_the_zip_once(shared_dir: Path, tmp_path: Path, opened: _Opened) -> None:
    """A 3D-IRCADb MASKS_DICOM structure (129 of 2,471 members) from the zip equals the extracted folder."""
    archive = shared_dir / MASKS
    if not archive.is_file():
        pytest.skip(f"{archive} is absent")
    vol = read_dicom_folder(archive, "liver")
    assert len(opened.take()) == 1
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp_path, [m for m in zf.namelist() if "/liver/" in m])  # only this structure
    opened.take()
    extracted = read_dicom_folder(tmp_path, "liver")
    assert vol.shape == extracted.shape == (512, 512, 129)
    np.testing.assert_array_equal(vol.data, extracted.data)
    np.testing.assert_array_equal(vol.affine, extracted.affine)
    assert vol.meta["slice_positions_mm"] == extracted.meta["slice_positions_mm"]
