"""Dataset converters (datasets/prepare_*.py) on tiny synthetic layouts, and 3D-IRCADb patient 1 when present."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from aaclip_med.errors import ManifestError
from aaclip_med.manifest import read_manifest

DATASETS = Path(__file__).resolve().parents[1] / "datasets"
sys.path.insert(0, str(DATASETS))


def _module(name: str):
    return importlib.import_module(name)


def _nii(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.0, 1.0])), path)
    return path


def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def test_bmad_both_mask_folder_names(tmp_path: Path) -> None:
    root = tmp_path / "Brain_AD"
    _png(root / "test/good/img/00003_60.png")
    _png(root / "test/Ungood/img/00002_71.png", 200)
    _png(root / "test/Ungood/label/00002_71.png", 255)
    _png(root / "test/Ungood/img/00009_80.png", 200)
    _png(root / "test/Ungood/anomaly_mask/00009_80.png", 255)
    out = _module("prepare_bmad").main([str(root), "-o", str(tmp_path / "out" / "bmad.csv")])
    cases = {c.case_id: c for c in read_manifest(out)}
    assert sorted(cases) == ["test_Ungood_00002_71", "test_Ungood_00009_80", "test_good_00003_60"]
    assert cases["test_Ungood_00009_80"].mask.parent.name == "anomaly_mask"
    assert cases["test_good_00003_60"].label == 0 and cases["test_good_00003_60"].preset == "brain_mri"
    (root / "test/Ungood/anomaly_mask/00009_80.png").unlink()
    with pytest.raises(ManifestError, match="no mask"):
        _module("prepare_bmad").bmad_cases(root)


def test_brats_folders(tmp_path: Path) -> None:
    root = tmp_path / "BraTS"
    vol = np.zeros((6, 6, 4), np.float32)
    for cid in ("BraTS_001", "BraTS_002"):
        for kind in ("flair", "t1", "seg"):
            _nii(root / "train" / cid / f"{cid}_{kind}.nii.gz", vol)
    _nii(root / "train" / "BraTS_003" / "BraTS_003_flair.nii.gz", vol)  # no segmentation: no mask
    out = _module("prepare_brats").main([str(root), "-o", str(tmp_path / "brats.csv")])
    cases = read_manifest(out)
    assert [c.case_id for c in cases] == ["BraTS_001", "BraTS_002", "BraTS_003"]
    assert cases[0].image.name == "BraTS_001_flair.nii.gz" and cases[0].mask.name == "BraTS_001_seg.nii.gz"
    assert cases[2].mask is None and {c.split for c in cases} == {"train"}


def test_lits_lesion_masks_written_beside_manifest(tmp_path: Path) -> None:
    root = tmp_path / "LiTS"
    seg = np.zeros((6, 6, 4), np.uint8)
    seg[1:5, 1:5] = 1
    seg[2:3, 2:3, 1] = 2
    _nii(root / "volume-0.nii", np.zeros((6, 6, 4), np.float32))
    _nii(root / "segmentation-0.nii", seg)
    before = sorted(p.name for p in root.iterdir())
    out = _module("prepare_lits").main([str(root), "-o", str(tmp_path / "work" / "lits.csv")])
    (case,) = read_manifest(out)
    assert case.case_id == "lits_000" and case.preset == "liver_ct"
    mask = nib.load(str(case.mask))
    assert int(np.asarray(mask.dataobj).sum()) == 1 and np.allclose(mask.affine, np.diag([0.8, 0.8, 2.0, 1.0]))
    assert sorted(p.name for p in root.iterdir()) == before
    with pytest.raises(ManifestError, match="inside the input"):
        _module("prepare_lits").main([str(root), "-o", str(root / "x.csv")])


def test_msd_liver_and_brain_channel(tmp_path: Path) -> None:
    liver = tmp_path / "Task03_Liver"
    seg = np.zeros((6, 6, 4), np.uint8)
    seg[1:4, 1:4] = 1
    seg[2, 2, 2] = 2
    _nii(liver / "imagesTr/liver_0.nii.gz", np.zeros((6, 6, 4), np.float32))
    _nii(liver / "labelsTr/liver_0.nii.gz", seg)
    (liver / "dataset.json").write_text(json.dumps({"name": "Liver", "labels": {"0": "background", "1": "liver",
                                        "2": "cancer"}, "training": [{"image": "./imagesTr/liver_0.nii.gz",
                                                                      "label": "./labelsTr/liver_0.nii.gz"}]}))
    (case,) = read_manifest(_module("prepare_msd").main([str(liver), "-o", str(tmp_path / "l" / "m.csv")]))
    assert case.preset == "liver_ct" and int(np.asarray(nib.load(str(case.mask)).dataobj).sum()) == 1
    brain = tmp_path / "Task01_BrainTumour"
    img = np.stack([np.full((6, 6, 4), c, np.float32) for c in range(4)], axis=-1)
    _nii(brain / "imagesTr/BRATS_001.nii.gz", img)
    _nii(brain / "labelsTr/BRATS_001.nii.gz", seg)
    (brain / "dataset.json").write_text(json.dumps({"name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w"},
                                        "labels": {"0": "background", "1": "edema", "2": "enhancing"},
                                        "training": [{"image": "./imagesTr/BRATS_001.nii.gz",
                                                      "label": "./labelsTr/BRATS_001.nii.gz"}]}))
    (case,) = read_manifest(_module("prepare_msd").main([str(brain), "-o", str(tmp_path / "b" / "m.csv"),
                                                        "--channel", "2"]))
    data = np.asarray(nib.load(str(case.image)).dataobj)
    assert data.shape == (6, 6, 4) and float(data.max()) == 2.0 and case.preset == "brain_mri"
    assert int(np.asarray(nib.load(str(case.mask)).dataobj).sum()) == int((seg > 0).sum())


@pytest.mark.slow  # reads the 129-slice CT and 7 tumour mask series (~20 s)
def test_ircadb_patient01(shared_dir: Path, tmp_path: Path) -> None:
    src = shared_dir / "data" / "liver_3dircadb1_patient01" / "3Dircadb1.1"
    if not src.is_dir():
        pytest.skip(f"{src} is absent")
    root = tmp_path / "3Dircadb1"
    root.mkdir()
    (root / "3Dircadb1.1").symlink_to(src)
    out = _module("prepare_lits").main([str(root), "-o", str(tmp_path / "work" / "ircadb.csv")])
    (case,) = read_manifest(out)
    assert case.case_id == "ircadb_1" and case.label == 1 and case.image.name == "PATIENT_DICOM.zip"
    assert int(np.asarray(nib.load(str(case.mask)).dataobj).sum()) == 214_268  # PROVENANCE.md tumour voxels
    shutil.rmtree(tmp_path / "work")
