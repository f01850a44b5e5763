"""Training inputs from a data folder: the folder layouts a manifest CSV (:mod:`aaclip_med.manifest`) can replace.

Splits are named by the manifest's one table (:data:`aaclip_med.manifest.SPLITS`): a ``valid`` folder holds ``val``
cases, as a manifest row with split ``valid`` does. Test cases are never used for training or selection; cases
without a split (manifest rows, the layouts without split folders) are training data.

Folder layouts (:func:`discover_folder`):

- BMAD: ``{train,valid,test}/{good,Ungood}/img/*.png`` with masks in ``Ungood/label/`` or ``Ungood/anomaly_mask/``.
- MVTec-like: ``<class>/test/<defect>/*.png`` with ``<class>/ground_truth/<defect>/<stem>_mask.png``; as in the
  reference protocol the labelled test images are the training data (``train/good`` has no anomalies).
- VisA-like: ``<class>/Data/Images/{Normal,Anomaly}/*`` with ``<class>/Data/Masks/Anomaly/<stem>.png``.
- Volumes: ``images/`` + ``labels/`` (or ``masks/``), or nnU-Net ``imagesTr/`` + ``labelsTr/``, NIfTI files or
  DICOM series folders matched by name (nnU-Net's ``_0000`` channel suffix is dropped), optionally inside
  ``train/``, ``valid/`` and ``test/`` folders.
- Any other folder ``aaclip-med batch`` reads (BraTS-like ``<case>/<case>_flair.nii.gz`` + ``<case>_seg.nii.gz``,
  see :mod:`aaclip_med.discovery`), when every volume found there has its mask paired.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from aaclip_med._files import INPUT_SUFFIXES
from aaclip_med.discovery import discover
from aaclip_med.errors import ManifestError
from aaclip_med.manifest import SPLITS, Case

__all__ = ["IMAGE_SUFFIXES", "discover_folder", "is_2d_image"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_2d_image(path: Path) -> bool:
    """Whether ``path`` is a 2D picture (PNG/JPEG/BMP/TIFF) rather than a volume."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def _files(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(suffixes))


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*INPUT_SUFFIXES, *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name[:-5] if name.endswith("_0000") else name


def _find_mask(folders: list[Path], stem: str, where: str) -> Path:
    for folder in folders:
        for candidate in (*_files(folder), *_files(folder, INPUT_SUFFIXES)):
            if _stem(candidate) in (stem, f"{stem}_mask"):
                return candidate
    names = " or ".join(str(f) for f in folders)
    msg = f"{where}: no mask named '{stem}' in {names}; add the mask or remove the image."
    raise ManifestError(msg)


def _bmad(root: Path) -> list[Case]:
    records = []
    for split_dir in ("train", "valid", "val", "test"):
        for state, label in (("good", 0), ("Ungood", 1)):
            base = root / split_dir / state
            images = _files(base / "img") or _files(base)
            for image in images:
                mask = None
                if label:
                    mask = _find_mask([base / "label", base / "anomaly_mask"], _stem(image), str(image))
                split = SPLITS[split_dir]
                records.append(Case(image.stem, image, mask, label, None, split, where=str(image)))
    return records


def _mvtec(class_dir: Path) -> list[Case]:
    records = []
    for defect in sorted(p for p in (class_dir / "test").iterdir() if p.is_dir()):
        label = int(defect.name != "good")
        for image in _files(defect):
            masks = [class_dir / "ground_truth" / defect.name]
            mask = _find_mask(masks, _stem(image), str(image)) if label else None
            case = f"{class_dir.name}/{defect.name}/{image.stem}"
            records.append(Case(case, image, mask, label, None, "train", where=str(image)))
    return records


def _visa(class_dir: Path) -> list[Case]:
    records = []
    for state, label in (("Normal", 0), ("Anomaly", 1)):
        for image in _files(class_dir / "Data" / "Images" / state):
            mask = _find_mask([class_dir / "Data" / "Masks" / state], _stem(image), str(image)) if label else None
            case = f"{class_dir.name}/{image.stem}"
            records.append(Case(case, image, mask, label, None, "train", where=str(image)))
    return records


def _volumes(base: Path, split: str) -> list[Case]:
    records = []
    for images_name, labels_names in (("images", ("labels", "masks")), ("imagesTr", ("labelsTr",))):
        image_dir = base / images_name
        if not image_dir.is_dir():
            continue
        entries = sorted(p for p in image_dir.iterdir() if p.is_dir() or p.name.lower().endswith(INPUT_SUFFIXES))
        for image in entries:
            mask = _find_mask([base / n for n in labels_names], _stem(image), str(image))
            records.append(Case(_stem(image), image, mask, None, None, split, where=str(image)))
    return records


def discover_folder(root: str | Path) -> list[Case]:
    """Find the training cases of a data folder in one of the supported layouts (module docstring).

    Args:
        root: The data folder.

    Returns:
        Case records in a stable (sorted) order.

    Raises:
        ManifestError: the folder does not exist, matches no layout, or an anomalous image has no mask.
    """
    root = Path(root)
    if not root.is_dir():
        msg = f"Training data '{root}' is neither a manifest CSV nor a folder; check the path."
        raise ManifestError(msg)
    if any((root / s / state).is_dir() for s in ("train", "valid", "val", "test") for state in ("good", "Ungood")):
        return _bmad(root)
    volumes = _volumes(root, "train")
    for split_dir in ("train", "valid", "val", "test"):
        volumes += _volumes(root / split_dir, SPLITS[split_dir])
    if volumes:
        return volumes
    class_dirs = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    records: list[Case] = []
    for class_dir in class_dirs:
        if (class_dir / "test").is_dir() and (class_dir / "ground_truth").is_dir():
            records += _mvtec(class_dir)
        elif (class_dir / "Data" / "Images").is_dir():
            records += _visa(class_dir)
    return records or _batch_layout(root)


def _batch_layout(root: Path) -> list[Case]:
    """The volumes ``batch`` finds in ``root``, as training cases; every one needs its mask."""
    advice = "write a manifest CSV (case_id,image,mask,label,preset,split) instead"
    try:
        cases = discover(root)
    except ManifestError:
        msg = f"Folder '{root}' matches no known layout (BMAD, MVTec, VisA, images/+labels/ volumes); {advice}."
        raise ManifestError(msg) from None
    unpaired = [c for c in cases if c.mask is None]
    if unpaired:
        msg = (
            f"Folder '{root}': {len(unpaired)} of {len(cases)} volumes have no mask paired with them (e.g. "
            f"{unpaired[0].image}); training needs a mask per volume (all zeros for a normal one) named "
            f"<image>_seg.nii.gz beside it, or {advice}."
        )
        raise ManifestError(msg)
    return [dataclasses.replace(c, split="train", where=str(c.image)) for c in cases]
