"""Finding the studies of a data folder (:func:`discover`); :func:`load_cases` reads any source of cases.

A manifest CSV is read by :func:`aaclip_med.manifest.read_manifest` (the manifest's one owner); a folder is read by
the rules below; a single file is one case.

Folder discovery (:func:`discover`) walks the folder recursively in sorted order (hidden entries skipped):

- every ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd`` file is one case;
- every DICOM image series is one case, its files grouped by SeriesInstanceUID across sub-folders (the case's
  image is the deepest folder holding all its files, with the series UID as selector when that folder holds
  several series); non-image objects (SEG, SR, RTSTRUCT, ...) are set aside;
- mask files are never cases: a volume file is a mask when its name holds ``seg``, ``mask`` or ``label``, or
  when it sits in a folder named ``labels``, ``labelsTr``, ``labelsTs``, ``masks`` or ``segmentations``.
  A mask is paired with an image when both are in the same folder (or the image folder is the matching
  ``images*`` sibling of the mask folder) and the mask's name, less the mask words, equals the image's name or
  the image's name less its last ``_``/``-`` part (a modality or channel suffix such as ``_flair`` or
  ``_0000``), or when that folder holds a single image. Unpaired masks are skipped (logged at debug level).

Case ids are the image names (``case_name``); when two names clash, the path relative to the folder is used
(``/`` becomes ``__``). For other layouts write a manifest (see ``datasets/prepare_*.py``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from aaclip_med._files import VOLUME_SUFFIXES, strip_volume_suffix
from aaclip_med._typing import PathLike
from aaclip_med.errors import ManifestError
from aaclip_med.manifest import Case, check_case_id, read_manifest

__all__ = ["discover", "is_mask_name", "load_cases"]

logger = logging.getLogger(__name__)

_NOT_DICOM_SUFFIXES = (
    ".csv", ".json", ".txt", ".md", ".html", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".raw", ".py",
    ".pdf", ".xml", ".yaml", ".yml", ".toml", ".gz", ".zip", ".npz", ".npy", ".pth", ".safetensors",
)
MASK_WORDS = ("seg", "mask", "label")
MASK_FOLDERS = {"labels", "labelstr", "labelsts", "masks", "segmentations"}
_SPLIT = re.compile(r"[_\-. ]+")


def is_mask_name(path: Path) -> bool:
    """Whether a volume file is a mask by the discovery rule (name word or mask folder)."""
    name = path.name.lower()
    return any(w in name for w in MASK_WORDS) or path.parent.name.lower() in MASK_FOLDERS


def _stem(path: Path) -> str:
    return strip_volume_suffix(path.name)


def _tokens(path: Path, drop_mask_words: bool = False) -> tuple[str, ...]:
    parts = [t for t in _SPLIT.split(_stem(path).lower()) if t]
    if drop_mask_words:
        parts = [t for t in parts if not any(t.startswith(w) for w in MASK_WORDS)]
    return tuple(parts)


def _image_folders(mask_dir: Path) -> list[Path]:
    if mask_dir.name.lower() not in MASK_FOLDERS:
        return [mask_dir]
    suffix = mask_dir.name[len("labels"):] if mask_dir.name.lower().startswith("labels") else ""
    return [mask_dir, mask_dir.parent / f"images{suffix}", mask_dir.parent / "images", mask_dir.parent]


def _pair_masks(images: list[Path], masks: list[Path]) -> dict[Path, Path]:
    by_folder: dict[Path, list[Path]] = {}
    for image in images:
        by_folder.setdefault(image.parent, []).append(image)
    pairs: dict[Path, Path] = {}
    for mask in masks:
        key = _tokens(mask, drop_mask_words=True)
        hit = False
        for folder in _image_folders(mask.parent):
            members = by_folder.get(folder, [])
            for image in members:
                tokens = _tokens(image)
                if len(members) == 1 or key in (tokens, tokens[:-1]):
                    pairs.setdefault(image, mask)
                    hit = True
            if hit:
                break
        if not hit:
            logger.debug("mask %s matches no image; skipped", mask)
    return pairs


def _dicom_cases(files: list[Path], root: Path) -> list[tuple[Path, str | None, str]]:
    """(image folder, series selector or None, name) per DICOM image series among ``files``."""
    from aaclip_med.io.dicom_series import Header, group_series, try_read_dataset

    headers = [Header(str(f), ds) for f in files if (ds := try_read_dataset(str(f), header_only=True)) is not None]
    series, skipped = group_series([h for h in headers if "DirectoryRecordSequence" not in h.ds])
    for why in skipped:
        logger.debug("not a case: %s", why)
    folders = {}
    for s in series:
        parents = [Path(h.ref).parent for h in s.headers]
        common = Path(*Path(parents[0]).parts[: min(len(p.parts) for p in parents)])
        while not all(common == p or common in p.parents for p in parents):
            common = common.parent
        folders[s.uid] = common
    out = []
    for s in series:
        folder = folders[s.uid]
        shared = sum(1 for f in folders.values() if f == folder or folder in f.parents)
        selector = s.uid if shared > 1 else None
        name = folder.name if folder != root else root.name
        tag = s.number if s.number is not None else s.uid
        out.append((folder, selector, name if selector is None else f"{name}_s{tag}"))
    return out


def discover(folder: str | Path) -> list[Case]:
    """Find the studies of a folder by the rules of the module docstring.

    Args:
        folder: The data folder.

    Returns:
        Cases sorted by case id.

    Raises:
        ManifestError: The folder does not exist or holds no study.
    """
    root = Path(folder)
    if not root.is_dir():
        msg = f"'{root}' is neither a manifest CSV nor a folder; check the path."
        raise ManifestError(msg)
    volumes: list[Path] = []
    masks: list[Path] = []
    others: list[Path] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        lower = path.name.lower()
        if lower.endswith(VOLUME_SUFFIXES):
            (masks if is_mask_name(path) else volumes).append(path)
        elif not lower.endswith(_NOT_DICOM_SUFFIXES) and lower != "dicomdir":
            others.append(path)
    pairs = _pair_masks(volumes, masks)
    found: list[tuple[str, str, Path, Path | None, str | None]] = []  # name, relative name, image, mask, series
    for image in volumes:
        rel = image.relative_to(root)
        found.append((_stem(image), "__".join((*rel.parts[:-1], _stem(image))), image, pairs.get(image), None))
    for image_dir, selector, name in _dicom_cases(others, root) if others else []:
        parts = image_dir.relative_to(root).parts
        found.append((name, "__".join((*parts[:-1], name)) if parts else name, image_dir, None, selector))
    counts: dict[str, int] = {}
    for name, *_ in found:
        counts[name] = counts.get(name, 0) + 1
    cases = [
        Case(check_case_id(name if counts[name] == 1 else rel, str(image)), image, mask, None, None, None, series,
             str(image))
        for name, rel, image, mask, series in found
    ]
    if not cases:
        msg = f"Folder '{root}' holds no NIfTI/NRRD/MHA file or DICOM series; pass a data folder or a manifest."
        raise ManifestError(msg)
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        msg_0 = f"Folder '{root}': two studies get the case id '{dup}'; write a manifest CSV instead."
        raise ManifestError(msg_0)
    return sorted(cases, key=lambda c: c.case_id)


def load_cases(source: PathLike) -> list[Case]:
    """Cases of a manifest CSV (a ``.csv`` file) or of a data folder (:func:`discover`)."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".csv":
        return read_manifest(path)
    if path.is_file():
        return [Case(check_case_id(_stem(path), str(path)), path, where=str(path))]
    return discover(path)
