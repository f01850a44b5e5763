"""The ``peak`` and ``profile`` sections of ``bench_scoring.py``: FLOPs per slice, this machine's matmul rates, the
fraction of them the model reaches, one block per precision, and where the time of one batch goes."""

from __future__ import annotations

import contextlib
import copy
import functools
import statistics
from typing import Any

import torch
import torch.nn.functional as F
from bench_common import PRESET, random_slices, sync, timed

import aaclip_med.model.aaclip as aaclip_mod
from aaclip_med.model import AACLIP


def matmul_peak(dtype: torch.dtype, device: torch.device, max_n: int, budget_s: float) -> dict[str, Any]:
    """Best GFLOP/s of square ``torch.mm`` / ``F.linear`` up to ``max_n``, skipping sizes over the time budget.

    A best-of burst: on a shared machine it varies from call to call (see ``sustained_gemm``).
    """
    best: dict[str, Any] = {"gflops": 0.0}
    n = 512
    while n <= max_n:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        for op, mat in (("mm", torch.mm), ("linear", F.linear)):
            fn = functools.partial(mat, a, b)
            sec, _ = timed(fn, device)  # warm-up doubles as the cost estimate
            reps = max(1, min(5, int(budget_s / max(sec, 1e-9))))
            sec = min(timed(fn, device)[0] for _ in range(reps))
            rate = 2 * n**3 / sec / 1e9
            if rate > best["gflops"]:
                best = {"gflops": rate, "n": n, "op": op, "reps": reps}
            last = sec
        if last * 8 > budget_s:  # the next size costs 8x
            break
        n *= 2
    best["dtype"] = str(dtype).removeprefix("torch.")
    return best


def sustained_gemm(
    model: AACLIP, budget_s: float, reps_range: tuple[int, int] = (5, 30), dtype: torch.dtype | None = None,
    int8: bool = False,
) -> dict[str, Any]:
    """Median GFLOP/s of the model's first MLP ``c_fc`` (``F.linear`` + bias) at one slice's token count.

    The shape of the layer that dominates the run (ViT-L at 518 px: 1370 x 1024 by 4096 x 1024), repeated
    back to back, so it is the rate the model's linears can sustain here. FLOPs: 2 per multiply-add, bias not
    counted (as in ``analytic_flops``). ``int8``: the layer as the int8 path runs it (a dynamic int8 linear of
    ``aaclip_med.model.quantize``, fp32 in and out), its rate in fp32-equivalent FLOPs.
    """
    fc = model.clip.visual.transformer.resblocks[0].mlp.c_fc
    tokens = analytic_flops(model)["tokens"]
    x = torch.randn(tokens, fc.in_features, device=model.device, dtype=torch.float32 if int8 else fc.weight.dtype)
    if int8:
        from aaclip_med.model.quantize import quantized_linear

        fn = functools.partial(quantized_linear(fc.weight, fc.bias), x)
    else:
        fn = functools.partial(F.linear, x, fc.weight.detach(), fc.bias.detach())
    with torch.inference_mode():
        sec, _ = timed(fn, model.device)  # warm-up doubles as the cost estimate
        reps = max(reps_range[0], min(reps_range[1], int(budget_s / max(sec, 1e-9))))
        rates = [
            2 * tokens * fc.in_features * fc.out_features / timed(fn, model.device)[0] / 1e9 for _ in range(reps)
        ]
    return {
        "shape": f"({tokens} x {fc.in_features}) by ({fc.out_features} x {fc.in_features}) + bias",
        "dtype": "int8 (dynamic)" if int8 else str(dtype).removeprefix("torch."),
        "reps": reps,
        "gflops": statistics.median(rates),
        "gflops_min": min(rates),
        "gflops_max": max(rates),
    }


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

    x = random_slices(1, model.input_size).to(model.device)
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
            out[f"{label}_s"] = min(timed(lambda: aaclip_mod.sdpa_block(block, x), model.device)[0] for _ in "12")
    out["bf16_over_fp32"] = out["bf16_autocast_s"] / out["fp32_s"]
    if model.device.type == "cpu":  # precision "int8": MLP linears only, then attention projections too
        from aaclip_med.model.quantize import quantize_block_

        for label, attention, engine in (("int8_mlp", False, "x86"), ("int8_mlp_attn", True, "x86"),
                                         ("int8_onednn", True, "onednn")):  # fmt: skip
            qblock = copy.deepcopy(block)
            quantize_block_(qblock, attention=attention, engine=engine)
            with torch.inference_mode():
                ref = aaclip_mod.sdpa_block(block, x)
                got = aaclip_mod.sdpa_block(qblock, x)
                out[f"{label}_s"] = min(timed(lambda b=qblock: aaclip_mod.sdpa_block(b, x), model.device)[0]
                                        for _ in range(2))  # fmt: skip
            out[f"{label}_over_fp32"] = out[f"{label}_s"] / out["fp32_s"]
            delta = torch.stack([(got - x).flatten(), (ref - x).flatten()])  # the block's update, not the stream
            out[f"{label}_block_update_r"] = float(torch.corrcoef(delta)[0, 1])
    return out


def peak_precision(device: torch.device, default_precision: str | None = None) -> str:
    """The precision whose rate the default is held to: fp16 on CUDA, int8 where the default runs int8 (CPUs
    without AMX since the guarded int8 default), bf16 on AMX CPUs, else fp32."""
    from aaclip_med.model.backends import cpu_isa

    if device.type == "cuda":
        return "fp16"
    return "int8" if default_precision == "int8" else "bf16" if cpu_isa() == "amx" else "fp32"


def peak_section(
    model: AACLIP, s_per_slice: float, max_n: int, budget_s: float, count_flops: bool,
    default_precision: str | None = None,
) -> dict[str, Any]:
    """FLOPs per slice, matmul peaks (fp32, bf16, fp16 on CUDA), sustained model-shape GEMM in the default's
    precision (``peak_precision``: int8 where the default runs int8), the fractions of them that ``s_per_slice``
    (the default path, fp32-equivalent FLOPs) reaches, the floors, and the block precision probe."""
    device = model.device
    flops: dict[str, Any] = dict(analytic_flops(model))
    flops["counted_plain_forward"] = counted_flops(model) if count_flops else None
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if device.type == "cuda":
        dtypes["fp16"] = torch.float16
    matmul = {p: matmul_peak(dtype, device, max_n, budget_s) for p, dtype in dtypes.items()}
    peak_dtype = peak_precision(device, default_precision)
    int8 = peak_dtype == "int8"
    gemm = sustained_gemm(model, budget_s, dtype=None if int8 else dtypes[peak_dtype], int8=int8)
    achieved = flops["per_slice"] / s_per_slice / 1e9
    return {
        "peak_precision": peak_dtype,  # int8: no square int8 matmul peak; held to its model-shape GEMM rate
        "fraction_of_isa_peak": achieved / (gemm if int8 else matmul[peak_dtype])["gflops"],
        "matmul": matmul,
        "sustained_gemm": gemm,
        "flops": flops,
        "achieved_gflops_default": achieved,
        **{f"fraction_of_{p}_peak": achieved / v["gflops"] for p, v in matmul.items()},
        "fraction_of_sustained_gemm": achieved / gemm["gflops"],
        "floor_s_per_slice": {
            "at_fp32_peak": flops["per_slice"] / matmul["fp32"]["gflops"] / 1e9,
            "at_sustained_gemm": flops["per_slice"] / gemm["gflops"] / 1e9,
        },
        "block_precision_probe": block_precision_probe(model),
    }


def profile_batch(model: AACLIP, batch: int, top: int = 10) -> list[dict[str, Any]]:
    """Top ops by self time for one default batch."""
    from torch.profiler import ProfilerActivity, profile

    x = random_slices(batch, model.input_size, seed=2)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if model.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        model.score_slices(x, PRESET, return_levels=False)
        sync(model.device)
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
