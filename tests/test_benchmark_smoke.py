"""Smoke tests of benchmarks/bench_scoring.py, so the scoring benchmark cannot rot (issue 9)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

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


def test_plain_blocks_match_fused_path(bench: ModuleType) -> None:
    model = bench.build_model("aaclip-tiny", "cpu", "fp32")  # pinned: "auto" is bf16 on AMX CPUs (issue 16)
    x = bench.random_slices(2, model.input_size)
    ref = bench.reference_maps(model, x)
    fast = model.score_slices(x, bench.PRESET, return_levels=False).maps
    assert (ref - fast).abs().max().item() < 1e-4
    assert bench.aaclip_mod.sdpa_block.__name__ == "sdpa_block"  # restored after the reference run


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
    assert len(rows) == 5 and all(r["s_per_slice"] > 0 for r in rows)  # 3 reference steps, default, int8
    assert res["accuracy_int8"]["pearson_r"] > 0.999
    assert res["peak"]["matmul"]["fp32"]["gflops"] > 0
    assert 0 < res["peak"]["fraction_of_sustained_gemm"] and res["peak"]["sustained_gemm"]["gflops"] > 0
    assert [r["n_slices"] for r in res["memory"]] == [10, 20]
    assert res["accuracy"]["pearson_r"] > 0.999
    assert res["end_to_end"]["tiny_model_run"]["n_scored"] > 0
