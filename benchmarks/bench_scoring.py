"""Scoring speed, FLOP efficiency, end-to-end time, peak memory and accuracy of AA-CLIP inference (issue 9).

One command, one JSON::

    python benchmarks/bench_scoring.py [--quick] [--out benchmarks/results/scoring.json] [--device cuda]

Sections (keys of the JSON):

- ``per_slice``: seconds per slice of the full ``aaclip-vitl14-336`` (random backbone: speed does not depend on
  weight values) for a reference-style baseline (fp32, batch 1, text anchors re-encoded for every image, plain
  open_clip blocks under ``no_grad``) and our default path (``score_slices``: precision ``auto``, cached
  anchors, fused SDPA attention, batches, ``inference_mode``), plus the intermediate steps, measured in one run;
  an ``fp32`` row where the default is not fp32; on CPU also the opt-in ``precision="int8"`` path (dynamic int8
  vision linears) where the default is not int8 already, and the GEMM attention kernels (``--attention``,
  ``aaclip_med.model.attention``) on a PyTorch fp32/bf16 engine, timed interleaved with the default batch by
  batch; it prints each kernel's speed against fused SDPA on the same engine.
- ``int8_guard``: where ``auto`` picked guarded int8 (CPUs without AMX), the guard's verdict on its first call
  (BraTS FLAIR slices when present, else random ones) and that call's time; else ``"not applicable"``.
- ``precision_auto``: how ``precision="auto"`` chose (``precision_choice``; on AMX-INT8 CPUs the one-block probe's
  ``precision_seconds``, bf16 against int8) and the int8 engine.
- ``attention_auto``: the kernel ``attention="auto"`` chose on this machine for the default (and the eager
  previous default) and how: ``rule``, ``measured`` or ``cached`` (the probe of ``aaclip_med.model.tuning``, with
  its seconds per kernel), ``env`` or ``asked``.
- ``peak`` (``bench_peak.py``): this machine's square-matmul burst peak (fp32 and bf16), the sustained rate of the
  model's own MLP GEMM shape, and the fraction of each the model reaches (analytic FLOPs per slice,
  cross-checked with ``FlopCounterMode``).
- ``profile`` (``bench_peak.py``): top ops of one default batch (``torch.profiler``).
- ``end_to_end`` (``bench_volume.py``, as the next two): ``pipeline.run_study`` (read, score, export) on a
  240x240x155 brain volume with the tiny model (the non-model overhead), the ViT-L estimate from it, and with
  ``--full-volume`` the real ViT-L run.
- ``memory``: peak RSS of fresh subprocesses scoring a 50- and a 150-slice volume.
- ``cohort``: cases per minute of ``run_cohort`` with 1 and 2 Dask workers (tiny model).
- ``accuracy``: max abs difference and Pearson r of the maps, fast path vs fp32 reference path, same slices;
  ``accuracy_int8``: int8 maps vs the fp32 default maps of the same slices (guard: r >= 0.999).

``--quick`` runs everything with the tiny model and a few slices in a few seconds (tests/test_benchmark_smoke.py).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from bench_common import (
    FULL_MODEL,
    PRESET,
    TINY_MODEL,
    agreement,
    build_model,
    isa_line,
    machine,
    random_slices,
    real_slices,
    timed,
)
from bench_peak import peak_section, profile_batch
from bench_targets import print_targets, targets
from bench_volume import bench_cohort, end_to_end, measure_rss

import aaclip_med.model.aaclip as aaclip_mod
from aaclip_med.config import InferenceConfig
from aaclip_med.model import AACLIP
from aaclip_med.model.maps import level_anomaly_maps
from aaclip_med.model.prompts import build_prompts
from aaclip_med.presets import get_preset


# ---- reference path and per-slice timing -------------------------------------------------------------------
@contextlib.contextmanager
def _plain_blocks() -> Iterator[None]:
    """Run the vision blocks through open_clip's own forward (nn.MultiheadAttention), as the reference code."""
    fused = aaclip_mod.sdpa_block
    aaclip_mod.sdpa_block = lambda block, x, *_: block(x)
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
        maps: torch.Tensor = levels.sum(0)
        return maps


def _per_slice(
    fn: Callable[[torch.Tensor], Any], x: torch.Tensor, batch: int, device: torch.device
) -> dict[str, Any]:
    return _per_slice_interleaved([fn], x, batch, device)[0]


def _per_slice_interleaved(
    fns: list[Callable[[torch.Tensor], Any]], x: torch.Tensor, batch: int, device: torch.device
) -> list[dict[str, Any]]:
    """Time several paths batch by batch in turn, so that a change of machine load hits them alike."""
    for fn in fns:
        fn(x[: min(batch, 2)])  # warm-up (allocator, primitive caches, anchor cache where used)
    times: list[list[float]] = [[] for _ in fns]
    outs: list[list[Any]] = [[] for _ in fns]
    for start in range(0, len(x), batch):
        for i, fn in enumerate(fns):
            sec, out = timed(functools.partial(fn, x[start : start + batch]), device)
            times[i].append(sec)
            outs[i].append(out)
    return [
        {"s_per_slice": sum(t) / len(x), "n": len(x), "batch": batch, "batch_s": t, "_maps": o,
         "loadavg_after": os.getloadavg()[0]}
        for t, o in zip(times, outs, strict=True)
    ]  # fmt: skip


# ---- 1. per-slice speed and 5. accuracy --------------------------------------------------------------------
def _maps_of(model: AACLIP, kernel: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Maps of ``model``; with ``kernel``, scored with its vision attention set to it for the call."""

    def run(b: torch.Tensor) -> torch.Tensor:
        saved, model.attention = model.attention, kernel or model.attention
        try:
            maps: torch.Tensor = model.score_slices(b, PRESET, return_levels=False).maps
            return maps
        finally:
            model.attention = saved

    return run


def attention_label(model: AACLIP, kernel: str, batch: int) -> str:
    """Row name of a GEMM attention kernel in ``per_slice`` (``model``: the PyTorch engine it runs on)."""
    return f"attention {kernel} (score_slices, {model.precision}, backend {model.backend}, batch {batch})"


def bench_per_slice(
    eager: AACLIP,
    model: AACLIP,
    n_ref: int,
    n_fast: int,
    batch: int,
    int8: AACLIP | None = None,
    kernels: tuple[str, ...] = (),
    fp32: AACLIP | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """Per-slice rows and accuracy of the default (and int8) maps; every row timed on the same random slices.

    Baseline and ablation steps (``eager``: plain PyTorch engine at the precision auto resolves to, fp32 where
    that is guarded int8), then ``eager`` itself in batches (the previous default, or the fp32 row), an ``fp32``
    model where neither is fp32, the default ``model`` (precision and backend auto, its int8 guard already run),
    the GEMM attention ``kernels`` on the default's engine (``eager`` where the default runs OpenVINO or int8)
    and int8, interleaved batch by batch; accuracy of the default maps (and of each kernel's, row key
    ``accuracy``) against the fp32 reference-style maps.
    """
    dev, size = model.device, model.input_size
    x = random_slices(max(n_ref, n_fast), size)
    anchors = eager.text_anchors(PRESET)
    steps: dict[str, Callable[[torch.Tensor], Any]] = {
        "reference (fp32, batch 1, text per image, MHA, no_grad)": lambda b: reference_maps(eager, b),
        "+ cached anchors": lambda b: reference_maps(eager, b, anchors),
        f"+ fused SDPA attention ({eager.precision}, eager)": lambda b: eager.score_slices(
            b, PRESET, return_levels=False
        ).maps,
    }
    rows: dict[str, Any] = {}
    for label, fn in steps.items():
        rows[label] = _per_slice(fn, x[:n_ref], 1, dev)
    paths = {}
    if eager is not model:
        kind = "fp32" if eager.precision == "fp32" and model.precision == "int8" else "previous default"
        paths[f"{kind} (score_slices, {eager.precision}, backend eager, batch {batch})"] = eager
    if fp32 is not None and fp32 is not eager:
        paths[f"fp32 (score_slices, fp32, backend {fp32.backend}, batch {batch})"] = fp32
    paths[default_label(model, batch)] = model
    fns = [_maps_of(m) for m in paths.values()]
    torch_model = pytorch_engine(model, eager)
    for kernel in kernels:
        paths[attention_label(torch_model, kernel, batch)] = torch_model
        fns.append(_maps_of(torch_model, kernel))
    if int8 is not None:
        paths[f"int8 opt-in (score_slices, precision {int8.precision}, batch {batch}, inference_mode)"] = int8
        fns.append(_maps_of(int8))
    rows.update(zip(paths, _per_slice_interleaved(fns, x[:n_fast], batch, dev), strict=True))
    ref = torch.cat(next(iter(rows.values()))["_maps"]).float().cpu()
    default_maps = torch.cat(rows[default_label(model, batch)]["_maps"]).float().cpu()
    fast = default_maps[:n_ref]
    int8_acc = None
    if int8 is not None:
        int8_maps = torch.cat(rows[list(paths)[-1]]["_maps"]).float().cpu()
        int8_acc = agreement(int8_maps, default_maps, f"int8 vs {model.precision} default path, same slices")
    for kernel in kernels:
        label = attention_label(torch_model, kernel, batch)
        maps = torch.cat(rows[label]["_maps"]).float().cpu()[:n_ref]
        rows[label]["accuracy"] = agreement(maps, ref, f"attention {kernel} vs reference fp32")
        rows[label]["same_engine_row"] = default_label(model, batch) if torch_model is model else list(paths)[0]
        rows[label]["vs_kernel"] = torch_model.attention
    for row in rows.values():
        row.pop("_maps")
    base = next(iter(rows.values()))["s_per_slice"]
    for row in rows.values():
        row["speedup_vs_reference"] = base / row["s_per_slice"]
    acc = agreement(fast, ref, f"default ({model.precision}, {model.backend}, batch {batch}) vs reference fp32")
    return rows, acc, int8_acc


def pytorch_engine(model: AACLIP, eager: AACLIP) -> AACLIP:
    """The model the attention kernels are timed on: the default, or ``eager`` where it runs OpenVINO or int8."""
    return model if model.backend != "openvino" and model.precision != "int8" else eager


def compared_kernels(asked: str, engine: AACLIP) -> tuple[str, ...]:
    """Kernels of ``--attention`` timed against ``engine``'s own (auto's choice): that one is replaced by sdpa."""
    kernels = ("sdpa" if k == engine.attention else k for k in asked.split(",") if k and k != "none")
    return tuple(dict.fromkeys(kernels))


def attention_auto(model: AACLIP) -> dict[str, Any]:
    """What ``attention="auto"`` chose for ``model`` on this machine and how (``aaclip_med.model.tuning``)."""
    return {"kernel": model.attention, "how": model.attention_choice, "seconds": model.attention_seconds}


def settle_int8_guard(model: AACLIP) -> dict[str, Any] | str:
    """Run a guarded model's first call (its int8 guard) on ``CPU_CHUNK`` slices; the verdict and the call's time.

    Real slices (BraTS FLAIR) where present, as the guard sees a user's images; else random ones. Models that are
    not guarded return their ``int8_guard`` (``"not applicable"``).
    """
    if model.int8_guard != "not run":
        return model.int8_guard
    n = aaclip_mod.CPU_CHUNK
    real = real_slices(model.input_size, n)
    fallback = (random_slices(n, model.input_size, seed=2), PRESET, "random")
    x, preset, source = next(((v[0], v[1], k) for k, v in real.items()), fallback)
    sec, _ = timed(lambda: model.score_slices(x, preset, return_levels=False), model.device)
    assert isinstance(model.int8_guard, dict)
    return {**model.int8_guard, "precision_after": model.precision, "guard_slices": source, "first_call_s": sec}


def default_label(model: AACLIP, batch: int) -> str:
    """Row name of the default path in ``per_slice``."""
    return f"default (score_slices, {model.precision}, backend {model.backend}, batch {batch})"


def bench_precision_guard(name: str, device: str, n: int, precision: str) -> dict[str, Any]:
    """Maps of ``precision`` autocast vs fp32 for the same model and slices (same weights: same seed)."""
    low, ref = build_model(name, device, precision), build_model(name, device, "fp32", "eager")
    x = random_slices(n, ref.input_size, seed=1)
    sec, fast = timed(lambda: low.score_slices(x, PRESET, return_levels=False).maps, low.device)
    exact = ref.score_slices(x, PRESET, return_levels=False).maps
    out = agreement(fast.float().cpu(), exact.float().cpu(), f"{name} {precision} autocast vs fp32")
    out["s_per_slice_incl_warmup"] = sec / n
    return out


# ---- main --------------------------------------------------------------------------------------------------
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
    if args.short:
        args.speed_only, args.baseline_images, args.default_slices, args.peak_budget = True, 2, 8, 1.0
    name = TINY_MODEL if args.quick else FULL_MODEL
    n_ref, n_fast = (2, 2) if args.quick else (args.baseline_images, args.default_slices)
    gpu = f"; GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(isa_line() + gpu, flush=True)
    res: dict[str, Any] = {"machine": machine(device), "model": name, "quick": args.quick, "isa_line": isa_line()}
    model = build_model(name, str(device), "auto", args.backend)  # the default: precision and backend auto
    res["int8_guard"] = settle_int8_guard(model)  # guarded int8 (CPUs without AMX): decided on the first call
    guarded = isinstance(res["int8_guard"], dict)
    # reference rows and the previous default (the same model where the default runs eager, e.g. on CUDA)
    eager = model if model.backend == "eager" and not guarded else build_model(
        name, str(device), "fp32" if guarded else "auto", "eager"
    )
    fp32 = None
    if model.precision != "fp32":  # the fp32 row beside a bf16/fp16/int8 default
        fp32 = eager if eager.precision == "fp32" else build_model(name, str(device), "fp32", "eager")
    with_int8 = args.int8 and device.type == "cpu" and model.precision != "int8"  # opt-in row, unless the default
    int8 = build_model(name, str(device), "int8", "eager") if with_int8 else None
    res["precision"], res["backend"], res["batch"] = model.precision, model.backend, args.batch_size
    if res["machine"]["isa_emulation"] is not None:
        check = res["machine"]["isa_emulation"]["check"]
        print(f"  kernels under the cap: {', '.join(f'{k} {v}' for k, v in check.items())}", flush=True)
        if model.backend == "openvino":
            print("  note: OpenVINO honours ONEDNN_MAX_CPU_ISA in its oneDNN and JIT kernels, but runs some "
                  "FullyConnected layers on MLAS (own ISA dispatch): the default row is not a clean emulation; "
                  "--backend eager is", flush=True)  # fmt: skip
    meta = model.metadata()  # how precision "auto" chose (AMX-INT8 CPUs: a one-block probe, bf16 vs int8)
    res["precision_auto"] = {k: meta.get(k) for k in ("precision_choice", "precision_seconds", "int8_engine")}
    res["attention_auto"] = {
        f"{m.precision}, backend {m.backend}": attention_auto(m) for m in dict.fromkeys((model, eager))
    }
    kernels = compared_kernels(args.attention, pytorch_engine(model, eager))
    res["per_slice"], res["accuracy"], res["accuracy_int8"] = bench_per_slice(
        eager, model, n_ref, n_fast, args.batch_size, int8, kernels, fp32
    )
    _print_speed(res)
    fast_s = res["per_slice"][default_label(model, args.batch_size)]["s_per_slice"]
    budget = 0.2 if args.quick else args.peak_budget
    res["peak"] = peak_section(eager, fast_s, 512 if args.quick else 4096, budget, args.quick or args.count_flops,
                               model.precision)  # fmt: skip
    res["profile_batch"] = min(args.batch_size, 2)
    # per-op: an engine (cast, compile, openvino) is one op, so the eager path of the default's precision
    res["profile"] = profile_batch(model if model.backend == "eager" else eager, res["profile_batch"], top=10)
    if int8 is not None:
        res["profile_int8"] = profile_batch(int8, res["profile_batch"], top=10)
        int8_s = list(res["per_slice"].values())[-1]["s_per_slice"]  # fp32-equivalent FLOPs below
        res["peak"]["effective_gflops_int8"] = res["peak"]["flops"]["per_slice"] / int8_s / 1e9
    if args.speed_only:
        res["targets"] = targets(res)
        return _finish(res, args)
    with tempfile.TemporaryDirectory() as tmp:
        res["end_to_end"] = end_to_end(model, Path(tmp), fast_s, args.batch_size, args.quick, args.full_volume)
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
            "status": f"skipped: bf16 matmul here is {res['peak']['matmul']['bf16']['gflops']:.1f} "
            "GFLOP/s (no AMX/avx512-bf16), one ViT-L slice takes minutes; "
            "--bf16-guard runs it",
            "tiny_model": bench_precision_guard(TINY_MODEL, str(device), 2, "bf16"),
        }
    res["targets"] = targets(res)
    return _finish(res, args)


def _finish(res: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    res["machine"]["loadavg_end"] = os.getloadavg()[0]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))
    _print_rest(res)
    return res


def _print_speed(res: dict[str, Any]) -> None:
    print(
        f"\n{res['model']} on {res['machine']['device']} ({res['machine']['cpu']}, "
        f"{res['machine']['cores']} cores)"
    )
    print(f"{'path':<72} {'s/slice':>9} {'speedup':>8}")
    for label, row in res["per_slice"].items():
        print(f"{label:<72} {row['s_per_slice']:>9.3f} {row['speedup_vs_reference']:>7.2f}x")
    guard = res.get("int8_guard")
    if isinstance(guard, dict):
        r = "undefined" if guard["r"] is None else f"{guard['r']:.6f}"
        print(f"  int8 guard (precision auto, {guard['slices']} {guard['guard_slices']} slices): r {r} vs fp32, "
              f"threshold {guard['threshold']}: {'passed' if guard['passed'] else 'FAILED'} -> default scores in "
              f"{guard['precision_after']} (first call {guard['first_call_s']:.2f} s, guard included)")
    for acc in (res["accuracy"], res.get("accuracy_int8")):
        if acc:
            print(f"  {acc['compared']}: max|d| {acc['max_abs_diff']:.2e}, r {acc['pearson_r']:.6f} "
                  "(guard >= 0.999)")
    auto_p = res.get("precision_auto") or {}
    if auto_p.get("precision_seconds"):  # aaclip_med.model.precision_probe
        sec = auto_p["precision_seconds"]
        print(f"  precision auto -> {res['precision']} ({auto_p['precision_choice']}: one vision block bf16 "
              f"{sec['bf16'] * 1e3:.1f} ms, int8 {sec['int8'] * 1e3:.1f} ms; int8 engine {auto_p['int8_engine']})")
    for engine, auto in res["attention_auto"].items():  # aaclip_med.model.tuning
        times = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in (auto["seconds"] or {}).items())
        print(
            f"  attention auto -> {auto['kernel']} on this machine ({engine}): {auto['how']}"
            + (f" (attention core {times})" if times else "")
        )
    for label, row in res["per_slice"].items():  # what decides attention="auto" (benchmarks/README.md)
        if "same_engine_row" in row:
            same, acc = res["per_slice"][row["same_engine_row"]]["s_per_slice"], row["accuracy"]
            base = "fused SDPA" if row["vs_kernel"] == "sdpa" else f"{row['vs_kernel']} (auto's choice)"
            print(
                f"  {label.split(' (')[0]} vs {base} on the same engine: {same / row['s_per_slice']:.2f}x "
                f"(> 1: faster), maps vs reference fp32 r {acc['pearson_r']:.6f}"
            )


def _print_rest(res: dict[str, Any]) -> None:
    _print_peak(res)
    print_targets(res)


def _print_peak(res: dict[str, Any]) -> None:
    pk = res["peak"]
    print(
        f"\nFLOPs/slice {pk['flops']['per_slice'] / 1e12:.3f} T; "
        f"achieved {pk['achieved_gflops_default']:.1f} GFLOP/s"
    )
    for p, v in pk["matmul"].items():
        print(
            f"  {p} square-matmul burst peak {v['gflops']:.1f} GFLOP/s (n={v['n']}, {v['op']}) -> "
            f"fraction {pk[f'fraction_of_{p}_peak']:.2f}"
        )
    gemm = pk["sustained_gemm"]
    print(
        f"  sustained model-shape GEMM {gemm['shape']}, {gemm['dtype']}: {gemm['gflops']:.1f} GFLOP/s (median of "
        f"{gemm['reps']}, {gemm['gflops_min']:.0f}-{gemm['gflops_max']:.0f}) -> fraction "
        f"{pk['fraction_of_sustained_gemm']:.2f}"
    )
    floor = pk["floor_s_per_slice"]
    print(f"  floor {floor['at_fp32_peak']:.2f} s/slice at the fp32 burst peak, "
          f"{floor['at_sustained_gemm']:.2f} s/slice at the sustained {gemm['dtype']} GEMM rate")  # fmt: skip
    probe = pk["block_precision_probe"]
    print(
        f"one ViT block, batch 1: fp32 {probe['fp32_s']:.2f} s, bf16 autocast {probe['bf16_autocast_s']:.2f} s"
        + "".join(f", {k} {probe[f'{k}_s']:.2f} s" for k in ("int8_mlp", "int8_mlp_attn") if f"{k}_s" in probe)
    )
    print("\nprofile (one default batch), top ops by self time:")
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
    p.add_argument(
        "--peak-budget", type=float, default=3.0, help="seconds per matmul size and for the sustained GEMM"
    )
    p.add_argument("--count-flops", action="store_true", help="also count FLOPs with FlopCounterMode (ViT-L)")
    p.add_argument("--full-volume", action="store_true", help="also run the 155-slice volume with ViT-L")
    p.add_argument("--bf16-guard", action="store_true", help="bf16 vs fp32 maps of ViT-L even without bf16 hw")
    p.add_argument("--no-cohort", dest="cohort", action="store_false")
    p.add_argument("--speed-only", action="store_true", help="per-slice, peak and profile sections only")
    p.add_argument("--no-int8", dest="int8", action="store_false", help="skip the int8 row (CPU only anyway)")
    p.add_argument("--backend", default="auto", help="backend of the default row (auto: what users get)")
    p.add_argument(
        "--attention",
        default="matmul,blocked",
        help="GEMM attention kernels timed against fused SDPA on the default's PyTorch engine ('none': skip)",
    )
    p.add_argument(
        "--short",
        action="store_true",
        help="ViT-L speed rows only (2 reference, 8 default slices, 1 s peak budget): ~3 min on a GPU",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point; returns the results dict."""
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
