"""The issue-17 prototype, standalone, and the steps from it to the product path (why the memory map inverted).

Prototype (issue 17): ``aaclip-tiny``, random backbone, 224 px, the adapted ``encode_levels`` tokens, one window
for the whole volume, memory = every patch of the normal slices (brain mask >= 2000 voxels, no tumour voxel) of
the other BRATS cases, at most 20,000 per level (uniform random), per query patch the minimum cosine distance at
each level summed over the 4 levels, bilinearly resized to 240 x 240. Each case of
``../shared/data/brain_brats2015_deepmedic`` is scored in turn (every ``--stride``-th slice) against the other
three. The steps toward :func:`~aaclip_med.reference.build.build_reference` + ``score_volume``:

- ``window``: ``full`` = the volume's whole foreground range (0-100th percentile), ``clip`` = the ``brain_mri``
  preset's 0.5-99.5th percentile (what the product used before this fix);
- ``model``: ``aaclip-tiny`` (random adapters) or ``demo`` (the shipped adapters the benchmark uses);
- ``patches``: ``all`` patches of a memory slice, or ``foreground`` (>= half foreground, as the product keeps).

Nothing is written into the project but the JSON.

    python benchmarks/reference_prototype.py [--stride 4] [--out benchmarks/results/reference_prototype.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from bench_common import ROOT, machine
from sklearn.metrics import average_precision_score, roc_auc_score

from aaclip_med.intensity import foreground_mask, volume_window
from aaclip_med.model import create_model
from aaclip_med.model.aaclip import AACLIP
from aaclip_med.presets import get_preset
from aaclip_med.reference.build import FULL_WINDOW
from aaclip_med.transforms import slice_transform

DATA = ROOT.parent / "shared/data/brain_brats2015_deepmedic/brats2015TrainingData"
BOUND = 20000  # memory patches per level


def _case(case: Path) -> dict[str, np.ndarray]:
    names = {"flair": "Flair_subtrMeanDivStd", "lesion": "OTMultiClass", "brain": "brainmask"}
    arrays = {k: np.asarray(nib.load(case / f"{v}.nii.gz").dataobj, np.float32) for k, v in names.items()}
    return {"flair": arrays["flair"], "lesion": arrays["lesion"] > 0, "brain": arrays["brain"] > 0}


def _encode(model: AACLIP, flair: np.ndarray, zs: list[int], window: str) -> tuple[list[torch.Tensor], np.ndarray]:
    """Per level (S, N, D) unit tokens of the slices ``zs`` (one window for the volume), and the foreground."""
    preset = get_preset("brain_mri")
    if window == "full":
        preset = dataclasses.replace(preset, window=FULL_WINDOW)
    fg = foreground_mask(flair, preset.foreground, slice_axis=2)
    bounds = volume_window(flair, fg, preset.window)
    transform, out = slice_transform(preset, model.input_size), []
    with torch.inference_mode():
        for start in range(0, len(zs), 8):
            x = torch.stack([transform(flair[:, :, z], bounds) for z in zs[start : start + 8]])
            seg, _ = model.encode_levels(x)
            out.append([t.float() for t in seg])
    return [torch.cat(level) for level in zip(*out, strict=True)], fg


def _nearest(q: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
    best = torch.full((q.shape[0],), -2.0)
    for start in range(0, mem.shape[0], 4096):
        best = torch.maximum(best, (q @ mem[start : start + 4096].T).amax(1))
    return 1 - best


def run(model_name: str, window: str, stride: int) -> dict[str, Any]:
    """Leave-one-case-out metrics of the prototype for one model and window, both patch rules."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(model_name, backbone_weights="random", device="cpu", precision="fp32")
    cases = sorted(DATA.glob("*/brats_*"))
    data, normal, query = {}, {}, {}
    for case in cases:
        d = data[case.name] = _case(case)
        zs = [
            z
            for z in range(d["flair"].shape[2])
            if d["brain"][..., z].sum() >= 2000 and not d["lesion"][..., z].any()
        ]
        toks, fg_volume = _encode(model, d["flair"], zs, window)
        fg = torch.as_tensor(np.stack([fg_volume[..., z] for z in zs]).astype(np.float32))[:, None]
        grid = int(toks[0].shape[1] ** 0.5)
        keep = (F.interpolate(fg, size=(grid, grid), mode="area")[:, 0] >= 0.5).flatten(1)
        normal[case.name] = {"all": [t.flatten(0, 1) for t in toks], "foreground": [t[keep] for t in toks]}
        query[case.name] = _encode(model, d["flair"], list(range(0, d["flair"].shape[2], stride)), window)[0]
    rows = []
    for case in cases:
        d, toks = data[case.name], query[case.name]
        lesion, brain, flair = (d[k][..., ::stride] for k in ("lesion", "brain", "flair"))
        row: dict[str, Any] = {
            "case": case.name,
            "intensity_auroc_brain": float(roc_auc_score(lesion[brain], flair[brain])),
        }
        for rule in ("all", "foreground"):
            mem = [torch.cat([normal[c.name][rule][i] for c in cases if c != case]) for i in range(len(toks))]
            pick = torch.randperm(mem[0].shape[0], generator=torch.Generator().manual_seed(0))[:BOUND]
            total = sum(_nearest(t.flatten(0, 1), m[pick]) for t, m in zip(toks, mem, strict=True))
            n, grid = toks[0].shape[0], int(toks[0].shape[1] ** 0.5)
            heat = F.interpolate(
                torch.as_tensor(total).reshape(n, 1, grid, grid), size=flair.shape[:2], mode="bilinear"
            )
            heat_np = np.moveaxis(heat[:, 0].numpy(), 0, -1)
            row[rule] = {"n_memory": int(mem[0].shape[0]),
                         "auroc_all": float(roc_auc_score(lesion.ravel(), heat_np.ravel())),
                         "auroc_brain": float(roc_auc_score(lesion[brain], heat_np[brain])),
                         "ap_all": float(average_precision_score(lesion.ravel(), heat_np.ravel()))}  # fmt: skip
        print(model_name, window, json.dumps(row), flush=True)
        rows.append(row)
    return {"model": model_name, "window": window, "cases": rows}


def main() -> None:
    """Every (model, window) step; writes the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stride", type=int, default=4, help="score every N-th slice of the query case")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/reference_prototype.json")
    args = ap.parse_args()
    if not DATA.is_dir():
        msg = f"{DATA} is absent: this script needs the shared BRATS cases"
        raise SystemExit(msg)
    steps = [run(m, w, args.stride) for m in ("aaclip-tiny", "demo") for w in ("full", "clip")]
    out = {"machine": machine(torch.device("cpu")), "stride": args.stride, "bound": BOUND, "steps": steps}
    args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
