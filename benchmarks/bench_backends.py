"""Which engine runs the vision path fastest here, and how close its maps stay to fp32 eager (issue 16).

    python benchmarks/bench_backends.py [--model aaclip-vitl14-336] [--slices 2] [--block] [--out ...json]

One run, everything interleaved (a shared machine: compare only numbers of one run):

- ``block``: one vision block of the model at batch 2 (ViT-L at 518 px: 1370 tokens) in fp32 eager, bf16
  autocast, bf16 weights cast once, ``torch.compile`` (``--compile``), OpenVINO f32/bf16, torch dynamic int8,
  OpenVINO int8 (NNCF, ``--nncf``), the block with the GEMM attention kernels of ``aaclip_med.model.attention``
  (``matmul``, ``blocked``; fp32 eager and bf16 cast); and the attention core alone: fused SDPA (fp32/bf16), the
  math kernel, the GEMM kernels, OpenVINO's SDPA and OpenVINO on the unchunked matmul -> softmax -> matmul
  pattern. GFLOP/s, the speed against fp32 (``x``) and against SDPA of the same dtype (``same``), and the r of
  the block's update against fp32.
- ``model``: ``score_slices`` per precision:backend[:attention] on real slices (BraTS FLAIR and the HCC048 CT
  sample, when present; random slices otherwise): s/slice after warm-up (conversion time reported apart) and the
  maps' max |d| and Pearson r against fp32 eager.

The first printed line names the CPU model and its ISA (``bench_common.isa_line``).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bench_common import agreement, build_model, isa_line, machine, random_slices, real_slices, sync
from bench_peak import analytic_flops

from aaclip_med.model import AACLIP
from aaclip_med.model import attention as attention_mod
from aaclip_med.model.aaclip import sdpa_block
from aaclip_med.model.attention import gemm_attention
from aaclip_med.model.backends import openvino_available

DEFAULT_VARIANTS = ("fp32:eager", "bf16:eager", "bf16:cast", "fp32:openvino", "bf16:openvino", "int8:eager")


def _interleaved(cases: dict[str, Callable[[], Any]], reps: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each case, ``reps`` rounds taking the cases in turn (after one warm-up call each)."""
    for fn in cases.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(reps):
        for key, fn in cases.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[key].append(time.perf_counter() - t0)
    return times


Core = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _kernel(name: str) -> Core:
    """The attention core of ``self_attention``'s kernel ``name`` on (B,H,N,d) tensors."""
    chunks = {"matmul": {"pairs": attention_mod.MATMUL_HEADS}, "blocked": {"rows": attention_mod.BLOCK_ROWS},
              "gemm unchunked": {}}  # fmt: skip  # unchunked: the matmul -> softmax -> matmul OpenVINO may fuse
    if name in chunks:
        core: Core = functools.partial(gemm_attention, **chunks[name])
        return core
    return F.scaled_dot_product_attention


class _Block(torch.nn.Module):
    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block through ``sdpa_block``."""
        out: torch.Tensor = sdpa_block(self.block, x)
        return out


class _Attention(torch.nn.Module):
    def __init__(self, kernel: str = "sdpa") -> None:
        super().__init__()
        self.kernel = _kernel(kernel)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.kernel(q, k, v)


def _openvino(
    module: torch.nn.Module, example: tuple[torch.Tensor, ...], hint: str, nncf_data: list[Any] | None = None
) -> Callable[..., torch.Tensor]:
    import openvino as ov

    converted = ov.convert_model(module, example_input=example)
    if nncf_data is not None:
        import nncf

        converted = nncf.quantize(converted, nncf.Dataset(nncf_data), subset_size=len(nncf_data))
    compiled = ov.Core().compile_model(
        converted, "CPU", {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    )
    request, out = compiled.create_infer_request(), compiled.output(0)
    return lambda *a: torch.from_numpy(request.infer({i: t.numpy() for i, t in enumerate(a)})[out].copy())


def block_section(
    model: AACLIP,
    batch: int,
    reps: int,
    compile_: bool,
    nncf_: bool,
    kernels: tuple[str, ...] = ("matmul", "blocked"),
) -> dict[str, Any]:
    """One vision block and its attention core, every variant interleaved; GFLOP/s and agreement with fp32."""
    fl = analytic_flops(model)
    block = copy.deepcopy(model.clip.visual.transformer.resblocks[0]).float().eval().requires_grad_(False)
    width, heads, tokens = block.attn.embed_dim, block.attn.num_heads, int(fl["tokens"])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, tokens, width, generator=gen)
    q, k, v = torch.randn(3, batch, heads, tokens, width // heads, generator=gen).unbind(0)
    bf = copy.deepcopy(block).bfloat16()
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()

    def autocast_block() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out: torch.Tensor = sdpa_block(block, x)
            return out

    blocks: dict[str, Callable[[], torch.Tensor]] = {
        "fp32 eager": lambda: sdpa_block(block, x),
        "bf16 autocast": autocast_block,
        "bf16 weights cast once": lambda: sdpa_block(bf, x.bfloat16()),
    }
    attention: dict[str, Callable[[], torch.Tensor]] = {
        "sdpa fp32": lambda: F.scaled_dot_product_attention(q, k, v),
        "sdpa bf16": lambda: F.scaled_dot_product_attention(qb, kb, vb),
        "math fp32": lambda: _math_sdpa(q, k, v),
    }
    for kernel in kernels:  # the GEMM kernels of aaclip_med.model.attention, in the block and alone
        blocks[f"fp32 eager, attention {kernel}"] = functools.partial(sdpa_block, block, x, kernel)
        blocks[f"bf16 cast, attention {kernel}"] = functools.partial(sdpa_block, bf, x.bfloat16(), kernel)
        attention[f"{kernel} fp32"] = functools.partial(_kernel(kernel), q, k, v)
        attention[f"{kernel} bf16"] = functools.partial(_kernel(kernel), qb, kb, vb)
    if compile_:
        c32, cbf = torch.compile(_Block(block)), torch.compile(_Block(bf))
        blocks["compile fp32"] = lambda: c32(x)
        blocks["compile bf16 weights"] = lambda: cbf(x.bfloat16())
    if openvino_available():
        for hint in ("f32", "bf16"):
            blocks[f"openvino {hint}"] = functools.partial(_openvino(_Block(block), (x,), hint), x)
            attention[f"openvino {hint}"] = functools.partial(_openvino(_Attention(), (q, k, v), hint), q, k, v)
            gemm = _openvino(_Attention("gemm unchunked"), (q, k, v), hint)  # fused to OpenVINO's SDPA or not
            attention[f"openvino {hint}, gemm pattern"] = functools.partial(gemm, q, k, v)
        if nncf_:  # static int8 (calibrated on random tokens): the VNNI/AMX int8 rate, not a shipped path
            calib = [torch.randn(batch, tokens, width, generator=gen).numpy() for _ in range(4)]
            blocks["openvino int8 (nncf)"] = functools.partial(_openvino(_Block(block), (x,), "f32", calib), x)
    from aaclip_med.model.quantize import quantize_block_

    for engine in ("x86", "onednn"):  # fbgemm (no AMX kernels) and oneDNN (AMX-INT8 where the CPU has it)
        qblock = copy.deepcopy(block)
        quantize_block_(qblock, engine=engine)
        blocks[f"torch int8 dynamic ({engine})"] = functools.partial(sdpa_block, qblock, x)
    out: dict[str, Any] = {"batch": batch, "tokens": tokens, "width": width, "heads": heads}
    block_flops = batch * (fl["per_block_dense"] + fl["per_block_attention"])
    attn_flops = batch * fl["per_block_attention"]
    with torch.inference_mode():
        ref_block, ref_attn = blocks["fp32 eager"]().float(), attention["sdpa fp32"]().float()
        for section, cases, flops, ref, base in (
            ("block", blocks, block_flops, ref_block, x),
            ("attention", attention, attn_flops, ref_attn, torch.zeros(())),
        ):
            times = _interleaved(cases, reps, torch.device("cpu"))
            rows = {}
            for key, fn in cases.items():
                got = fn().float()
                delta = torch.stack([(got - base).flatten(), (ref - base).flatten()])  # the block's update
                rows[key] = {
                    "s": min(times[key]),
                    "gflops": flops / min(times[key]) / 1e9,
                    "r_vs_fp32": float(torch.corrcoef(delta.double())[0, 1]),
                }
            out[section] = rows
    return out


def _math_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v)


def model_section(name: str, variants: list[str], n: int, reps: int, batch: int) -> dict[str, Any]:
    """``score_slices`` per precision:backend on real slices, interleaved; maps against fp32 eager."""
    models: dict[str, AACLIP] = {}
    build_s: dict[str, float] = {}
    for variant in variants:
        precision, backend, kernel = (*variant.split(":"), "auto")[:3]
        t0 = time.perf_counter()
        models[variant] = build_model(name, "cpu", precision, backend, kernel)
        build_s[variant] = time.perf_counter() - t0
    size = next(iter(models.values())).input_size
    cases = real_slices(size, n) or {"random": (random_slices(n, size), "brain_mri")}
    described = {k: f"{len(x)} slices, preset {p}" for k, (x, p) in cases.items()}
    out: dict[str, Any] = {"model": name, "variants": {}, "cases": described}
    first: dict[str, float] = {}
    for variant, model in models.items():  # first call: anchors, engine build (conversion or cache load)
        x, preset = next(iter(cases.values()))
        t0 = time.perf_counter()
        model.score_slices(x[:1], preset, return_levels=False)
        first[variant] = time.perf_counter() - t0
    maps: dict[str, list[torch.Tensor]] = {v: [] for v in models}
    times: dict[str, list[float]] = {v: [] for v in models}
    for _ in range(reps):
        for x, preset in cases.values():
            for start in range(0, len(x), batch):
                for variant, model in models.items():
                    t0 = time.perf_counter()
                    got = model.score_slices(x[start : start + batch], preset, return_levels=False).maps
                    times[variant].append((time.perf_counter() - t0) / len(x[start : start + batch]))
                    if _ == 0:
                        maps[variant].append(got)
    ref = torch.cat(maps[variants[0]])
    for variant in models:
        times[variant].sort()
        out["variants"][variant] = {
            "backend": models[variant].backend,
            "precision": models[variant].precision,
            "attention": models[variant].attention,
            "s_per_slice": times[variant][len(times[variant]) // 2],
            "s_per_slice_best": times[variant][0],
            "build_s": build_s[variant],
            "first_call_s": first[variant],
            **agreement(torch.cat(maps[variant]), ref, f"{variant} vs {variants[0]}"),
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point; returns the results dict."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="demo", help="demo / aaclip-tiny (seconds) or aaclip-vitl14-336")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help="precision:backend[:attention], first = reference")  # fmt: skip
    p.add_argument("--slices", type=int, default=2, help="slices per real case")
    p.add_argument("--reps", type=int, default=1, help="timed rounds over the slices")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--block", action="store_true", help="also the single-block and attention probes")
    p.add_argument("--block-only", action="store_true", help="only the single-block and attention probes")
    p.add_argument("--block-reps", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="torch.compile rows in the block probe")
    p.add_argument("--nncf", action="store_true", help="OpenVINO int8 (NNCF, random calibration) block row")
    p.add_argument("--out", default=None, help="write the results JSON here")
    args = p.parse_args(argv)
    print(isa_line())
    res: dict[str, Any] = {"machine": machine(torch.device("cpu"))}
    if args.block or args.block_only:
        res["block"] = block_section(build_model(args.model, "cpu", "fp32", "eager"), 2, args.block_reps,
                                     args.compile, args.nncf)  # fmt: skip
        _print_block(res["block"])
    if not args.block_only:
        res["model"] = model_section(args.model, args.variants.split(","), args.slices, args.reps, args.batch)
        _print_model(res["model"])
    res["machine"]["loadavg_end"] = __import__("os").getloadavg()[0]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))
    return res


def _print_block(res: dict[str, Any]) -> None:
    print(f"\none vision block, batch {res['batch']}, {res['tokens']} tokens, width {res['width']}")
    same = {("block", False): "fp32 eager", ("block", True): "bf16 weights cast once",
            ("attention", False): "sdpa fp32", ("attention", True): "sdpa bf16"}  # fmt: skip
    for section in ("block", "attention"):
        base = res[section][same[section, False]]["s"]
        for key, row in res[section].items():
            ref = res[section][same[section, "bf16" in key]]["s"]
            print(f"  {section:<9} {key:<30} {row['s']:7.3f} s {row['gflops']:7.1f} GFLOP/s "
                  f"{base / row['s']:5.2f}x  same {ref / row['s']:5.2f}x  r {row['r_vs_fp32']:.6f}")  # fmt: skip


def _print_model(res: dict[str, Any]) -> None:
    print(f"\n{res['model']} score_slices on {', '.join(f'{k} ({v})' for k, v in res['cases'].items())}")
    rows = res["variants"]
    base = next(iter(rows.values()))["s_per_slice"]
    for key, row in rows.items():
        print(f"  {key:<15} {row['s_per_slice']:7.3f} s/slice {base / row['s_per_slice']:5.2f}x  "
              f"first call {row['first_call_s']:6.1f} s  max|d| {row['max_abs_diff']:.2e}  "
              f"r {row['pearson_r']:.6f}")  # fmt: skip


if __name__ == "__main__":
    main()
