"""Synthetic training data for the training tests: small PNG images and NIfTI volumes with bright 'lesions'."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

SIZE = 96  # tiny model, patch 16 -> a 6x6 grid (the 9x9 map blur needs > 4 patches per side)


def write_pair(
    folder: Path, name: str, anomalous: bool, rng: np.random.Generator, size: int = 40
) -> tuple[Path, Path]:
    """Write a grey PNG and its mask; anomalous images get a bright square where the mask is 255."""
    img = (rng.random((size, size)) * 80 + 60).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    if anomalous:
        r, c = rng.integers(4, size - 16, 2)
        img[r : r + 12, c : c + 12] = 240
        mask[r : r + 12, c : c + 12] = 255
    folder.mkdir(parents=True, exist_ok=True)
    image_path, mask_path = folder / f"{name}.png", folder / f"{name}_mask.png"
    Image.fromarray(img).save(image_path)
    Image.fromarray(mask).save(mask_path)
    return image_path, mask_path


@pytest.fixture
def manifest_2d(tmp_path: Path) -> Path:
    """A manifest of 6 training (3 anomalous) and 4 validation (2 anomalous) 2D images."""
    rng = np.random.default_rng(0)
    lines = ["case_id,image,mask,label,split"]
    for i in range(10):
        anomalous = i % 2 == 0
        image, mask = write_pair(tmp_path / "img", f"c{i}", anomalous, rng)
        split = "train" if i < 6 else "val"
        lines.append(f"c{i},img/{image.name},img/{mask.name},{int(anomalous)},{split}")
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_volume(
    path: Path, lesion: bool, rng: np.random.Generator, shape: tuple[int, int, int] = (32, 32, 6)
) -> Path:
    """A small 'MRI' NIfTI: a bright block in slices 2-3 when ``lesion``; returns the label-map path."""
    data = np.zeros(shape, np.float32)
    data[4:28, 4:28, :] = rng.random((24, 24, shape[2])) * 100 + 100
    labels = np.zeros(shape, np.uint8)
    if lesion:
        data[10:18, 10:18, 2:4] = 400
        labels[10:18, 10:18, 2:4] = 2
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    label_path = path.with_name(path.name.replace(".nii.gz", "_seg.nii.gz"))
    nib.save(nib.Nifti1Image(labels, np.eye(4)), str(label_path))
    return label_path
