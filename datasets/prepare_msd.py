"""Medical Segmentation Decathlon tasks -> manifest (Task01_BrainTumour, Task03_Liver, others alike).

Reads ``dataset.json`` (``training``: image/label pairs; ``modality``; ``labels``). Derived files go beside the
manifest, never into the task folder:

- 4D images (Task01: FLAIR, T1w, T1gd, T2w) are reduced to one channel, ``images/<case>.nii.gz`` (default the
  channel named FLAIR, else 0; ``--channel`` overrides);
- masks keep the anomaly labels only, ``masks/<case>.nii.gz`` (default: every label > 0 for BrainTumour,
  label 2 "cancer" for Liver; ``--labels`` overrides).

Usage:
    python datasets/prepare_msd.py /data/Task03_Liver -o work/msd_liver.csv
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Case, check_outside, label_subset, main_parser, save_manifest  # noqa: E402

from aaclip_med.errors import ManifestError  # noqa: E402

__all__ = ["msd_cases", "main"]

_PRESETS = {"brain": "brain_mri", "liver": "liver_ct"}


def _anomaly_labels(meta: dict, task: str) -> list[int]:
    labels = {int(k): str(v).lower() for k, v in meta.get("labels", {}).items()}
    if "liver" in task.lower():
        words = ("cancer", "tumour", "tumor", "lesion")
        return [k for k, v in labels.items() if any(w in v for w in words)] or [2]
    return [k for k in labels if k > 0] or [1]


def _channel(meta: dict) -> int:
    names = {int(k): str(v).lower() for k, v in meta.get("modality", {}).items()}
    return next((k for k, v in sorted(names.items()) if "flair" in v), 0)


def _one_channel(src: Path, dst: Path, channel: int) -> Path:
    img = nib.load(str(src))
    if img.ndim == 3:
        return src
    data = np.asarray(img.dataobj[..., channel], dtype=np.float32)
    dst.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, img.affine), str(dst))
    return dst


def msd_cases(root: Path, out_dir: Path, *, channel: int | None = None, labels: list[int] | None = None,
              split: str = "test", preset: str | None = None) -> list[Case]:
    """Cases of an MSD task folder (``training`` entries whose files exist)."""
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise ManifestError(f"'{root}' has no dataset.json; pass an MSD task folder such as Task03_Liver.")
    meta = json.loads(meta_path.read_text())
    task = str(meta.get("name", root.name))
    keep = labels or _anomaly_labels(meta, root.name + task)
    ch = _channel(meta) if channel is None else channel
    preset = preset or next((p for w, p in _PRESETS.items() if w in (root.name + task).lower()), None)
    cases = []
    for entry in meta.get("training", []):
        image, label = root / entry["image"], root / entry["label"]
        if not image.is_file():
            logging.getLogger(__name__).warning("%s is listed in dataset.json but missing; skipped", image)
            continue
        cid = image.name.split(".")[0]
        image = _one_channel(image, out_dir / "images" / f"{cid}.nii.gz", ch)
        mask = label_subset(label, out_dir / "masks" / f"{cid}.nii.gz", keep) if label.is_file() else None
        cases.append(Case(cid, image, mask, None, preset, split))
    return cases


def main(argv: list[str] | None = None) -> Path:
    """Command line: ``prepare_msd.py TASK_DIR -o manifest.csv [--channel C] [--labels L ...]``."""
    parser = main_parser(__doc__.splitlines()[0])
    parser.add_argument("--channel", type=int, default=None, help="channel of 4D images (default: FLAIR or 0)")
    parser.add_argument("--labels", type=int, nargs="+", default=None, help="labels that mark an anomaly")
    parser.add_argument("--preset", default=None, help="preset (default: from the task name)")
    args = parser.parse_args(argv)
    check_outside(args.root, args.out.parent)
    cases = msd_cases(args.root, args.out.parent, channel=args.channel, labels=args.labels, split=args.split,
                      preset=args.preset)
    return save_manifest(cases, args.out, args.root)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
