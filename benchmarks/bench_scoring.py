"""Scoring speed, FLOP efficiency, end-to-end time, peak memory and accuracy of AA-CLIP inference (issue 9).

One command, one JSON::

    python benchmarks/bench_scoring.py [--quick] [--out benchmarks/results/scoring.json] [--device cuda]

Sections (keys of the JSON):

- ``per_slice``: seconds per slice of the full ``aaclip-vitl14-336`` (random backbone: speed does not depend on
  weight values) for a reference-style baseline (fp32, batch 1, text anchors re-encoded for every image, plain
  open_clip blocks under ``no_grad``) and our default path (``score_slices``: precision ``auto``, cached
  anchors, fused SDPA attention, batches, ``inference_mode``), plus the intermediate steps, measured in one run.
- ``peak``: this machine's measured matmul peak (fp32 and bf16) and the fraction the model reaches
  (analytic FLOPs per slice, cross-checked with ``FlopCounterMode``).
- ``profile``: top ops of one default batch (``torch.profiler``).
- ``end_to_end``: ``pipeline.run_study`` (read, score, export) on a 240x240x155 brain volume with the tiny model
  (the non-model overhead), the ViT-L estimate from it, and with ``--full-volume`` the real ViT-L run.
- ``memory``: peak RSS of fresh subprocesses scoring a 50- and a 150-slice volume.
- ``cohort``: cases per minute of ``run_cohort`` with 1 and 2 Dask workers (tiny model).
- ``accuracy``: max abs difference and Pearson r of the maps, fast path vs fp32 reference path, same slices.

``--quick`` runs everything with the tiny model and a few slices in a few seconds (tests/test_benchmark_smoke.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

import aaclip_med.model.aaclip as aaclip_mod
from aaclip_med.config import ExportConfig, InferenceConfig, RunConfig, get_preset
from aaclip_med.model import AACLIP, create_model
from aaclip_med.model.maps import level_anomaly_maps
from aaclip_med.model.prompts import build_prompts

ROOT = Path(__file__).resolve().parents[1]
BRATS = (
    ROOT.parent / "shared/data/brain_brats2015_deepmedic/brats2015TrainingData/test/brats_2013_pat0001_1"
    "/Flair_subtrMeanDivStd.nii.gz"
)
PRESET = "brain_mri"
FULL_MODEL, TINY_MODEL = "aaclip-vitl14-336", "aaclip-tiny"


# ---- helpers -----------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def _build(name: str, device: str, precision: str = "auto") -> AACLIP:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # untrained backbone / random adapters: on purpose here
        return create_model(name, backbone_weights="random", device=device, precision=precision)


def _slices(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@contextlib.contextmanager
def _plain_blocks() -> Iterator[None]:
    """Run the vision blocks through open_clip's own forward (nn.MultiheadAttention), as the reference code."""
    fused = aaclip_mod.sdpa_block
    aaclip_mod.sdpa_block = lambda block, x: block(x)
    try:
        yield
    finally:
        aaclip_mod.sdpa_block = fused


def reference_maps(model: AACLIP, x: torch.Tensor, anchors: torch.Tensor | None = None) -> torch.Tensor:
    """Reference-style map of a batch: fp32, ``no_grad``, plain blocks; anchors re-encoded unless given."""
    preset = get_preset(PRESET)
    with torch.no_grad(), _plain_blocks():
        if anchors is None:
            anchors = model.anchors_from_prompts(*build_prompts(preset.prompts))
        x = x.to(model.device, torch.float32)
        seg, _ = model.encode_levels(x)
        levels = level_anomaly_maps(
            seg, anchors, model.grid(x), tuple(x.shape[-2:]), preset.blur_kernel, preset.blur_sigma
        )
        return levels.sum(0)


def _per_slice(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, batch: int, device: torch.device) -> dict:
    fn(x[: min(batch, 2)])  # warm-up (allocator, primitive caches, anchor cache where used)
    times, outs = [], []
    for start in range(0, len(x), batch):
        sec, out = _timed(lambda s=start: fn(x[s : s + batch]), device)
        times.append(sec)
        outs.append(out)
    return {"s_per_slice": sum(times) / len(x), "n": len(x), "batch": batch, "batch_s": times, "_maps": outs}


# ---- 1. per-slice speed and 5. accuracy --------------------------------------------------------------------
def bench_per_slice(model: AACLIP, n_ref: int, n_fast: int, batch: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Baseline, ablation steps and default path on the same random slices; accuracy of the fast maps."""
    dev, size = model.device, model.input_size
    x = _slices(max(n_ref, n_fast), size)
    anchors = model.text_anchors(PRESET)
    steps: dict[str, Callable[[torch.Tensor], Any]] = {
        "reference (fp32, batch 1, text per image, MHA, no_grad)": lambda b: reference_maps(model, b),
        "+ cached anchors": lambda b: reference_maps(model, b, anchors),
        "+ fused SDPA attention": lambda b: model.score_slices(b, PRESET, return_levels=False).maps,
    }
    rows: dict[str, Any] = {}
    for label, fn in steps.items():
        rows[label] = _per_slice(fn, x[:n_ref], 1, dev)
    rows[f"default (score_slices, precision {model.precision}, batch {batch}, inference_mode)"] = _per_slice(
        lambda b: model.score_slices(b, PRESET, return_levels=False).maps, x[:n_fast], batch, dev
    )
    ref = torch.cat(next(iter(rows.values()))["_maps"]).float().cpu()
    fast = torch.cat(rows[list(rows)[-1]]["_maps"])[:n_ref].float().cpu()
    for row in rows.values():
        row.pop("_maps")
    base = next(iter(rows.values()))["s_per_slice"]
    for row in rows.values():
        row["speedup_vs_reference"] = base / row["s_per_slice"]
    return rows, _agreement(fast, ref, f"default path ({model.precision}, batch {batch}) vs reference fp32")


def _agreement(a: torch.Tensor, b: torch.Tensor, what: str) -> dict[str, Any]:
    a64, b64 = a.double().flatten(), b.double().flatten()
    r = float(torch.corrcoef(torch.stack([a64, b64]))[0, 1])
    return {
        "compared": what,
        "n_slices": int(a.shape[0]),
        "max_abs_diff": float((a64 - b64).abs().max()),
        "map_range": float(b64.max() - b64.min()),
        "pearson_r": r,
    }


def bench_precision_guard(name: str, device: str, n: int, precision: str) -> dict[str, Any]:
    """Maps of ``precision`` autocast vs fp32 for the same model and slices (same weights: same seed)."""
    low, ref = _build(name, device, precision), _build(name, device, "fp32")
    x = _slices(n, ref.input_size, seed=1)
    sec, fast = _timed(lambda: low.score_slices(x, PRESET, return_levels=False).maps, low.device)
    exact = ref.score_slices(x, PRESET, return_levels=False).maps
    out = _agreement(fast.float().cpu(), exact.float().cpu(), f"{name} {precision} autocast vs fp32")
    out["s_per_slice_incl_warmup"] = sec / n
    return out


# ---- 2. peak and FLOPs -------------------------------------------------------------------------------------
def matmul_peak(dtype: torch.dtype, device: torch.device, max_n: int, budget_s: float) -> dict[str, Any]:
    """Best GFLOP/s of square ``torch.mm`` / ``F.linear`` up to ``max_n``, skipping sizes over the time budget."""
    best: dict[str, Any] = {"gflops": 0.0}
    n = 512
    while n <= max_n:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        ops = (("mm", torch.mm), ("linear", torch.nn.functional.linear))
        for op, mat in ops:
            fn = functools.partial(mat, a, b)
            sec, _ = _timed(fn, device)  # warm-up doubles as the cost estimate
            reps = max(1, min(5, int(budget_s / max(sec, 1e-9))))
            sec = min(_timed(fn, device)[0] for _ in range(reps))
            rate = 2 * n**3 / sec / 1e9
            if rate > best["gflops"]:
                best = {"gflops": rate, "n": n, "op": op, "reps": reps}
            last = sec
        if last * 8 > budget_s:  # the next size costs 8x
            break
        n *= 2
    best["dtype"] = str(dtype).removeprefix("torch.")
    return best


def analytic_flops(model: AACLIP) -> dict[str, float]:
    """FLOPs (2 per multiply-add) of one slice through the vision tower, adapters and projections."""
    vis = model.clip.visual
    width, layers = vis.transformer.width, len(vis.transformer.resblocks)
    rows, cols = model.input_size // vis.patch_size[0], model.input_size // vis.patch_size[1]
    n = rows * cols + 1
    mlp = vis.transformer.resblocks[0].mlp.c_fc.out_features
    dense = 2 * n * (4 * width * width + 2 * width * mlp)
    attention = 2 * 2 * n * n * width
    patch = 2 * rows * cols * 3 * vis.patch_size[0] * vis.patch_size[1] * width
    adapters = sum(2 * n * p.numel() for p in model.image_adapter.parameters() if p.dim() == 2)  # + seg/det
    total = layers * (dense + attention) + patch + adapters
    return {
        "tokens": n,
        "blocks": layers,
        "per_block_dense": dense,
        "per_block_attention": attention,
        "per_slice": total,
        "attention_fraction": layers * attention / total,
    }


def counted_flops(model: AACLIP) -> float:
    """FLOPs of one slice by ``FlopCounterMode`` on the fused forward, plus the analytic attention FLOPs.

    The counter sees the linear layers and the patch convolution but not the CPU flash-attention op (nor
    ``nn.MultiheadAttention``'s native fast path), so ``blocks x per_block_attention`` is added.
    """
    from torch.utils.flop_counter import FlopCounterMode

    x = _slices(1, model.input_size).to(model.device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.encode_levels(x)
    ana = analytic_flops(model)
    attention_counted = model.device.type == "cuda"  # the CUDA SDPA kernels are registered
    return float(counter.get_total_flops()) + (
        0 if attention_counted else ana["blocks"] * ana["per_block_attention"]
    )


def block_precision_probe(model: AACLIP) -> dict[str, Any]:
    """Seconds of one fused vision block at batch 1 in fp32 and under bf16 autocast (why ``auto`` picks)."""
    block = model.clip.visual.transformer.resblocks[0]
    x = torch.randn(1, analytic_flops(model)["tokens"], block.attn.embed_dim, device=model.device)
    out: dict[str, Any] = {}
    for label, dtype in (("fp32", None), ("bf16_autocast", torch.bfloat16)):
        ctx = torch.autocast(model.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            aaclip_mod.sdpa_block(block, x)
            out[f"{label}_s"] = _timed(lambda: aaclip_mod.sdpa_block(block, x), model.device)[0]
    out["bf16_over_fp32"] = out["bf16_autocast_s"] / out["fp32_s"]
    return out


# ---- profile -----------------------------------------------------------------------------------------------
def profile_batch(model: AACLIP, batch: int, top: int = 10) -> list[dict[str, Any]]:
    """Top ops by self time for one default batch."""
    from torch.profiler import ProfilerActivity, profile

    x = _slices(batch, model.input_size, seed=2)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if model.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        model.score_slices(x, PRESET, return_levels=False)
        _sync(model.device)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [
        {
            "op": e.key,
            "self_s": e.self_cpu_time_total / 1e6,
            "fraction": e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in events[:top]
    ]


# ---- 3. end to end and memory ------------------------------------------------------------------------------
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
        model = _build(name, "cpu")
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
    """Peak RSS of fresh subprocesses, one per volume length."""
    rows = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--rss-child", name, str(n), str(scored or 0), str(batch)]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, check=True, env=os.environ | {"TQDM_DISABLE": "1"}
        )
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


# ---- 4. cohort ---------------------------------------------------------------------------------------------
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


# ---- main --------------------------------------------------------------------------------------------------
def machine(device: torch.device) -> dict[str, Any]:
    """Date, CPU model, cores, torch version, threads, GPU and load."""
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    flags = Path("/proc/cpuinfo").read_text()
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpu_bf16_hw": any(f in flags for f in ("amx_bf16", "avx512_bf16")),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "not measured (no GPU lent)",
        "loadavg_start": os.getloadavg()[0],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every section and return the results dict (also written to ``args.out``)."""
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    torch.set_num_threads(os.cpu_count() or 1) if device.type == "cpu" else None
    name = TINY_MODEL if args.quick else FULL_MODEL
    n_ref, n_fast = (2, 2) if args.quick else (args.baseline_images, args.default_slices)
    res: dict[str, Any] = {"machine": machine(device), "model": name, "quick": args.quick}
    model = _build(name, str(device))
    res["precision"], res["batch"] = model.precision, args.batch_size
    res["per_slice"], res["accuracy"] = bench_per_slice(model, n_ref, n_fast, args.batch_size)
    _print_speed(res)
    flops = analytic_flops(model)
    flops["counted_plain_forward"] = counted_flops(model) if args.quick or args.count_flops else None
    max_n = 512 if args.quick else 4096
    peak = {
        p: matmul_peak(dt_, device, max_n, 0.2 if args.quick else args.peak_budget)
        for p, dt_ in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    if device.type == "cuda":
        peak["fp16"] = matmul_peak(torch.float16, device, max_n, args.peak_budget)
    fast_s = list(res["per_slice"].values())[-1]["s_per_slice"]
    achieved = flops["per_slice"] / fast_s / 1e9
    res["peak"] = {
        "matmul": peak,
        "flops": flops,
        "achieved_gflops_default": achieved,
        **{f"fraction_of_{p}_peak": achieved / v["gflops"] for p, v in peak.items()},
    }
    res["peak"]["block_precision_probe"] = block_precision_probe(model)
    res["profile_batch"] = min(args.batch_size, 2)
    res["profile"] = profile_batch(model, res["profile_batch"], top=10)
    if args.speed_only:
        return _finish(res, args)
    with tempfile.TemporaryDirectory() as tmp:
        res["end_to_end"] = _end_to_end(args, model, Path(tmp), fast_s, device)
        res["cohort"] = (
            bench_cohort(Path(tmp), 2 if args.quick else 4, (1, 2)) if args.cohort else {"status": "skipped"}
        )
    res["memory"] = measure_rss(TINY_MODEL, (10, 20) if args.quick else (50, 150), None, args.batch_size)
    if not args.quick:
        res["memory"] += measure_rss(FULL_MODEL, (50, 150), args.batch_size, args.batch_size)
    guard_prec = model.precision if model.precision != "fp32" else "bf16"
    if args.quick or args.bf16_guard or guard_prec != "bf16" or res["machine"]["cpu_bf16_hw"]:
        res["accuracy_low_precision"] = bench_precision_guard(
            name, str(device), 2 if args.quick else 1, guard_prec
        )
    else:
        res["accuracy_low_precision"] = {
            "status": f"skipped: bf16 matmul here is {peak['bf16']['gflops']:.1f} "
            "GFLOP/s (no AMX/avx512-bf16), one ViT-L slice takes minutes; "
            "--bf16-guard runs it",
            "tiny_model": bench_precision_guard(TINY_MODEL, str(device), 2, "bf16"),
        }
    return _finish(res, args)


def _finish(res: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    res["machine"]["loadavg_end"] = os.getloadavg()[0]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))
    _print_rest(res)
    return res


def _end_to_end(args: argparse.Namespace, model: AACLIP, tmp: Path, fast_s: float, device: torch.device) -> dict:
    volume, what = brain_volume(tmp, 40 if args.quick else 155)
    tiny = model if args.quick else _build(TINY_MODEL, str(device))
    e2e = run_end_to_end(tiny, volume, tmp, args.batch_size)
    overhead = e2e["read_s"] + e2e["export_s"] + e2e["score_s"]  # tiny score_s: transforms + a ms-model
    out = {
        "volume": what,
        "tiny_model_run": e2e,
        "vitl_estimate_s": overhead + e2e["n_scored"] * fast_s,
        "vitl_estimate_rule": "tiny run's read+score+export (non-model overhead, upper bound) + "
        "n_scored x default s/slice",
    }
    if args.full_volume:
        out["vitl_measured"] = run_end_to_end(model, volume, tmp, args.batch_size)
    return out


def _print_speed(res: dict[str, Any]) -> None:
    print(
        f"\n{res['model']} on {res['machine']['device']} ({res['machine']['cpu']}, "
        f"{res['machine']['cores']} cores)"
    )
    print(f"{'path':<72} {'s/slice':>9} {'speedup':>8}")
    for label, row in res["per_slice"].items():
        print(f"{label:<72} {row['s_per_slice']:>9.3f} {row['speedup_vs_reference']:>7.2f}x")


def _print_rest(res: dict[str, Any]) -> None:
    pk = res["peak"]
    print(
        f"\nFLOPs/slice {pk['flops']['per_slice'] / 1e12:.3f} T; "
        f"achieved {pk['achieved_gflops_default']:.1f} GFLOP/s"
    )
    for p, v in pk["matmul"].items():
        print(
            f"  {p} matmul peak {v['gflops']:.1f} GFLOP/s (n={v['n']}, {v['op']}) -> "
            f"fraction {pk[f'fraction_of_{p}_peak']:.2f}"
        )
    print("\nprofile (one default batch), top ops by self time:")
    probe = pk["block_precision_probe"]
    print(f"one ViT block, batch 1: fp32 {probe['fp32_s']:.2f} s, bf16 autocast {probe['bf16_autocast_s']:.2f} s")
    for row in res["profile"][:8]:
        print(f"  {row['op']:<48} {row['self_s']:>8.3f} s {100 * row['fraction']:>5.1f}%")
    if "end_to_end" not in res:  # --speed-only
        return
    e2e = res["end_to_end"]
    t = e2e["tiny_model_run"]
    print(
        f"\nend to end ({e2e['volume']}, {t['n_scored']}/{t['n_slices']} scored): tiny total {t['total_s']:.1f} s "
        f"(read {t['read_s']:.1f}, score {t['score_s']:.1f}, export {t['export_s']:.1f}); "
        f"ViT-L estimate {e2e['vitl_estimate_s']:.0f} s"
    )
    if "vitl_measured" in e2e:
        print(f"  ViT-L measured: {e2e['vitl_measured']['total_s']:.0f} s")
    for row in res["memory"]:
        print(
            f"peak RSS {row['model']:<18} {row['n_slices']:>4} slices ({row['n_scored']} scored): "
            f"{row['peak_rss_gib']:.2f} GiB"
        )
    coh = res["cohort"]
    print(
        "cohort:",
        coh.get("status") or {k: round(v["cases_per_min"], 1) for k, v in coh.items() if k.startswith("workers_")},
        "cases/min",
    )
    acc, low = res["accuracy"], res["accuracy_low_precision"]
    print(f"accuracy: {acc['compared']}: max|d| {acc['max_abs_diff']:.2e}, r {acc['pearson_r']:.6f}")
    low = low.get("tiny_model", low)
    print(f"accuracy: {low['compared']}: max|d| {low['max_abs_diff']:.2e}, r {low['pearson_r']:.6f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model, 2 slices, small peak test (seconds)")
    p.add_argument("--out", default=None, help="write the results JSON here")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-size", type=int, default=InferenceConfig().batch_size)
    p.add_argument("--baseline-images", type=int, default=3)
    p.add_argument("--default-slices", type=int, default=8)
    p.add_argument("--peak-budget", type=float, default=3.0, help="seconds per matmul size in the peak test")
    p.add_argument("--count-flops", action="store_true", help="also count FLOPs with FlopCounterMode (ViT-L)")
    p.add_argument("--full-volume", action="store_true", help="also run the 155-slice volume with ViT-L")
    p.add_argument("--bf16-guard", action="store_true", help="bf16 vs fp32 maps of ViT-L even without bf16 hw")
    p.add_argument("--no-cohort", dest="cohort", action="store_false")
    p.add_argument("--speed-only", action="store_true", help="per-slice, peak and profile sections only")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point; returns the results dict."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--rss-child"]:
        name, n, scored, batch = argv[1], int(argv[2]), int(argv[3]) or None, int(argv[4])
        rss_child(name, n, scored, batch)
        return {}
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
