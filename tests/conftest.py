"""Shared fixtures: synthetic NIfTI and DICOM inputs built in tmp dirs, and the real-data folder."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

# Models built with backend "auto" run the plain PyTorch engine in tests (an OpenVINO conversion per tiny model
# would cost seconds each); tests/model/test_backends.py asks for each backend explicitly. A CI job may export
# AACLIP_MED_BACKEND=openvino (or AACLIP_MED_PRECISION=bf16) to run the whole suite on another path.
os.environ.setdefault("AACLIP_MED_BACKEND", "eager")


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Caches (OpenVINO models, the attention probe's choices) go to a session tmp dir, never ~/.cache.

    Set for subprocesses too (CLI and notebook tests inherit the environment); tests that check a cache set
    their own folder on top of it.
    """
    patch = pytest.MonkeyPatch()
    folder = tmp_path_factory.mktemp("aaclip_med_cache")
    patch.setenv("AACLIP_MED_CACHE_DIR", str(folder))
    yield folder
    patch.undo()


CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
PYDICOM_TEST_FILES = Path(__import__("pydicom").data.__file__).parent / "test_files"


def rotation(z_deg: float = 20.0, x_deg: float = 15.0) -> np.ndarray:
    """An oblique rotation: columns are the row direction, column direction and normal (LPS)."""
    a, b = np.deg2rad(z_deg), np.deg2rad(x_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


@dataclass
class SeriesSpec:
    """What a synthetic series was built from, for checks (positions sorted along the normal)."""

    folder: Path
    files: list[Path]  # in true k order
    rows: int
    cols: int
    row_dir: np.ndarray
    col_dir: np.ndarray
    normal: np.ndarray
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    slice_spacing: float
    ipps: list[np.ndarray]
    hu: np.ndarray  # (n, rows, cols) expected values after rescale
    series_uid: str
    extra: dict[str, object] = field(default_factory=dict)


def base_dataset(sop_class: str, modality: str, series_uid: str, study_uid: str) -> FileDataset:
    """A FileDataset with file meta, patient/study/series modules and PHI to check it stays out of meta."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-12345"
    ds.PatientBirthDate = "19700101"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "A1"
    ds.FrameOfReferenceUID = generate_uid()
    return ds


def set_pixels(ds: Dataset, stored: np.ndarray) -> None:
    """Attach int16 pixel data (frames, rows, cols) or (rows, cols)."""
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = stored.astype("<i2").tobytes()


def build_series(
    folder: Path,
    *,
    n: int = 5,
    rows: int = 7,
    cols: int = 9,
    pixel_spacing: tuple[float, float] = (0.7, 1.3),
    slice_spacing: float = 2.5,
    rot: np.ndarray | None = None,
    origin: tuple[float, float, float] = (-40.0, 25.0, 100.0),
    modality: str = "CT",
    series_number: int = 3,
    description: str = "oblique test",
    positions: list[float] | None = None,
    seed: int = 0,
    suffix: str = ".dcm",
    study_uid: str | None = None,
) -> SeriesSpec:
    """Write a single-frame series with shuffled file names and shuffled InstanceNumbers.

    Stored value of pixel (r, c) of slice k is ``k*100 + r*10 + c``; slope 2 and intercept -1024 give HU.
    """
    rng = random.Random(seed)
    rot = rotation() if rot is None else rot
    row_dir, col_dir, normal = rot[:, 0], rot[:, 1], rot[:, 2]
    positions = [k * slice_spacing for k in range(n)] if positions is None else positions
    series_uid, study_uid = generate_uid(), study_uid or generate_uid()
    frame_of_reference = generate_uid()  # one patient coordinate system for the whole series, as scanners write
    folder.mkdir(parents=True, exist_ok=True)
    instance_numbers = list(range(1, len(positions) + 1))
    rng.shuffle(instance_numbers)
    files, ipps, hu = [], [], []
    for k, d in enumerate(positions):
        ds = base_dataset(CT_IMAGE if modality == "CT" else MR_IMAGE, modality, series_uid, study_uid)
        ds.FrameOfReferenceUID = frame_of_reference
        ipp = np.asarray(origin) + d * normal
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [str(pixel_spacing[0]), str(pixel_spacing[1])]
        ds.SliceThickness = str(slice_spacing)
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.InstanceNumber = instance_numbers[k]
        ds.RescaleSlope, ds.RescaleIntercept = "2", "-1024"
        stored = k * 100 + np.arange(rows)[:, None] * 10 + np.arange(cols)[None, :]
        set_pixels(ds, stored)
        path = folder / f"{rng.getrandbits(40):010x}{suffix}"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        ipps.append(np.array([float(v) for v in ds.ImagePositionPatient]))
        hu.append(stored * 2.0 - 1024)
    return SeriesSpec(
        folder,
        files,
        rows,
        cols,
        row_dir,
        col_dir,
        normal,
        pixel_spacing,
        slice_spacing,
        ipps,
        np.asarray(hu, np.float32),
        series_uid,
    )


def build_enhanced(path: Path, *, n: int = 4, rows: int = 6, cols: int = 8, seed: int = 1) -> SeriesSpec:
    """An Enhanced CT multi-frame object whose frames are stored in shuffled position order."""
    rot = rotation(10.0, -20.0)
    row_dir, col_dir, normal = rot[:, 0], rot[:, 1], rot[:, 2]
    order = list(range(n))
    random.Random(seed).shuffle(order)
    ds = base_dataset(ENHANCED_CT, "CT", generate_uid(), generate_uid())
    ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = 7, "enhanced", 1
    ds.NumberOfFrames = n
    shared = Dataset()
    orient, measures, transform = Dataset(), Dataset(), Dataset()
    orient.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_dir, *col_dir)]
    measures.PixelSpacing, measures.SliceThickness = ["0.8", "1.1"], "3.0"
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = "1", "-1000", "HU"
    shared.PlaneOrientationSequence = [orient]
    shared.PixelMeasuresSequence = [measures]
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame, frames = [], []
    origin = np.array([10.0, -20.0, 30.0])
    for k in order:  # frame f holds true slice k
        item, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = [f"{v:.6f}" for v in origin + 3.0 * k * normal]
        item.PlanePositionSequence = [pos]
        per_frame.append(item)
        frames.append(k * 100 + np.arange(rows)[:, None] * 10 + np.arange(cols)[None, :])
    ds.PerFrameFunctionalGroupsSequence = per_frame
    set_pixels(ds, np.asarray(frames))
    ds.save_as(path, enforce_file_format=True)
    hu = np.asarray([k * 100 + np.arange(rows)[:, None] * 10 + np.arange(cols)[None, :] - 1000 for k in range(n)])
    ipps = [origin + 3.0 * k * normal for k in range(n)]
    return SeriesSpec(
        path.parent,
        [path] * n,
        rows,
        cols,
        row_dir,
        col_dir,
        normal,
        (0.8, 1.1),
        3.0,
        ipps,
        hu.astype(np.float32),
        str(ds.SeriesInstanceUID),
    )


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root (or of root itself), to prove inputs are not modified."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture
def dicom_series(tmp_path: Path) -> SeriesSpec:
    """5 slices of 7x9, non-square spacing, oblique orientation, shuffled names and InstanceNumbers."""
    return build_series(tmp_path / "series")


@pytest.fixture
def nifti_path(tmp_path: Path) -> Path:
    """A 16x32x32 MR-like NIfTI (LPS-stored like BRATS) with a bright cubic lesion."""
    rng = np.random.default_rng(0)
    data = rng.normal(100, 5, (32, 32, 16)).astype(np.float32)
    data[12:18, 14:20, 6:10] = 400
    affine = np.diag([-1.0, -1.2, 2.0, 1.0])
    affine[:3, 3] = (30.0, 40.0, -10.0)
    path = tmp_path / "synthetic.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The real-data folder ../shared next to the project; skips when absent."""
    root = Path(__file__).resolve().parents[1] / ".." / "shared"
    if not (root / "data").is_dir():
        pytest.skip(f"real data folder {root / 'data'} is absent (only on the development machine)")
    return root.resolve()


@pytest.fixture
def testdata():
    """Path to one of pydicom's bundled test files (never downloaded); skips when absent."""

    def get(name: str) -> Path:
        path = PYDICOM_TEST_FILES / name
        if not path.is_file():
            pytest.skip(f"pydicom test file {name} is not bundled in this installation")
        return path

    return get
