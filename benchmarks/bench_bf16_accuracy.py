"""bf16 accuracy guard at full size: ViT-L-14-336 @ 518, bf16 weights cast once (the AMX default) vs fp32 eager.

Maps of three central slices each of BRATS FLAIR (pat0001) and the HCC048 CT, from the same random seed-0 backbone
and random adapters: this checks numerics (map correlation r against fp32, the issue's r >= 0.999 guard), not
accuracy. The tiny model's bf16 maps on these CT slices reach only r 0.997 (tests/model/test_attention.py); this
script shows whether that carries over to the real model size.

Run: .venv/bin/python benchmarks/bench_bf16_accuracy.py [--out FILE]   (needs ../shared/data)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from aaclip_med import create_model
from aaclip_med.io import read_volume
from aaclip_med.model.backends import cpu_isa
from aaclip_med.transforms import slice_transform

SHARED = Path(__file__).resolve().parents[2] / "shared"  # ../shared beside the project root
CASES = {
    "brats_flair": (
        "data/brain_brats2015_deepmedic/brats2015TrainingData/test/brats_2013_pat0001_1/Flair_subtrMeanDivStd.nii.gz",
        "brain_mri",
    ),
    "hcc048_ct": ("data/liver_ct_hcc_tace_seg_hcc048/HCC048_portal_venous", "liver_ct"),
}


def _r(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1])


def _timed_maps(model: torch.nn.Module, x: torch.Tensor, preset: str) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    maps = model.score_slices(x, preset).maps.float()
    return maps, time.perf_counter() - start


def main() -> None:
    """Print and write the per-case correlation of bf16 and fp32 maps."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results/bf16_accuracy_vitl.json")
    args = parser.parse_args()
    common = {"backbone_weights": "random", "image_size": 518, "attention": "sdpa"}
    fp32 = create_model("aaclip-vitl14-336", precision="fp32", backend="eager", **common)
    bf16 = create_model("aaclip-vitl14-336", precision="bf16", backend="cast", **common)
    out: dict[str, object] = {"isa": cpu_isa(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    for name, (rel, preset) in CASES.items():
        vol = read_volume(SHARED / rel)
        transform = slice_transform(preset, 518)
        ks = [vol.n_slices * f // 8 for f in (3, 4, 5)]
        x = torch.stack([transform(vol.get_slice(k, vol.slice_axis)) for k in ks])
        a, t32 = _timed_maps(fp32, x, preset)
        b, t16 = _timed_maps(bf16, x, preset)
        out[name] = {
            "slices": ks,
            "r_all": _r(a, b),
            "r_per_slice": [_r(a[i], b[i]) for i in range(len(ks))],
            "max_abs": float((a - b).abs().max()),
            "map_range": float(a.max() - a.min()),
            "s_fp32": t32,
            "s_bf16": t16,
        }
        print(name, json.dumps(out[name]))
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
