"""Manifests, folder layouts and the dataset: clear errors before training, correct discovery and samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aaclip_med.errors import ManifestError
from aaclip_med.manifest import read_manifest
from aaclip_med.training.augment import Augmenter
from aaclip_med.training.data import SliceDataset, build_datasets
from aaclip_med.training.layouts import discover_folder
from tests.training.conftest import SIZE, write_pair, write_volume


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.csv"
    path.write_text(text)
    return path


def test_manifest_reads_splits_and_samples(manifest_2d: Path) -> None:
    train, val = build_datasets(read_manifest(manifest_2d), None)
    assert (len(train), len(val)) == (6, 4)
    assert [it.label for it in train] == [1, 0, 1, 0, 1, 0]
    sample = SliceDataset(train, SIZE)[0]
    assert sample["image"].shape == (3, SIZE, SIZE) and sample["mask"].shape == (1, SIZE, SIZE)
    assert set(sample["mask"].unique().tolist()) == {0.0, 1.0} and sample["preset"] == "reference"
    aug = SliceDataset(train, SIZE, Augmenter(True, seed=3))
    assert torch.equal(aug[0]["image"], aug[0]["image"])  # seeded per (epoch, index)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("case_id,image,extra\na,x.png,1\n", "unknown column 'extra'"),
        ("case_id,image,mask\na,missing.png,\n", "does not exist"),
        ("case_id,image,label\na,IMG,2\n", "is not 0 or 1"),
        ("case_id,image,split\na,IMG,holdout\n", "split 'holdout'"),
        ("case_id,image,split\na,IMG,val\n", "No training samples"),
        ("case_id,image,label\na,IMG,0\n", "no anomalous sample"),
        ("case_id,image,label\na,IMG,1\n", "label 1 but no mask"),
        ("case_id,image,mask\na,IMG,SMALL\n", "masks must have the image's size"),
        ("case_id,image,preset\na,IMG,brain-mri\n", "did you mean 'brain_mri'"),
        ("case_id,image\n", "no rows"),
    ],
)
def test_bad_manifests_fail_before_training(tmp_path: Path, body: str, needle: str) -> None:
    image, _ = write_pair(tmp_path, "a", False, np.random.default_rng(0))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "small.png")
    path = _write(tmp_path, body.replace("IMG", image.name).replace("SMALL", "small.png"))
    with pytest.raises(ManifestError, match=needle) as info:
        build_datasets(read_manifest(path), None)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("mask_dir", ["label", "anomaly_mask"])
def test_bmad_layout(tmp_path: Path, mask_dir: str) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        for state, anomalous in (("good", False), ("Ungood", True)):
            img, mask = write_pair(tmp_path / split / state / "img", f"{split}{state}_1", anomalous, rng)
            if anomalous:
                (tmp_path / split / state / mask_dir).mkdir()
                mask.rename(tmp_path / split / state / mask_dir / img.name)
            else:
                mask.unlink()
    records = discover_folder(tmp_path)
    assert sorted((r.split, r.label, r.mask is not None) for r in records) == [
        ("test", 0, False), ("test", 1, True), ("train", 0, False), ("train", 1, True),
        ("val", 0, False), ("val", 1, True)]
    train, val = build_datasets(records, None)
    assert [it.label for it in train] == [0, 1] and len(val) == 2


def test_mvtec_layout_and_missing_mask(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_pair(tmp_path / "pill" / "test" / "good", "000", False, rng)[1].unlink()
    img, mask = write_pair(tmp_path / "pill" / "test" / "crack", "000", True, rng)
    (tmp_path / "pill" / "ground_truth" / "crack").mkdir(parents=True)
    mask.rename(tmp_path / "pill" / "ground_truth" / "crack" / "000_mask.png")
    records = discover_folder(tmp_path)
    assert sorted(r.label for r in records) == [0, 1]
    (tmp_path / "pill" / "ground_truth" / "crack" / "000_mask.png").unlink()
    with pytest.raises(ManifestError, match="no mask named '000'"):
        discover_folder(tmp_path)


def test_volume_layout_slices_and_grid_check(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name, lesion in (("a", True), ("b", False)):
        seg = write_volume(tmp_path / "images" / f"{name}.nii.gz", lesion, rng)
        (tmp_path / "labels").mkdir(exist_ok=True)
        seg.rename(tmp_path / "labels" / f"{name}.nii.gz")
    train, _ = build_datasets(discover_folder(tmp_path), "mri")
    assert len(train) == 12 and sum(it.label for it in train) == 2  # 2 lesion slices of case a
    sample = SliceDataset(train, SIZE)[[i for i, it in enumerate(train) if it.label][0]]
    assert sample["mask"].sum() > 0 and sample["image"].shape == (3, SIZE, SIZE)
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((30, 32, 6), np.uint8), np.eye(4)), str(tmp_path / "labels" / "b.nii.gz"))
    with pytest.raises(ManifestError, match="resample the label map"):
        build_datasets(discover_folder(tmp_path), "mri")
