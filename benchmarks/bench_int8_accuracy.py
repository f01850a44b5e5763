"""Accuracy of ``precision="int8"`` against fp32 on real slices (benchmarks/README.md, int8 section).

    python benchmarks/bench_int8_accuracy.py [--model aaclip-vitl14-336] [--out results/int8_accuracy_vitl.json]

Two slices each of the BraTS FLAIR in ../shared/data (when present) and of the bundled CT sample
(datasets/samples/hcc048_ct), through read_volume and the preset's slice transform, scored by the fp32 model, the
int8 model (MLP and attention projections quantised) and an MLP-only int8 variant; random backbone
(``backbone_weights="random"``, seed 0), so the three share their weights. Guard: Pearson r >= 0.999.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from bench_common import agreement, build_model, real_slices

from aaclip_med.model.quantize import quantize_vision_


def _compare(a: torch.Tensor, ref: torch.Tensor, what: str) -> dict[str, Any]:
    a, ref = a.double(), ref.double()
    pairs = zip(a, ref, strict=True)
    return {
        **agreement(a, ref, what),
        "per_slice_r": [float(torch.corrcoef(torch.stack([s.flatten(), r.flatten()]))[0, 1]) for s, r in pairs],
        "max_score_diff": float((a.flatten(1).amax(1) - ref.flatten(1).amax(1)).abs().max()),
    }


def run(name: str) -> dict[str, Any]:
    """Maps of fp32, int8 and int8-MLP-only models on the real slices; their agreement with fp32."""
    models = {
        label: build_model(name, "cpu", prec, "eager")
        for label, prec in (("fp32", "fp32"), ("int8", "int8"), ("int8_mlp_only", "fp32"))
    }
    quantize_vision_(models["int8_mlp_only"].clip, attention=False)
    out: dict[str, Any] = {"model": name, "backbone": "random (seed 0)", "cases": {}}
    for case, (x, preset) in real_slices(models["fp32"].input_size, 2).items():
        maps = {}
        for label, model in models.items():
            t0 = time.perf_counter()
            maps[label] = model.score_slices(x, preset, return_levels=False).maps
            print(f"{case} {label}: {(time.perf_counter() - t0) / len(x):.2f} s/slice (incl. anchors)")
        out["cases"][case] = {
            "preset": preset,
            **{
                label: _compare(maps[label], maps["fp32"], f"{label} vs fp32")
                for label in ("int8", "int8_mlp_only")
            },
        }
        for label in ("int8", "int8_mlp_only"):
            row = out["cases"][case][label]
            print(f"  {label} vs fp32: max|d| {row['max_abs_diff']:.3e} (range {row['map_range']:.2f}), "
                  f"r {row['pearson_r']:.6f}")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point; returns the results dict."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="aaclip-vitl14-336")
    p.add_argument("--out", default=None, help="write the results JSON here")
    args = p.parse_args(argv)
    res = run(args.model)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
