"""What the benchmark scripts share: paths, model names, timing, the random model, random slices, map agreement.

Imported by ``bench_scoring.py``, ``bench_peak.py``, ``bench_volume.py`` and ``bench_int8_accuracy.py``, which
run as scripts from this folder (so it is on ``sys.path``); ``tests/test_benchmark_smoke.py`` adds it.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from aaclip_med.model import AACLIP, create_model

ROOT = Path(__file__).resolve().parents[1]
BRATS = (
    ROOT.parent / "shared/data/brain_brats2015_deepmedic/brats2015TrainingData/test/brats_2013_pat0001_1"
    "/Flair_subtrMeanDivStd.nii.gz"
)
CT = ROOT / "datasets/samples/hcc048_ct"  # the HCC048 portal-venous CT sample (shipped with the repository)
PRESET = "brain_mri"
FULL_MODEL, TINY_MODEL = "aaclip-vitl14-336", "aaclip-tiny"


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work (no-op on CPU), so that a timing covers the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds of one call of ``fn`` and its result."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def build_model(
    name: str, device: str, precision: str = "auto", backend: str = "auto", attention: str = "auto"
) -> AACLIP:
    """``name`` with a random (seed 0) backbone: speed does not depend on the weight values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # untrained backbone / random adapters: on purpose here
        weights = None if name == "demo" else "random"  # demo: its own random seed-0 backbone and shipped adapters
        return create_model(
            name, backbone_weights=weights, device=device, precision=precision, backend=backend,
            attention=attention,
        )  # fmt: skip


def real_slices(size: int, n: int = 2) -> dict[str, tuple[torch.Tensor, str]]:
    """``n`` central slices each of the BraTS FLAIR and the HCC048 CT sample (those present).

    Through the preset's slice transform: ``{case: ((n,3,size,size), preset)}``.
    """
    from aaclip_med.io import read_volume
    from aaclip_med.transforms import slice_transform

    out = {}
    for path, preset in ((BRATS, "brain_mri"), (CT, "liver_ct")):
        if not path.exists():
            continue
        vol = read_volume(path)
        count = vol.n_slices
        lo, hi = (0.45, 0.6) if count > 20 else (0.3, 0.7)  # central slices (the CT sample has 12)
        ks = [int(count * (lo + (hi - lo) * i / max(n - 1, 1))) for i in range(n)]
        transform = slice_transform(preset, size)
        out[path.name] = (torch.stack([transform(vol.get_slice(k, vol.slice_axis)) for k in ks]), preset)
    return out


def random_slices(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``n`` random 3-channel slices of ``size`` x ``size``."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def agreement(a: torch.Tensor, b: torch.Tensor, what: str) -> dict[str, Any]:
    """Max abs difference and Pearson r of maps ``a`` against reference maps ``b`` (same slices)."""
    a64, b64 = a.double().flatten(), b.double().flatten()
    return {
        "compared": what,
        "n_slices": int(a.shape[0]),
        "max_abs_diff": float((a64 - b64).abs().max()),
        "map_range": float(b64.max() - b64.min()),
        "pearson_r": float(torch.corrcoef(torch.stack([a64, b64]))[0, 1]),
    }


def isa_line() -> str:
    """First line of every benchmark: CPU model, the ISA class that sets the peak, the flags behind it.

    Under an ISA cap (``aaclip_med.model.backends.isa_cap``: ``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``,
    ``MKL_ENABLE_INSTRUCTIONS``) it starts ``ISA restricted to <isa> on <model>``: an emulation of that ISA on
    this CPU, not a measurement of a CPU that has only it.
    """
    from aaclip_med.model.backends import _cpu_flags, cpu_isa, isa_cap

    flags = _cpu_flags()
    shown = [f for f in ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f", "avx2") if f in flags]
    hardware = f"{cpu_isa(honour_cap=False)} ({', '.join(shown) or 'no cpuinfo flags'})"
    cap = isa_cap()
    if cap is None:
        head = f"CPU: {machine_cpu()}, ISA {hardware}"
    else:
        envs = ", ".join(f"{k}={v}" for k, v in cap[1].items())
        head = f"ISA restricted to {cpu_isa()} on {machine_cpu()} (emulation by {envs}; hardware ISA {hardware})"
    return f"{head}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()})"


_ISA_PROBE = """
import torch
torch.nn.functional.conv2d(torch.randn(1, 3, 64, 64), torch.randn(16, 3, 14, 14), stride=14)  # oneDNN
torch.mm(torch.randn(256, 256), torch.randn(256, 256))  # MKL sgemm
a = torch.randn(256, 256).bfloat16()
torch.mm(a, a)  # bf16: oneDNN where it has bf16 kernels for its ISA
print("aten", torch.backends.cpu.get_cpu_capability())
"""


def isa_check() -> dict[str, str]:
    """What the kernels really dispatch to, from a child with ``ONEDNN_VERBOSE=1 MKL_VERBOSE=1`` (same env).

    Keys: ``aten`` (PyTorch's CPU capability), ``onednn_isa`` (oneDNN's ``isa:`` line), ``onednn_conv`` and
    ``onednn_bf16_matmul`` (implementations of a convolution and a bf16 matmul; absent: torch did not use oneDNN
    for it), ``mkl`` (the ISA MKL announces for its sgemm).
    """
    import subprocess
    import sys

    env = {**os.environ, "ONEDNN_VERBOSE": "1", "MKL_VERBOSE": "1"}
    text = subprocess.run([sys.executable, "-c", _ISA_PROBE], env=env, capture_output=True, text=True).stdout
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(",")
        if line.startswith("aten "):
            out["aten"] = line.split()[1]
        elif "isa:" in line:
            out["onednn_isa"] = line.split("isa:", 1)[1]
        elif ",exec," in line and "convolution" in parts:
            out["onednn_conv"] = parts[parts.index("convolution") + 1]
        elif ",exec," in line and "matmul" in parts and "bf16" in line:
            out["onednn_bf16_matmul"] = parts[parts.index("matmul") + 1]
        elif line.startswith("MKL_VERBOSE") and "architecture" in line:
            out["mkl"] = line.split("architecture", 1)[1].split(",")[0].strip()
    return out


def machine_cpu() -> str:
    """The CPU model name from /proc/cpuinfo (else ``platform.processor()``), as the attention probe keys it."""
    from aaclip_med.model.tuning import cpu_model

    return cpu_model()


def machine(device: torch.device) -> dict[str, Any]:
    """Date, CPU model, cores, torch version, threads, GPU and load."""
    from aaclip_med.model.backends import cpu_isa, isa_cap

    cap = isa_cap()
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "cpu": machine_cpu(),
        "isa": cpu_isa(),  # the effective ISA: the hardware's, or the emulated one under a cap
        "isa_hardware": cpu_isa(honour_cap=False),
        "isa_emulation": None if cap is None else {"restricted_to": cap[0], "env": cap[1], "check": isa_check()},
        "cores": os.cpu_count(),
        "cpu_bf16_hw": cpu_isa() == "amx",  # bf16 faster than fp32 (avx512_bf16 alone measured slower)
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "not measured (no GPU lent)",
        "loadavg_start": os.getloadavg()[0],
    }
