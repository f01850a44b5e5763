"""Shared helpers of the dataset converters: argument parsing, label-subset masks, manifest writing.

The converters never download anything and never write into their input: derived files (lesion-only masks,
single-channel images, unions of DICOM masks) go into the output folder the user chooses.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from aaclip_med.errors import ManifestError
from aaclip_med.manifest import Case, write_manifest

__all__ = ["Case", "check_outside", "find", "label_subset", "main_parser", "matches", "save_manifest"]

logger = logging.getLogger(__name__)


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Case-insensitive shell-pattern match of a file name against any pattern."""
    return any(fnmatch.fnmatch(name.lower(), p.lower()) for p in patterns)


def find(folder: Path, patterns: Sequence[str]) -> list[Path]:
    """Files directly in ``folder`` matching any pattern, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and matches(p.name, patterns))


def label_subset(src: Path, dst: Path, labels: Sequence[int]) -> Path:
    """Write ``src`` label map reduced to ``labels`` (uint8 0/1) on the exact same header and affine."""
    img = nib.load(str(src))
    data = np.isin(np.asarray(img.dataobj), list(labels)).astype(np.uint8)
    dst.parent.mkdir(parents=True, exist_ok=True)
    out = nib.Nifti1Image(data, img.affine, img.header)
    out.set_data_dtype(np.uint8)
    out.header.set_slope_inter(1, 0)
    nib.save(out, str(dst))
    return dst


def check_outside(root: Path, out_dir: Path) -> None:
    """Refuse an output folder that is the input or lies inside it (converters never write into the input)."""
    root_r, out_r = root.resolve(), out_dir.resolve()
    if out_r == root_r or root_r in out_r.parents:
        raise ManifestError(f"Output folder {out_dir} lies inside the input {root}; choose another -o location.")


def save_manifest(cases: Sequence[Case], out: Path, source: Path) -> Path:
    """Write the manifest and log a one-line summary; fail when nothing was found."""
    if not cases:
        raise ManifestError(f"No cases found under '{source}'; check the folder and the layout options (--help).")
    path = write_manifest(cases, out)
    n_abn = sum(1 for c in cases if c.label == 1)
    logger.info("wrote %s: %d cases (%d anomalous)", path, len(cases), n_abn)
    return path


def main_parser(description: str) -> argparse.ArgumentParser:
    """An argparse parser with the ``root`` and ``-o/--out`` arguments every converter takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("root", type=Path, help="the downloaded dataset folder (read only)")
    parser.add_argument("-o", "--out", type=Path, required=True,
                        help="manifest CSV to write; derived files go beside it")
    parser.add_argument("--split", default="test", help="split written into the manifest (default: test)")
    return parser
