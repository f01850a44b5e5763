"""Calibrate the shipped ``demo`` adapters' thresholds, one per preset, so the demo's masks look plausible.

The demo's backbone is untrained, so its maps do not find lesions; its training-time threshold (pixel F1-max on
the training slices) separated brain from background and marked the whole brain. This script replaces it by a
per-preset threshold that marks a fixed small share of tissue: the 99.9th percentile of the demo's map over the
foreground voxels (outside the lesion mask where there is one) of one calibration volume per modality:

- ``brain_mri``, ``mri``, ``reference``: the TCGA-LGG FLAIR the demo was trained on (CC BY 3.0), its fused mask;
- ``ct``, ``liver_ct``: the bundled sample study ``datasets/samples/hcc048_ct`` (CC BY 4.0; it has no mask).

So on these volumes about 0.1 % of tissue is marked by construction: a demonstration of the outputs, **not** a
detector (the maps stay those of an untrained backbone, and every output says so). The adapter tensors are not
changed; only the checkpoint metadata (``thresholds``, ``threshold``, ``threshold_calibration``) is rewritten.

Usage:
    python pipelines/calibrate_demo.py [--data ../shared/data] [--checkpoint CHECKPOINT]

    (default checkpoint: aaclip_med/data/demo_adapters.safetensors)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
QUANTILE = 0.999  # share of calibration tissue left above the threshold: 0.1 %
CT_SAMPLE = ROOT / "datasets" / "samples" / "hcc048_ct"


def calibrate(checkpoint: Path, data: Path) -> dict[str, float]:
    """Per-preset thresholds of the demo model (module docstring); rewrites ``checkpoint``'s metadata."""
    from aaclip_med import create_model, read_volume
    from aaclip_med.config import InferenceConfig
    from aaclip_med.inference import score_volume
    from aaclip_med.model.weights import read_adapters, write_adapters
    from aaclip_med.presets import get_preset
    from aaclip_med.transforms import foreground_mask

    recipe = tomllib.loads((ROOT / "pipelines" / "train_demo.toml").read_text(encoding="utf-8"))
    flair, flair_mask = read_volume(data / recipe["image"]), read_volume(data / recipe["mask"]).data > 0
    ct = read_volume(CT_SAMPLE)
    model = create_model("demo", adapter_weights=str(checkpoint), device="cpu", precision="fp32")
    cfg = InferenceConfig(progress=False, threshold=0.0)
    thresholds = {}
    for preset, volume, lesion in (("brain_mri", flair, flair_mask), ("mri", flair, flair_mask),
                                   ("reference", flair, flair_mask), ("ct", ct, None), ("liver_ct", ct, None)):
        heat = score_volume(model, volume, preset, config=cfg).heatmap
        tissue = foreground_mask(volume.data, get_preset(preset).foreground).astype(bool)
        if lesion is not None:
            tissue &= ~lesion
        thresholds[preset] = round(float(np.quantile(heat[tissue], QUANTILE)), 4)
    ckpt = read_adapters(checkpoint)
    meta = dict(ckpt.metadata or {})
    meta.update(
        thresholds=thresholds,
        threshold=thresholds["brain_mri"],
        threshold_source="pipelines/calibrate_demo.py",
        threshold_calibration=(
            f"per preset: the {QUANTILE:.1%} quantile of the map over the tissue (foreground outside the lesion "
            "mask) of one volume: TCGA-DU-7294 FLAIR (brain_mri, mri, reference), the bundled HCC_048 CT sample "
            "(ct, liver_ct). Marks about 0.1 % of tissue there; the untrained backbone detects nothing."
        ),
    )
    write_adapters(checkpoint, ckpt.state, meta)
    return thresholds


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Command line: calibrate and print the thresholds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data")
    default = ROOT / "aaclip_med" / "data" / "demo_adapters.safetensors"
    parser.add_argument("--checkpoint", type=Path, default=default)
    args = parser.parse_args(argv)
    thresholds = calibrate(args.checkpoint, args.data)
    print(f"thresholds written to {args.checkpoint}: {thresholds}")
    return thresholds


if __name__ == "__main__":
    main()
