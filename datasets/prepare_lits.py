"""LiTS and 3D-IRCADb -> manifest with lesion-only masks (label > 0 must mean "anomaly").

- LiTS: ``volume-N.nii`` + ``segmentation-N.nii`` (0 background, 1 liver, 2 lesion). The lesion masks
  (label 2) are written as ``masks/lits_N.nii.gz`` beside the manifest, on the exact header of the segmentation.
- 3D-IRCADb: ``3Dircadb1.P/`` folders with ``PATIENT_DICOM`` (folder or zip; used in place) and ``MASKS_DICOM``
  (folder or zip) whose ``livertumor*`` masks are united into ``masks/ircadb_P.nii.gz`` on the CT grid. A
  patient without tumour masks gets an empty mask (label 0).

Nothing is written into the input. Usage:
    python datasets/prepare_lits.py /data/LiTS -o work/lits.csv
    python datasets/prepare_lits.py /data/3Dircadb1 -o work/ircadb.csv
"""

from __future__ import annotations

import logging
import re
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Case, check_outside, label_subset, main_parser, save_manifest  # noqa: E402

__all__ = ["ircadb_cases", "lits_cases", "main", "tumour_union"]

logger = logging.getLogger(__name__)
_LITS = re.compile(r"volume-(\d+)\.nii(\.gz)?$", re.IGNORECASE)


def lits_cases(root: Path, out_dir: Path, split: str = "test", lesion_label: int = 2) -> list[Case]:
    """LiTS volumes with their lesion masks written into ``out_dir/masks``."""
    cases = []
    for image in sorted(root.rglob("volume-*.nii*")):
        m = _LITS.match(image.name)
        if not m:
            continue
        seg = next(iter(sorted(image.parent.glob(f"segmentation-{m.group(1)}.nii*"))), None)
        cid = f"lits_{int(m.group(1)):03d}"
        mask = label_subset(seg, out_dir / "masks" / f"{cid}.nii.gz", [lesion_label]) if seg else None
        cases.append(Case(cid, image, mask, None, "liver_ct", split))
    return cases


def _as_folder(path: Path, tmp: Path) -> Path | None:
    """``path`` if it is a folder, else its ``.zip`` extracted into ``tmp``; None when neither exists."""
    if path.is_dir():
        return path
    archive = path.with_suffix(".zip")
    if not archive.is_file():
        return None
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp)
    found = [p for p in tmp.rglob(path.name) if p.is_dir()]
    return found[0] if found else tmp


def tumour_union(masks_dir: Path, like: object, pattern: str = "livertumor*") -> np.ndarray:
    """Union (uint8 0/1) of the DICOM mask series in ``masks_dir/<pattern>`` on the grid of volume ``like``."""
    from aaclip_med.errors import GeometryError
    from aaclip_med.io import read_volume

    union = np.zeros(like.shape, np.uint8)  # type: ignore[attr-defined]
    for folder in sorted(p for p in masks_dir.glob(pattern) if p.is_dir()):
        vol = read_volume(folder)
        same = vol.shape == union.shape and np.allclose(vol.affine, like.affine, atol=1e-3)  # type: ignore[attr-defined]
        if not same:
            raise GeometryError(f"{folder}: mask grid {vol.shape} is not the CT grid {union.shape}; cannot unite.")
        union |= (vol.data > 0).astype(np.uint8)
    return union


def ircadb_cases(root: Path, out_dir: Path, split: str = "test") -> list[Case]:
    """3D-IRCADb patients (``3Dircadb1.P`` folders, or ``root`` itself when it is one)."""
    from aaclip_med.io import read_volume, write_nifti

    patients = [root] if _is_patient(root) else sorted(p for p in root.iterdir() if _is_patient(p))
    cases = []
    for patient in patients:
        tag = patient.name.split(".")[-1] if "." in patient.name else patient.name
        cid = f"ircadb_{tag}"
        image = patient / "PATIENT_DICOM"
        image = image if image.is_dir() else image.with_suffix(".zip")
        mask, label = None, None
        with tempfile.TemporaryDirectory() as tmp:
            masks_dir = _as_folder(patient / "MASKS_DICOM", Path(tmp))
            if masks_dir is not None:
                ct = read_volume(image)
                union = tumour_union(masks_dir, ct)
                mask = write_nifti(union, out_dir / "masks" / f"{cid}.nii.gz", like=ct)
                label = int(bool(union.any()))
                logger.info("%s: %d tumour voxels", cid, int(union.sum()))
        cases.append(Case(cid, image, mask, label, "liver_ct", split))
    return cases


def _is_patient(folder: Path) -> bool:
    return folder.is_dir() and any((folder / n).exists() for n in ("PATIENT_DICOM", "PATIENT_DICOM.zip"))


def main(argv: list[str] | None = None) -> Path:
    """Command line: ``prepare_lits.py ROOT -o manifest.csv`` (LiTS or 3D-IRCADb, detected from the layout)."""
    parser = main_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    out_dir = args.out.parent
    check_outside(args.root, out_dir)
    cases = lits_cases(args.root, out_dir, args.split) or ircadb_cases(args.root, out_dir, args.split)
    return save_manifest(cases, args.out, args.root)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
