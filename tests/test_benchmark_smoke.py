"""Smoke tests of benchmarks/bench_scoring.py, so the scoring benchmark cannot rot (issue 9)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    """bench_scoring.py loaded as the script would be: its folder (bench_common, bench_peak, ...) on sys.path."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location("bench_scoring", SCRIPTS / "bench_scoring.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(SCRIPTS))


def test_flop_count_matches_counter(bench: ModuleType) -> None:
    peak = sys.modules["bench_peak"]
    model = bench.build_model("aaclip-tiny", "cpu")
    analytic = peak.analytic_flops(model)
    assert analytic["tokens"] == 197
    assert peak.counted_flops(model) == pytest.approx(analytic["per_slice"], rel=0.01)


def test_sustained_gemm_has_the_mlp_shape(bench: ModuleType) -> None:
    gemm = sys.modules["bench_peak"].sustained_gemm(bench.build_model("aaclip-tiny", "cpu", "fp32"), budget_s=0.05)
    assert gemm["shape"] == "(197 x 64) by (256 x 64) + bias"
    assert gemm["reps"] >= 5 and gemm["gflops_min"] <= gemm["gflops"] <= gemm["gflops_max"]


def test_isa_line_names_an_emulated_isa(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    common = sys.modules["bench_common"]
    monkeypatch.setattr(common, "isa_check", dict)  # no child process here
    for var in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "")
    assert common.isa_line().startswith("CPU: ")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert common.isa_line().startswith(f"ISA restricted to avx2 on {common.machine_cpu()} (emulation by ONEDNN")
    machine = common.machine(torch.device("cpu"))
    assert machine["isa"] == "avx2" and machine["isa_emulation"]["restricted_to"] == "avx2"


def test_plain_blocks_match_fused_path(bench: ModuleType) -> None:
    model = bench.build_model("aaclip-tiny", "cpu", "fp32")  # pinned: "auto" is bf16 on AMX CPUs (issue 16)
    x = bench.random_slices(2, model.input_size)
    ref = bench.reference_maps(model, x)
    fast = model.score_slices(x, bench.PRESET, return_levels=False).maps
    assert (ref - fast).abs().max().item() < 1e-4
    assert bench.aaclip_mod.sdpa_block.__name__ == "sdpa_block"  # restored after the reference run


def test_kernels_compared_against_autos_choice(bench: ModuleType) -> None:
    """Where auto chose a GEMM kernel, the bench times SDPA against it instead of that kernel against itself."""
    assert bench.compared_kernels("matmul,blocked", SimpleNamespace(attention="sdpa")) == ("matmul", "blocked")
    assert bench.compared_kernels("matmul,blocked", SimpleNamespace(attention="matmul")) == ("sdpa", "blocked")
    assert bench.compared_kernels("none", SimpleNamespace(attention="matmul")) == ()


@pytest.mark.slow
def test_quick_run_writes_all_sections(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "scoring.json"
    res = bench.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text()).keys() == res.keys()
    for key in (
        "machine",
        "per_slice",
        "peak",
        "profile",
        "end_to_end",
        "memory",
        "cohort",
        "accuracy",
        "accuracy_low_precision",
    ):
        assert key in res, key
    rows = list(res["per_slice"].values())
    assert all(r["s_per_slice"] > 0 for r in rows)
    labels = list(res["per_slice"])
    # the default is what users get (guarded int8 on CPUs without AMX, bf16 with AMX), an fp32 row beside it
    assert [k for k in labels if k.startswith("default (")] == [d for d in labels if d.startswith(
        f"default (score_slices, {res['precision']}, ")]  # fmt: skip
    assert len([k for k in labels if k.startswith("default (")]) == 1
    assert res["precision"] == "fp32" or any(k.startswith("fp32 (score_slices, fp32, ") for k in labels)
    guard = res["int8_guard"]
    if isinstance(guard, dict):  # this CPU has no AMX: auto picked int8 and its guard ran on the first call
        assert guard["passed"] is (res["precision"] == "int8") and guard["slices"] == 2
        assert guard["first_call_s"] > 0
        assert any(t["target"].startswith("int8 guard of the default") for t in res["targets"])
    else:
        assert guard == "not applicable"
    kernels = [r for k, r in res["per_slice"].items() if k.startswith("attention ")]
    assert len(kernels) == 2 and all(r["same_engine_row"] in res["per_slice"] for r in kernels)
    # one entry per model: the default, and the eager fp32 model beside an int8 (or bf16/OpenVINO) default
    autos = res["attention_auto"]
    assert len(autos) == (1 if res["precision"] == "fp32" and res["backend"] == "eager" else 2), autos
    assert all(a["how"] in ("rule", "measured", "cached", "env") for a in autos.values())
    engine = autos["fp32, backend eager"] if res["precision"] == "int8" else next(iter(autos.values()))
    assert engine["kernel"] == kernels[0]["vs_kernel"]  # the GEMM kernels are timed against that engine's own
    assert all(r["accuracy"]["pearson_r"] > 0.9999 for r in kernels)  # fp32 GEMM kernels = SDPA
    if res["precision"] != "int8":  # the opt-in int8 row, last (targets read it there)
        assert labels[-1].startswith("int8") and res["accuracy_int8"]["pearson_r"] > 0.999
    else:
        assert not any(k.startswith("int8") for k in labels) and res["accuracy_int8"] is None
    assert res["peak"]["matmul"]["fp32"]["gflops"] > 0
    assert 0 < res["peak"]["fraction_of_sustained_gemm"] and res["peak"]["sustained_gemm"]["gflops"] > 0
    assert [r["n_slices"] for r in res["memory"]] == [10, 20]
    assert res["accuracy"]["pearson_r"] > 0.999
    assert res["end_to_end"]["tiny_model_run"]["n_scored"] > 0
