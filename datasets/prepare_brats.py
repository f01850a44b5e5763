"""BraTS-style folders -> manifest: one case per folder holding a FLAIR volume and a segmentation.

Default patterns: image ``*flair*.nii*``, mask ``*seg*.nii*`` (BraTS 2018-2023); for the BRATS 2015 DeepMedic
layout pass ``--image '*flair*' --mask '*OTMultiClass*'``. Every tumour label (> 0) is an anomaly, so masks are
used as they are. The split is taken from a folder on the path named as a split (``train``, ``training``,
``val``, ``valid``, ``validation``, ``test``: :data:`aaclip_med.manifest.SPLITS`), else ``--split``.

Usage:
    python datasets/prepare_brats.py /data/BraTS2021 -o work/brats.csv
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Case, find, main_parser, save_manifest  # noqa: E402

from aaclip_med.manifest import SPLITS  # noqa: E402

__all__ = ["brats_cases", "main"]


def brats_cases(root: Path, image: tuple[str, ...] = ("*flair*.nii*",), mask: tuple[str, ...] = ("*seg*.nii*",),
                split: str = "test", preset: str = "brain_mri") -> list[Case]:
    """One case per folder under ``root`` with exactly one image and at most one mask (cases without masks:
    no mask, no label). Folders with several matching images are skipped with a warning.
    """
    cases = []
    folders = sorted({p.parent for p in root.rglob("*") if p.is_file()})
    for folder in folders:
        images = [p for p in find(folder, image) if p not in find(folder, mask)]
        if not images:
            continue
        if len(images) > 1:
            logging.getLogger(__name__).warning("%s: %d images match %s; skipped", folder, len(images), image)
            continue
        masks = find(folder, mask)
        rel = folder.relative_to(root).parts
        part = next((SPLITS[p.lower()] for p in rel if p.lower() in SPLITS), split)
        cases.append(Case(folder.name, images[0], masks[0] if masks else None, None, preset, part))
    return cases


def main(argv: list[str] | None = None) -> Path:
    """Command line: ``prepare_brats.py ROOT -o manifest.csv [--image PAT] [--mask PAT]``."""
    parser = main_parser(__doc__.splitlines()[0])
    parser.add_argument("--image", nargs="+", default=["*flair*.nii*"], help="image file pattern(s)")
    parser.add_argument("--mask", nargs="+", default=["*seg*.nii*"], help="mask file pattern(s)")
    parser.add_argument("--preset", default="brain_mri")
    args = parser.parse_args(argv)
    cases = brats_cases(args.root, tuple(args.image), tuple(args.mask), args.split, args.preset)
    return save_manifest(cases, args.out, args.root)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
