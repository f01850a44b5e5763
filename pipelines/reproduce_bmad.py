"""Reproduce the paper's medical protocol on BMAD (AA-CLIP, CVPR 2025, Table 2; AACLIP_SPEC.md §7.3(c)).

Zero-shot after training on VisA: score the 2D PNG test splits of BMAD BrainMRI, LiverCT and RESC
(``{subset}/test/{good,Ungood}/img/*.png``, masks in ``Ungood/label/`` or ``Ungood/anomaly_mask/``) with
``model.score_slices`` as the reference code does (RGB PNG -> bicubic resize to the model size -> CLIP
normalisation; masks nearest-resized to the same size, ``!= 0``), then:

- pixel AUROC / AP pooled over every pixel of the split (maps vs masks at the model size, 518 for the paper);
- image AUROC / AP from the image score (max of the map).

Maps are min-max normalised over the whole set (``metrics.normalise_maps(mode="set")``, the reference's
evaluation). That is a monotone map, so AUROC and AP are those of the raw maps; the set's min and max are
printed. Pixels go through a 10,000-bin :class:`~aaclip_med.metrics.PixelAccumulator`, so memory stays flat
(the brain split is 3,715 x 518^2 pixels); ``--exact`` keeps every pixel instead.

Usage (needs the real weights and the BMAD data; nothing is downloaded):
    python pipelines/reproduce_bmad.py /data/BMAD --adapter-weights /ckpt/aaclip_visa --backbone-weights openai
    python pipelines/reproduce_bmad.py /tmp/bmad --model aaclip-tiny --backbone-weights random --image-size 96
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "datasets"))

from prepare_bmad import bmad_cases  # noqa: E402

__all__ = ["REFERENCE", "SUBSETS", "evaluate_subset", "main"]

logger = logging.getLogger("reproduce_bmad")

# AACLIP_SPEC.md §7.3(c), in %: pixel AUROC, pixel AP, image AUROC, image AP
REFERENCE: dict[str, tuple[float, float, float, float]] = {
    "Brain": (95.72, 44.91, 79.26, 94.41),
    "Liver": (97.92, 12.87, 68.78, 57.72),
    "Retina": (95.31, 56.84, 81.82, 81.80),
}
SUBSETS: dict[str, tuple[str, ...]] = {  # folder names seen in the BMAD download and the peers' loaders
    "Brain": ("Brain_AD", "BrainMRI", "Brain"),
    "Liver": ("Liver_AD", "LiverCT", "Liver"),
    "Retina": ("Retina_RESC_AD", "RESC", "Retina_RESC", "Retina"),
}
COLUMNS = ("pixel_auroc", "pixel_ap", "image_auroc", "image_ap")


def _load(paths: Sequence[Path], size: int) -> Any:
    import torch
    from PIL import Image

    from aaclip_med.transforms import CLIP_MEAN, CLIP_STD

    arrays = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC), np.float32) / 255.0
              for p in paths]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def _mask(path: Path | None, size: int) -> np.ndarray:
    from PIL import Image

    if path is None:
        return np.zeros((size, size), bool)
    return np.asarray(Image.open(path).convert("L").resize((size, size), Image.NEAREST)) != 0


def evaluate_subset(model: Any, root: Path, *, preset: str = "reference", batch_size: int = 8,
                    limit: int | None = None, exact: bool = False) -> dict[str, Any]:
    """Pixel and image AUROC/AP (fractions) of one BMAD subset's test split."""
    from aaclip_med import metrics

    cases = bmad_cases(root, ("test",), preset)
    if limit:
        cases = cases[:limit // 2] + cases[-(limit - limit // 2):] if len(cases) > limit else cases
    size = model.input_size
    acc = metrics.PixelAccumulator(exact=exact, with_aupro=False)
    labels, scores, lo, hi = [], [], np.inf, -np.inf
    for start in range(0, len(cases), batch_size):
        batch = cases[start:start + batch_size]
        out = model.score_slices(_load([c.image for c in batch], size), preset, return_levels=False)
        for case, amap, score in zip(batch, out.maps.float().cpu().numpy(), out.score.float().cpu().numpy(),
                                     strict=True):
            acc.update(amap, _mask(case.mask, size))
            labels.append(case.label)
            scores.append(float(score))
            lo, hi = min(lo, float(amap.min())), max(hi, float(amap.max()))
    (norm_scores,), info = metrics.normalise_maps([np.asarray(scores)], "set", value_range=(lo, hi))
    reasons: list[str] = []
    res = metrics.evaluate_set(image_labels=labels, image_scores=norm_scores, pixels=acc,
                               normalisation="set", reasons=reasons)
    return {**{k: res[k] for k in COLUMNS}, "n_images": len(cases), "set_min": info["lo"], "set_max": info["hi"],
            "pixel_mode": "exact" if exact else "binned"}


def _find(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n / "test").is_dir()), None)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Command line; prints ours beside the paper's numbers and returns the rows (in %)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bmad_root", type=Path, help="folder holding Brain_AD/, Liver_AD/, Retina_RESC_AD/")
    parser.add_argument("--model", default="aaclip-vitl14-336")
    parser.add_argument("--backbone-weights", default=None)
    parser.add_argument("--adapter-weights", default=None, help="VisA-trained adapters (ours or reference .pth)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the model's (518)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", help="fp32 as the reference code")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--subsets", nargs="+", default=list(REFERENCE), choices=list(REFERENCE))
    parser.add_argument("--limit", type=int, default=None, help="images per subset (smoke runs)")
    parser.add_argument("--exact", action="store_true", help="exact pixel metrics (memory grows with the set)")
    parser.add_argument("--out", type=Path, default=None, help="write the table as CSV")
    args = parser.parse_args(argv)

    from aaclip_med.model.factory import create_model
    from aaclip_med.report import write_sheet

    model = create_model(args.model, backbone_weights=args.backbone_weights, adapter_weights=args.adapter_weights,
                         device=args.device, precision=args.precision, image_size=args.image_size)
    if model.untrained_backbone:
        warnings.warn("untrained/demo model: the numbers below show the protocol, not AA-CLIP's accuracy",
                      stacklevel=1)
    rows = []
    for name in args.subsets:
        root = _find(args.bmad_root, SUBSETS[name])
        if root is None:
            logger.warning("%s: none of %s under %s; skipped", name, "/".join(SUBSETS[name]), args.bmad_root)
            continue
        res = evaluate_subset(model, root, batch_size=args.batch_size, limit=args.limit, exact=args.exact)
        row = {"subset": name, **{k: 100 * float(res[k]) for k in COLUMNS}}
        row.update({f"paper_{k}": v for k, v in zip(COLUMNS, REFERENCE[name], strict=True)})
        row.update(n_images=res["n_images"], set_min=res["set_min"], set_max=res["set_max"],
                   pixel_mode=res["pixel_mode"])
        rows.append(row)
    header = f"{'subset':<8}" + "".join(f"{c:>24}" for c in COLUMNS)
    lines = [header, "-" * len(header)]
    for r in rows:
        cells = (f"{r[c]:>13.2f} (paper {r['paper_' + c]:5.2f})" for c in COLUMNS)
        lines.append(f"{r['subset']:<8}" + "".join(cells))
    print("\n".join(lines))  # this is a script: the table is its output
    if args.out:
        write_sheet(rows, args.out)
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
