"""Names in paths (issue 14, item 6): no output byte holds the input's file or folder names unless asked.

File and folder names often hold a patient's name or ID. Every output file of `run`, `batch` and `eval` is scanned
(gzip members decompressed) for the names used in the input paths and the DICOM patient tags.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from aaclip_med.cli import app
from aaclip_med.privacy import Naming
from tests.conftest import build_series

TINY = ["--model", "aaclip-tiny", "--backbone-weights", "random", "--image-size", "64", "--no-progress"]
NAMES = (b"DoeJane", b"PID12345", b"Doe^Jane", b"PID-12345")  # in paths (first two) and DICOM tags (last two)
runner = CliRunner()


def _leaks(root: Path) -> list[str]:
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data += gzip.decompress(data)
        found += [f"{path.relative_to(root)}: {n.decode()}" for n in NAMES if n in data]
    return found


@pytest.fixture
def patient_folder(tmp_path: Path) -> Path:
    """A folder named after a patient, holding a NIfTI named after them, its mask and a DICOM series."""
    folder = tmp_path / "DoeJane_PID12345"
    folder.mkdir()
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.random((24, 24, 3), dtype=np.float32) * 100, np.eye(4)),
             folder / "DoeJane_PID12345.nii.gz")  # fmt: skip
    mask = np.zeros((24, 24, 3), "u1")
    mask[8:12, 8:12, 1] = 1
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "mask_DoeJane.nii.gz")
    build_series(folder / "PID12345_ct", rows=20, cols=20, n=3)  # PatientName Doe^Jane, PatientID PID-12345
    return folder


def _ok(args: list[str]) -> None:
    result = runner.invoke(app, ["-q", *args])
    assert result.exit_code == 0, result.output


def test_no_output_byte_names_the_patient(patient_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    _ok(["run", str(patient_folder / "DoeJane_PID12345.nii.gz"), *TINY, "-o", str(out / "run_nifti")])
    _ok(["run", str(patient_folder / "PID12345_ct"), *TINY, "--fractional-seg", "-o", str(out / "run_dicom")])
    _ok(["batch", str(patient_folder), *TINY, "-o", str(out / "batch")])
    labels = tmp_path / "mask_DoeJane.nii.gz"
    _ok(["eval", str(out / "run_nifti"), "--labels", str(labels), "-o", str(out / "eval")])
    assert _leaks(out) == []
    run = json.loads((out / "run_nifti" / "run.json").read_text())
    assert run["case_id"].startswith("case-") and run["inputs"][0]["path"].startswith("sha256:")
    cases = (out / "batch" / "cases.csv").read_text()
    assert cases.count("case-") == 2  # the NIfTI and the DICOM series, named by hashes


def test_names_kept_when_asked_and_paths_relative_to_base_dir(patient_folder: Path, tmp_path: Path) -> None:
    image = patient_folder / "DoeJane_PID12345.nii.gz"
    _ok(["run", str(image), *TINY, "--keep-names", "-o", str(tmp_path / "named")])
    assert any("DoeJane" in leak for leak in _leaks(tmp_path / "named"))  # the scan would see a leak
    _ok(["run", str(image), *TINY, "--base-dir", str(patient_folder), "--case-id", "study 1", "-o",
         str(tmp_path / "based")])  # fmt: skip
    run = json.loads((tmp_path / "based" / "run.json").read_text())
    assert run["case_id"] == "study 1" and run["inputs"][0]["path"] == "DoeJane_PID12345.nii.gz"


def test_naming_rule() -> None:
    rule = Naming()
    assert rule.path("/a/Doe/x.nii") == rule.path("/a/Doe/x.nii") != rule.path("/a/Roe/x.nii")  # stable hashes
    assert rule.case_id("k", "Doe") == rule.case_id("k", "Roe") != rule.case_id("j", "Doe")
    assert rule.scrub("'/a/Doe/x.nii' is odd", ["/a/Doe/x.nii"]) == f"'{rule.path('/a/Doe/x.nii')}' is odd"
    kept = Naming(keep_names=True)
    assert kept.path("/a/Doe/x.nii") == "/a/Doe/x.nii" and kept.case_id("k", "Doe") == "Doe"
