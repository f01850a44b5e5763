"""One suffix table (aaclip_med._files) for the reader, folder discovery, case names and organ/mask lookup."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from aaclip_med._files import (
    DICOM_SUFFIXES,
    INPUT_SUFFIXES,
    NIFTI_SUFFIXES,
    SITK_SUFFIXES,
    VOLUME_SUFFIXES,
    case_name,
    strip_volume_suffix,
    volume_suffix,
)
from aaclip_med.cohort import discover
from aaclip_med.errors import UnsupportedFormatError
from aaclip_med.io import read_volume
from aaclip_med.organ import read_organ_mask

PACKAGE = Path(__file__).resolve().parents[1] / "aaclip_med"


def write_image(path: Path, data: np.ndarray) -> Path:
    """Write ``data`` (x, y, z) with 1 mm voxels in the format its suffix names (nibabel or SimpleITK)."""
    if volume_suffix(path) in NIFTI_SUFFIXES:
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    else:
        sitk = pytest.importorskip("SimpleITK")
        sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0))), str(path))
    return path


def test_tables_compose() -> None:
    assert VOLUME_SUFFIXES == (*NIFTI_SUFFIXES, *SITK_SUFFIXES)
    assert INPUT_SUFFIXES == (*VOLUME_SUFFIXES, *DICOM_SUFFIXES)
    assert ".nhdr" in VOLUME_SUFFIXES and "" not in INPUT_SUFFIXES  # "" would make endswith() match any name


@pytest.mark.parametrize(
    ("name", "suffix", "stem"),
    [
        ("Case_01.NII.GZ", ".nii.gz", "Case_01"),
        ("a.b.nii", ".nii", "a.b"),
        ("scan.nhdr", ".nhdr", "scan"),
        ("IM0001", "", "IM0001"),
        ("study.zip", ".zip", "study"),
        ("x.ima", ".ima", "x"),
        (".nii.gz", ".nii.gz", ".nii.gz"),  # nothing left: the name is kept
        ("notes.txt", ".txt", "notes.txt"),
    ],
)
def test_suffix_and_stem(name: str, suffix: str, stem: str) -> None:
    assert volume_suffix(name) == suffix
    assert strip_volume_suffix(name) == stem
    assert case_name(Path("data") / name) == stem


def test_every_reader_suffix_is_found_by_discovery_and_organ_lookup(tmp_path: Path) -> None:
    """Each suffix read_volume dispatches on is a case for discovery and a structure for --organ."""
    data = np.zeros((4, 5, 3), np.float32)
    data[1:3, 2:4, 1] = 1.0
    root = tmp_path / "data"
    root.mkdir()
    expected = {}
    for i, suffix in enumerate(VOLUME_SUFFIXES):
        path = write_image(root / f"case{i}{suffix}", data)
        vol = read_volume(path)  # the reader takes it ...
        np.testing.assert_array_equal(vol.data, data)
        expected[f"case{i}"] = path
        organs = tmp_path / f"organs{i}"
        organs.mkdir()
        write_image(organs / f"liver{suffix}", data)
        found = read_organ_mask(organs, vol, organ="liver")  # ... and so does the organ lookup
        assert found.source == str(organs) and int(found.mask.sum()) == 4
    cases = {c.case_id: c.image for c in discover(root)}  # ... and so does folder discovery
    assert cases == expected


def test_unknown_suffix_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scan.vtk"
    path.write_bytes(b"# vtk DataFile Version 3.0\n")
    with pytest.raises(UnsupportedFormatError, match=r"Unsupported file type '\.vtk'"):
        read_volume(path)


def test_suffix_tables_live_in_one_module() -> None:
    """No module but _files.py spells an image suffix as a literal (a second table would drift again)."""
    literal = re.compile(r"""["'](\.nii\.gz|\.nii|\.nrrd|\.nhdr|\.mha|\.mhd|\.dcm|\.dicom|\.ima)["']""")
    offenders = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "_files.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if literal.search(line)
    ]
    assert offenders == []
