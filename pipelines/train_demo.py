"""Train the shipped ``demo`` adapters: ``aaclip-tiny`` on one freely licensed brain MRI, in a few CPU minutes.

This model shows the pipeline (data -> two-stage training -> calibrated safetensors checkpoint -> ``demo`` model),
**not clinical accuracy**: the backbone is an untrained random network (seed 0), the training set is a single
volume and the schedule is short. Never use its maps for diagnosis.

Data (read from ``--data``, default ``../shared/data`` relative to the project root; nothing is copied into the
project): the TCGA-LGG FLAIR of subject TCGA-DU-7294, brain-extracted (The Cancer Imaging Archive, CC BY 3.0),
and its fused tumour mask ``fusion/mav.nii.gz`` (BraTS-Toolkit/BrainLes algorithm outputs, Apache-2.0). Every
axial slice with brain is a training sample; a slice is anomalous when the mask has a voxel > 0. There is one
case, so no validation split: the last epoch is kept and the threshold is calibrated on the training slices
(recorded as ``threshold_source`` in the checkpoint metadata); ``pipelines/calibrate_demo.py`` then replaces it by
one threshold per preset that marks about 0.1 % of tissue (the F1-max one marked the whole brain).

Usage:
    python pipelines/train_demo.py [--data ../shared/data] [--out aaclip_med/data/demo_adapters.safetensors]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from aaclip_med.config import load_train_config
from aaclip_med.training import train

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> Path:
    """Train the demo adapters and copy them to the recipe's output path; returns that path."""
    recipe_path = ROOT / "pipelines" / "train_demo.toml"
    recipe = tomllib.loads(recipe_path.read_text(encoding="utf-8"))
    config = load_train_config(recipe_path)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / recipe["output"])
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    image, mask = args.data / recipe["image"], args.data / recipe["mask"]
    for path in (image, mask):
        if not path.is_file():
            parser.error(f"{path} not found; pass --data pointing at the shared data folder")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "manifest.csv"
        manifest.write_text(f"case_id,image,mask,split\n{recipe['case']},{image.resolve()},{mask.resolve()},train\n",
                            encoding="utf-8")
        written = train(manifest, Path(tmp) / "run", config, progress=args.progress)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(written, args.out)
    sys.path.insert(0, str(ROOT / "pipelines"))
    from calibrate_demo import calibrate  # per-preset thresholds replace the training-time F1-max one

    calibrate(args.out, args.data)
    print(f"demo adapters: {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    return args.out


if __name__ == "__main__":
    main()
