"""Evidence for the normal-reference mode on BRATS (issue 17): unseen cases against memories of other cases.

Each case of ``../shared/data/brain_brats2015_deepmedic`` is scored in turn as the unseen case (leave one case
out), against memories built with :func:`~aaclip_med.reference.build.build_reference` from the normal slices (no
tumour voxel) of the three other cases, with 1, 4, 16 and all of them; it is scored with
:func:`~aaclip_med.inference.score_volume` as text only, memory only and fused, beside the raw FLAIR intensity.
For the largest memory also: the memory map blurred, the memory built and scored with the preset's clipped window
(``window="preset"``, the behaviour before the fix), and the text map under the memory's full-range window (what
the fused map's text part sees). Pixel AUROC over all voxels and inside the brain mask, and AP over all voxels.
Every ``--stride``-th slice of the unseen case is scored (a temporary NIfTI, nothing is written into the project)
to keep the run in CPU minutes. The backbone is random (``demo`` at 224 px).

    python benchmarks/bench_reference.py [--stride 4] [--out benchmarks/results/reference_brats.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from bench_common import ROOT, machine
from sklearn.metrics import average_precision_score, roc_auc_score

from aaclip_med.config import InferenceConfig
from aaclip_med.inference import score_volume
from aaclip_med.io import read_volume
from aaclip_med.model import create_model
from aaclip_med.model.aaclip import AACLIP
from aaclip_med.reference.build import build_reference, memory_preset

DATA = ROOT.parent / "shared/data/brain_brats2015_deepmedic/brats2015TrainingData"
SIZES: tuple[int | None, ...] = (1, 4, 16, None)  # None: all normal slices of the other cases
BLUR = 1.5  # memory-map blur sigma in patches (9x9 kernel, the preset's text-map blur) measured against none


def _strided(case: Path, stride: int, tmp: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """Every ``stride``-th axial slice of a case as a temporary NIfTI, with its tumour and brain masks."""
    arrays = {}
    for name in ("Flair_subtrMeanDivStd", "OTMultiClass", "brainmask"):
        img = nib.load(case / f"{name}.nii.gz")
        arrays[name] = np.asarray(img.dataobj)[:, :, ::stride]
        affine = img.affine.copy()
    affine[:, 2] *= stride
    path = tmp / f"{case.name}.nii.gz"
    nib.save(nib.Nifti1Image(arrays["Flair_subtrMeanDivStd"].astype(np.float32), affine), path)
    return path, arrays["Flair_subtrMeanDivStd"], arrays["OTMultiClass"] > 0, arrays["brainmask"] > 0


def _metrics(heat: np.ndarray, lesion: np.ndarray, brain: np.ndarray) -> dict[str, float]:
    return {"auroc_all": float(roc_auc_score(lesion.ravel(), heat.ravel())),
            "auroc_brain": float(roc_auc_score(lesion[brain], heat[brain])),
            "ap_all": float(average_precision_score(lesion.ravel(), heat.ravel()))}  # fmt: skip


def evaluate_case(case: Path, others: list[Path], model: AACLIP, stride: int, tmp: Path) -> dict[str, Any]:
    """Metrics of every map and memory size for one unseen case."""
    path, flair, lesion, brain = _strided(case, stride, tmp)
    manifest = tmp / f"normals_for_{case.name}.csv"
    rows = [f"{c.name},{c}/Flair_subtrMeanDivStd.nii.gz,{c}/OTMultiClass.nii.gz" for c in others]
    manifest.write_text("case_id,image,mask\n" + "\n".join(rows) + "\n")
    volume = read_volume(path)
    # voxel order: read_volume keeps the NIfTI array, so the masks index the heatmaps directly
    out: dict[str, Any] = {"case": case.name, "slices_scored": int(flair.shape[2]),
                           "intensity": _metrics(flair, lesion, brain), "sizes": {}}  # fmt: skip
    for size in SIZES:
        row: dict[str, Any] = {}
        windows = ("full", "preset") if size is None else ("full",)  # the preset's clipped window: before the fix
        for window in windows:
            ref = tmp / f"ref_{case.name}_{size}_{window}.safetensors"
            t0 = time.perf_counter()
            mem = build_reference(manifest, ref, model=model, preset="brain_mri", max_slices=size, seed=0,
                                  window=window)  # fmt: skip
            row.update(n_slices=mem.metadata["n_slices"], n_patches=mem.n_patches)
            row[f"build_s_{window}"] = time.perf_counter() - t0
            variants = [("memory", 0.0), ("fused", 0.0)]
            if size is None and window == "full":  # text does not depend on the memory; blur on the largest one
                variants += [("text", 0.0), ("memory", BLUR), ("fused", BLUR)]
            for fusion, blur in variants:
                cfg = InferenceConfig(reference=str(ref), fusion=fusion, memory_blur=blur, progress=False)
                t0 = time.perf_counter()
                res = score_volume(model, volume, "brain_mri", config=cfg)
                suffix = (f"_blur{blur:g}" if blur else "") + ("_preset_window" if window == "preset" else "")
                key = fusion + suffix
                row[key] = {**_metrics(res.heatmap, lesion, brain), "score_s": time.perf_counter() - t0}
        if size is None:
            out["text"] = row.pop("text")
            res = score_volume(model, volume, memory_preset("brain_mri"), config=InferenceConfig(progress=False))
            out["text_full_window"] = _metrics(res.heatmap, lesion, brain)
        out["sizes"]["all" if size is None else str(size)] = row
        print(case.name, size, json.dumps(row), flush=True)
    return out


def main() -> None:
    """Run every unseen case and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stride", type=int, default=4, help="score every N-th slice of the unseen case")
    ap.add_argument("--cases", choices=("all", "test"), default="all", help="unseen: all four, or the test split")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/reference_brats.json")
    args = ap.parse_args()
    if not DATA.is_dir():
        msg = f"{DATA} is absent: this benchmark needs the shared BRATS cases"
        raise SystemExit(msg)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = create_model("demo", backbone_weights="random", device="cpu")
    cases = sorted(DATA.glob("*/brats_*"))
    unseen = [c for c in cases if args.cases == "all" or c.parent.name == "test"]
    results = {"machine": machine(torch.device("cpu")), "model": "demo (aaclip-tiny, random backbone) at 224 px",
               "precision": model.precision, "stride": args.stride, "window": "full (memory default)",
               "cases": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for case in unseen:
            others = [c for c in cases if c != case]
            results["cases"].append(evaluate_case(case, others, model, args.stride, Path(tmp)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
