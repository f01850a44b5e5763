"""The ``end_to_end``, ``memory`` and ``cohort`` sections of ``bench_scoring.py``: whole volumes through
``run_study``, peak RSS of fresh processes, and cases per minute of ``run_cohort``.

Run as a script, it is the child of ``measure_rss``: ``python bench_volume.py MODEL N_SLICES SCORED BATCH``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import BRATS, PRESET, TINY_MODEL, build_model

from aaclip_med.config import ExportConfig, InferenceConfig, RunConfig
from aaclip_med.model import AACLIP


def brain_volume(folder: Path, n_slices: int = 155, scored: int | None = None) -> tuple[Path, str]:
    """The real BraTS FLAIR (240x240x155) when present, else a synthetic volume of the same shape.

    ``scored`` keeps foreground in only that many central slices (others zero), so a ViT-L run stays short while
    the arrays have the full size.
    """
    import nibabel as nib

    if BRATS.is_file() and n_slices == 155 and scored is None:
        return BRATS, "real BraTS 2013 pat0001 FLAIR"
    rng = np.random.default_rng(0)
    grid = np.mgrid[:240, :240, :n_slices].astype(np.float32)
    centre = np.array([120, 120, n_slices / 2], np.float32)[:, None, None, None]
    radius = np.sqrt((((grid - centre) / np.array([90, 100, n_slices / 2.2])[:, None, None, None]) ** 2).sum(0))
    data = np.where(radius < 1, 1 + 0.2 * rng.standard_normal(radius.shape), 0).astype(np.float32)
    if scored is not None:
        keep = np.zeros(n_slices, bool)
        keep[n_slices // 2 - scored // 2 : n_slices // 2 - scored // 2 + scored] = True
        data[..., ~keep] = 0
    path = folder / f"synthetic_{n_slices}.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0])), path)
    return path, f"synthetic brain-shaped 240x240x{n_slices}"


def run_end_to_end(model: AACLIP, volume: Path, folder: Path, batch: int) -> dict[str, Any]:
    """``run_study`` (read, score, export) with the shipped defaults; stage timings from its run.json."""
    from aaclip_med.pipeline import run_study

    cfg = RunConfig(preset=PRESET, inference=InferenceConfig(batch_size=batch, progress=False))
    t0 = time.perf_counter()
    out = run_study(volume, folder / f"e2e_{model.spec.name}_{time.time_ns()}", config=cfg, model=model)
    total = time.perf_counter() - t0
    timings = {k: float(v) for k, v in json.loads((out.out_dir / "run.json").read_text())["timings"].items()}
    timings["export_s"] = total - sum(timings.values())  # run.json is written before export ends
    return {
        "model": model.spec.name,
        "total_s": total,
        "n_slices": int(out.volume.n_slices),
        "n_scored": int(out.result.scored.sum()),
        **timings,
    }


def end_to_end(
    model: AACLIP, folder: Path, s_per_slice: float, batch: int, quick: bool, full_volume: bool
) -> dict[str, Any]:
    """Tiny-model ``run_study`` of the brain volume (non-model overhead), the ViT-L estimate from it and
    ``s_per_slice``, and with ``full_volume`` the measured run of ``model``."""
    volume, what = brain_volume(folder, 40 if quick else 155)
    tiny = model if quick else build_model(TINY_MODEL, str(model.device))
    e2e = run_end_to_end(tiny, volume, folder, batch)
    overhead = e2e["read_s"] + e2e["export_s"] + e2e["score_s"]  # tiny score_s: transforms + a ms-model
    out = {
        "volume": what,
        "tiny_model_run": e2e,
        "vitl_estimate_s": overhead + e2e["n_scored"] * s_per_slice,
        "vitl_estimate_rule": "tiny run's read+score+export (non-model overhead, upper bound) + "
        "n_scored x default s/slice",
    }
    if full_volume:
        out["vitl_measured"] = run_end_to_end(model, volume, folder, batch)
    return out


def peak_rss_gib() -> float:
    """Peak RSS of this process: ``VmHWM`` on Linux, else ``ru_maxrss``.

    Linux keeps ``ru_maxrss`` across fork+exec, so a child started by a 3 GiB parent reports at least 3 GiB;
    ``VmHWM`` starts afresh at exec.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def rss_child(name: str, n_slices: int, scored: int | None, batch: int) -> None:
    """Subprocess body: build the model, score one volume, print its peak RSS as JSON."""
    from aaclip_med.inference import score_volume
    from aaclip_med.io import read_volume

    with tempfile.TemporaryDirectory() as tmp:
        path, what = brain_volume(Path(tmp), n_slices, scored)
        model = build_model(name, "cpu")
        rss_model = peak_rss_gib()
        t0 = time.perf_counter()
        res = score_volume(
            model, read_volume(path), PRESET, config=InferenceConfig(batch_size=batch), progress=False
        )
        sec = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "model": name,
                "precision": model.precision,  # after the run: auto's int8 guard has decided
                "int8_guard": model.int8_guard,
                "volume": what,
                "n_slices": n_slices,
                "n_scored": int(res.scored.sum()),
                "batch": batch,
                "score_s": sec,
                "peak_rss_after_build_gib": rss_model,
                "peak_rss_gib": peak_rss_gib(),
            }
        )
    )


def measure_rss(name: str, sizes: tuple[int, ...], scored: int | None, batch: int) -> list[dict[str, Any]]:
    """Peak RSS of fresh subprocesses (this file as a script), one per volume length."""
    rows = []
    for n in sizes:
        cmd = [sys.executable, __file__, name, str(n), str(scored or 0), str(batch)]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, check=True, env=os.environ | {"TQDM_DISABLE": "1"}
        )
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


def bench_cohort(folder: Path, n_cases: int, workers: tuple[int, ...]) -> dict[str, Any]:
    """Cases per minute of ``run_cohort`` (tiny model, synthetic 240x240x60 volumes) per Dask worker count."""
    try:
        from aaclip_med.cohort import run_cohort
    except ImportError:
        return {"status": "n/a (cohort not available)"}
    src = folder / "cohort_in"
    src.mkdir()
    vol, _ = brain_volume(folder, 60)
    for i in range(n_cases):
        (src / f"case{i:02d}.nii.gz").write_bytes(vol.read_bytes())
    inf = InferenceConfig(model=TINY_MODEL, backbone_weights="random", device="cpu", progress=False)
    cfg = RunConfig(preset=PRESET, inference=inf, export=ExportConfig(overlays=0, html=False))
    out: dict[str, Any] = {
        "model": TINY_MODEL,
        "n_cases": n_cases,
        "volume": "synthetic 240x240x60",
        "note": "includes starting the Dask LocalCluster and building the model per worker",
    }
    for w in workers:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            res = run_cohort(src, folder / f"cohort_out_{w}", config=cfg, workers=w, progress=False)
        sec = time.perf_counter() - t0
        out[f"workers_{w}"] = {
            "seconds": sec,
            "cases_per_min": 60 * (n_cases - res.n_failed) / sec,
            "failed": res.n_failed,
            "failures": [f.get("message") for f in res.failures],
        }
    return out


if __name__ == "__main__":
    rss_child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) or None, int(sys.argv[4]))
