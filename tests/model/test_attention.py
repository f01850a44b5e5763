"""Attention kernels of the vision tower (aaclip_med.model.attention): the GEMM kernels against fused SDPA, their
selection (argument, AACLIP_MED_ATTENTION, OpenVINO), and maps on real slices pinned to fp32 and to bf16 (the AMX
path's arithmetic, run slowly on any CPU)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from aaclip_med.errors import ConfigError
from aaclip_med.model import AACLIP, attention, backends

GEMM_KERNELS = ("matmul", "blocked")


def _qkv(heads: int = 3, tokens: int = 1370, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [t.to(dtype) for t in torch.randn(3, 1, heads, tokens, 64, generator=gen).unbind(0)]


def _r(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1])


@pytest.mark.parametrize(("pairs", "rows"), [(None, None), (2, None), (None, 256), (2, 300)])
def test_gemm_attention_equals_sdpa_fp32(pairs: int | None, rows: int | None) -> None:
    q, k, v = _qkv()  # ViT-L's 1370 tokens; chunks that do not divide the heads or the rows
    ref = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(attention.gemm_attention(q, k, v, pairs, rows), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", GEMM_KERNELS)
def test_gemm_kernels_bf16_as_close_as_sdpa_bf16(kernel: str) -> None:
    q, k, v = _qkv()
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double()).float()
    qkv = torch.cat([t.transpose(1, 2).flatten(2) for t in _qkv(dtype=torch.bfloat16)], -1)  # packed (B,N,3W)
    got = attention.self_attention(qkv, 3, kernel).float()
    sdpa = attention.self_attention(qkv, 3, "sdpa").float()
    exact = exact.transpose(1, 2).flatten(2)
    assert got.dtype == sdpa.dtype and got.shape == exact.shape
    # bf16 scores (the GEMM's output is rounded) against SDPA's fp32 scores: measured 3.9e-3 vs 2.4e-3
    assert (got - exact).abs().max() < 2e-2 and _r(got, exact) > 0.9999
    assert (got - exact).abs().max() < 4 * (sdpa - exact).abs().max()


def test_gemm_attention_has_gradients() -> None:
    """The kernels stay differentiable (an eager model trains through whatever attention it was built with)."""
    q, k, v = (t.requires_grad_() for t in _qkv(2, 100))
    attention.gemm_attention(q, k, v, pairs=1, rows=30).square().sum().backward()
    grads = [t.grad for t in (q, k, v)]
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    F.scaled_dot_product_attention(q2, k2, v2).square().sum().backward()
    for got, ref in zip(grads, (q2.grad, k2.grad, v2.grad), strict=True):
        assert got is not None and ref is not None
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_resolution_and_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(attention.ATTENTION_ENV, raising=False)
    assert attention.resolve_attention("auto", "eager") == "sdpa"  # measured fastest (benchmarks/README.md)
    assert attention.resolve_attention("blocked", "cast") == "blocked"
    monkeypatch.setenv(attention.ATTENTION_ENV, "matmul")
    assert attention.resolve_attention("auto", "eager") == "matmul"
    assert attention.resolve_attention("sdpa", "eager") == "sdpa"  # an explicit choice wins
    assert attention.resolve_attention("auto", "openvino") == "sdpa"  # OpenVINO runs its own kernel
    with pytest.raises(ConfigError, match=r"attention='matmul' with backend='openvino'.*--backend eager"):
        attention.resolve_attention("matmul", "openvino")
    with pytest.raises(ConfigError, match=r"attention='flash' is not valid; use auto, sdpa, matmul, blocked"):
        attention.resolve_attention("flash", "eager")
    monkeypatch.setenv(attention.ATTENTION_ENV, "flash")
    with pytest.raises(ConfigError, match="AACLIP_MED_ATTENTION='flash' is not an attention kernel"):
        attention.resolve_attention("auto", "eager")
    with pytest.raises(ConfigError, match="attention kernel 'auto' is not valid here"):
        attention.self_attention(torch.zeros(1, 4, 6), 1, "auto")


def test_gemm_attention_keeps_auto_off_openvino(
    monkeypatch: pytest.MonkeyPatch, make_tiny: Callable[..., AACLIP]
) -> None:
    monkeypatch.delenv(backends.BACKEND_ENV, raising=False)
    monkeypatch.setattr(backends, "OPENVINO_MIN_WIDTH", 8)  # the tiny model would get OpenVINO under auto
    monkeypatch.setattr(backends, "openvino_available", lambda: True)
    model = make_tiny(precision="bf16", backend="auto", attention="blocked")
    assert (model.backend, model.attention) == ("cast", "blocked")
    assert model.metadata()["attention"] == "blocked"


def _real_slices(shared: Path, size: int) -> dict[str, tuple[torch.Tensor, str]]:
    """Three central slices each of the BraTS FLAIR (pat0001) and the HCC048 portal-venous CT."""
    from aaclip_med.io import read_volume
    from aaclip_med.transforms import slice_transform

    cases = {
        "brats_flair": (
            shared / "data/brain_brats2015_deepmedic/brats2015TrainingData/test/brats_2013_pat0001_1"
            "/Flair_subtrMeanDivStd.nii.gz",
            "brain_mri",
        ),
        "hcc048_ct": (shared / "data/liver_ct_hcc_tace_seg_hcc048/HCC048_portal_venous", "liver_ct"),
    }
    out = {}
    for name, (path, preset) in cases.items():
        if not path.exists():
            pytest.skip(f"{path} is absent")
        vol = read_volume(path)
        transform = slice_transform(preset, size)
        ks = [vol.n_slices * f // 8 for f in (3, 4, 5)]
        out[name] = (torch.stack([transform(vol.get_slice(k, vol.slice_axis)) for k in ks]), preset)
    return out


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kernel", GEMM_KERNELS)
def test_maps_on_real_slices_match_fp32_sdpa(
    shared_dir: Path,
    make_tiny: Callable[..., AACLIP],
    monkeypatch: pytest.MonkeyPatch,
    precision: str,
    kernel: str,
) -> None:
    """BraTS FLAIR and HCC048 CT: maps of each kernel (fp32 eager; bf16 weights cast once, the AMX default)
    against fp32 eager with fused SDPA. Chunks smaller than the tiny model's 197 tokens and 4 heads, so the
    chunking is exercised.

    bf16 itself, with SDPA as shipped, reaches r 0.999985 on these BraTS slices but only 0.99714 on these HCC048
    slices (tiny random model; map range 1.1): the kernels are held to the issue's r >= 0.999 against the bf16
    SDPA path (measured 0.99994-0.999996) and must not move the maps further from fp32 than it does (measured
    0.99722 and 0.999979).
    """
    monkeypatch.setattr(attention, "BLOCK_ROWS", 64)
    monkeypatch.setattr(attention, "MATMUL_HEADS", 3)
    model = make_tiny(precision=precision, backend="eager" if precision == "fp32" else "cast", attention=kernel)
    sdpa = make_tiny(precision=precision, backend="cast", attention="sdpa")  # all the same but the kernel
    tiny = make_tiny(precision="fp32", backend="eager", attention="sdpa")  # pinned: env overrides stay out
    assert model.attention == kernel and tiny.attention == sdpa.attention == "sdpa"
    for name, (x, preset) in _real_slices(shared_dir, model.input_size).items():
        ref = tiny.score_slices(x, preset).maps
        got = model.score_slices(x, preset).maps
        if precision == "fp32":
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4, msg=name)
            continue
        same = sdpa.score_slices(x, preset).maps
        assert _r(got, same) >= 0.999 and (got - same).abs().max() < 0.05, name
        assert _r(got, ref) >= min(0.999, _r(same, ref) - 1e-4), name
