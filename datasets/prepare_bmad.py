"""BMAD (Bao et al. 2023) 2D test/valid splits -> manifest: ``{split}/{good,Ungood}/img/*.png``.

Masks of anomalous images are looked up in ``Ungood/label/`` or ``Ungood/anomaly_mask/`` (the name varies between
the BMAD README and the AA-CLIP/anomalib loaders; DESIGN §4.8). Case ids are ``{split}_{state}_{file stem}``.

Usage:
    python datasets/prepare_bmad.py /data/BMAD/Brain_AD -o work/brain_bmad.csv --preset brain_mri
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Case, main_parser, save_manifest  # noqa: E402

from aaclip_med.errors import ManifestError  # noqa: E402

__all__ = ["MASK_FOLDERS", "PRESETS", "bmad_cases", "main"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_FOLDERS = ("label", "anomaly_mask")
PRESETS = {"brain_ad": "brain_mri", "liver_ad": "liver_ct"}  # subset folder -> preset; others: "reference"


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def bmad_cases(root: Path, splits: tuple[str, ...] = ("test",), preset: str | None = None) -> list[Case]:
    """Cases of a BMAD subset folder.

    Args:
        root: The subset folder (e.g. ``Brain_AD``).
        splits: Split folders to read (``test``, ``valid``).
        preset: Preset written in the manifest; default from the subset folder name.

    Raises:
        ManifestError: An anomalous image has no mask.
    """
    preset = preset or PRESETS.get(root.name.lower(), "reference")
    cases = []
    for split in splits:
        for state, label in (("good", 0), ("Ungood", 1)):
            base = root / split / state
            for image in _images(base / "img"):
                mask = None
                if label:
                    found = [base / m / image.name for m in MASK_FOLDERS if (base / m / image.name).is_file()]
                    if not found:
                        msg = f"{image}: no mask in {base}/label or {base}/anomaly_mask; BMAD pairs masks by name."
                        raise ManifestError(msg)
                    mask = found[0]
                cases.append(Case(f"{split}_{state}_{image.stem}", image, mask, label, preset, split))
    return cases


def main(argv: list[str] | None = None) -> Path:
    """Command line: ``prepare_bmad.py ROOT -o manifest.csv [--splits test valid] [--preset P]``."""
    parser = main_parser(__doc__.splitlines()[0])
    parser.add_argument("--splits", nargs="+", default=["test"], help="split folders (default: test)")
    parser.add_argument("--preset", default=None, help="preset (default: from the subset folder name)")
    args = parser.parse_args(argv)
    return save_manifest(bmad_cases(args.root, tuple(args.splits), args.preset), args.out, args.root)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
