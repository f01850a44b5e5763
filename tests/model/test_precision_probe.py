"""precision="auto" on AMX CPUs: bf16 or guarded int8 by a one-block probe (aaclip_med.model.precision_probe),
int8 packed for oneDNN where AMX-INT8 is usable (aaclip_med.model.quantize.int8_engine), and bf16 as the int8
guard's fallback there. The CPU is faked (its /proc/cpuinfo flags): AMX is exercised for correctness on any CPU.
Every test uses its own cache folder."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from aaclip_med.model import AACLIP, backends, guard, precision_probe, quantize
from aaclip_med.model.blocks import CPU_CHUNK
from aaclip_med.model.precision import PRECISION_ENV
from aaclip_med.report import describe_precision

AMX = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"}
AMX_BF16_ONLY = AMX - {"amx_int8"}
AVX512 = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}


@pytest.fixture()
def amx(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An AMX-INT8 CPU, nothing pinned (no backend/precision/attention variables, no ISA cap), a private cache.

    Returns the precision cache file's path.
    """
    for var in (PRECISION_ENV, backends.BACKEND_ENV, "AACLIP_MED_ATTENTION", *backends.ISA_CAP_ENVS):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(backends.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(backends, "_cpu_flags", lambda: AMX)
    return tmp_path / "cache" / "tuning" / "precision.json"


def _fake_probe(monkeypatch: pytest.MonkeyPatch, seconds: dict[str, float]) -> list[int]:
    calls: list[int] = []

    def fake(model: AACLIP) -> dict[str, float]:
        calls.append(1)
        return dict(seconds)

    monkeypatch.setattr(precision_probe, "measure_block_precisions", fake)
    return calls


def _slices(n: int = CPU_CHUNK + 1) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(3))


def _r(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1])


def test_int8_engine_follows_amx_int8(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in backends.ISA_CAP_ENVS:
        monkeypatch.delenv(var, raising=False)
    for flags, engine in ((AMX, "onednn"), (AMX_BF16_ONLY, "x86"), (AVX512, "x86"), ({"avx2"}, "x86")):
        monkeypatch.setattr(backends, "_cpu_flags", lambda f=flags: f)
        assert quantize.int8_engine() == engine, flags
    monkeypatch.setattr(backends, "_cpu_flags", lambda: AMX)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")  # oneDNN capped below AMX: no AMX tiles
    assert quantize.int8_engine() == "x86"


def test_onednn_packed_model_matches_fbgemm_and_restores_the_engine(
    make_tiny: Callable[..., AACLIP], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in backends.ISA_CAP_ENVS:  # the kernels keep any cap the process started with: real AVX2 hardware
        monkeypatch.delenv(var, raising=False)
    before = torch.backends.quantized.engine
    models = {}
    for flags in (AMX, AVX512):
        monkeypatch.setattr(backends, "_cpu_flags", lambda f=flags: f)
        models[quantize.int8_engine()] = make_tiny(precision="int8")
        assert torch.backends.quantized.engine == before  # packing switched it only while packing
    assert {m.metadata()["int8_engine"] for m in models.values()} == {"onednn", "x86"}
    x = _slices(2)
    maps = {k: m.score_slices(x, "mri").maps for k, m in models.items()}
    torch.testing.assert_close(maps["onednn"], maps["x86"], atol=2e-2, rtol=0)
    assert _r(maps["onednn"], maps["x86"]) >= 0.9999


def test_pick_precision_rule() -> None:
    assert precision_probe.INT8_MIN_SPEEDUP == 1.10
    assert precision_probe.pick_precision({"bf16": 1.2, "int8": 1.0}) == "int8"
    assert precision_probe.pick_precision({"bf16": 1.08, "int8": 1.0}) == "bf16"  # within the margin
    assert precision_probe.pick_precision({"bf16": 0.5, "int8": 1.0}) == "bf16"


def test_probe_choosing_int8_arms_the_guard_with_bf16_fallback_and_caches(
    amx: Path, make_tiny: Callable[..., AACLIP], monkeypatch: pytest.MonkeyPatch
) -> None:
    seconds = {"bf16": 2.0, "int8": 1.0}
    calls = _fake_probe(monkeypatch, seconds)
    model = make_tiny(precision="auto", backend="auto")
    assert (model.precision, model.backend, model.attention, model.int8_guard) == ("fp32", "eager", "sdpa",
                                                                                   guard.PENDING)  # fmt: skip
    fallback = model.int8_fallback
    assert fallback is not None and (fallback.precision, fallback.backend) == ("bf16", "cast")
    meta = model.metadata()
    assert (meta["precision_choice"], meta["precision_seconds"]) == ("measured", seconds)
    (key, entry), = json.loads(amx.read_text())["entries"].items()
    assert entry["precision"] == "int8" and entry["seconds"] == seconds
    assert " amx " in f" {key} " and "int8 engine onednn" in key and "threads" in key
    x = _slices()
    out = model.score_slices(x, "mri").maps
    meta = model.metadata()
    assert meta["precision"] == "int8" and meta["int8_engine"] == "onednn" and meta["int8_guard"]["passed"]
    assert model.int8_fallback is None
    said = describe_precision(meta)
    assert said is not None and said.startswith("int8 (auto; one vision block bf16 2000.0 ms vs int8 1000.0 ms")
    assert "guard passed" in said and said.endswith("int8 engine onednn, backend eager")
    assert _r(out, make_tiny(precision="fp32").score_slices(x, "mri").maps) >= 0.999
    again = make_tiny(precision="auto", backend="auto")
    assert calls == [1] and again.metadata()["precision_choice"] == "cached"  # a cache hit does not measure


def test_probe_choosing_bf16_keeps_the_amx_default(
    amx: Path, make_tiny: Callable[..., AACLIP], monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_probe(monkeypatch, {"bf16": 1.05, "int8": 1.0})  # int8 only 1.05x faster: not enough
    model = make_tiny(precision="auto", backend="auto")
    assert (model.precision, model.backend, model.int8_guard) == ("bf16", "cast", guard.NOT_APPLICABLE)
    assert model.metadata()["precision_choice"] == "measured" and model.int8_fallback is None


def test_failed_guard_on_amx_falls_back_to_bf16(
    amx: Path, make_tiny: Callable[..., AACLIP], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _fake_probe(monkeypatch, {"bf16": 2.0, "int8": 1.0})
    monkeypatch.setattr(guard, "INT8_GUARD_R", 1.01)  # no map reaches it
    model = make_tiny(precision="auto", backend="auto")
    assert model.int8_fallback is not None
    bf16 = make_tiny(precision="bf16", backend="cast", attention=model.int8_fallback.attention.kernel)
    x = _slices()
    with caplog.at_level(logging.WARNING, logger="aaclip_med"):
        out = model.score_slices(x, "mri").maps
        again = model.score_slices(x, "mri").maps
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "scoring in bf16" in warned[0] and "--precision bf16" in warned[0], warned
    meta = model.metadata()
    assert (meta["precision"], meta["backend"], meta["int8_engine"]) == ("bf16", "cast", None)
    assert meta["int8_guard"]["passed"] is False and meta["attention_choice"] in ("measured", "cached")
    assert next(model.clip.visual.transformer.resblocks[0].parameters()).dtype == torch.bfloat16
    ref = bf16.score_slices(x, "mri").maps  # the guard chunk too: one precision per volume
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(again, ref, atol=1e-5, rtol=0)
    assert describe_precision(meta).startswith("bf16 (auto; one vision block")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kwargs", "env", "flags"),
    [
        ({"precision": "bf16"}, {}, AMX),  # asked for bf16
        ({"backend": "cast"}, {}, AMX),  # an explicit engine: bf16 on it
        ({"attention": "matmul"}, {}, AMX),  # int8 blocks run SDPA only
        ({}, {PRECISION_ENV: "bf16"}, AMX),
        ({}, {backends.BACKEND_ENV: "cast"}, AMX),
        ({}, {"AACLIP_MED_ATTENTION": "blocked"}, AMX),
        ({}, {}, AMX_BF16_ONLY),  # AMX-BF16 without AMX-INT8
        ({}, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, AMX),  # AMX capped off: the no-AMX rule (guarded int8)
    ],
)
def test_what_skips_the_probe(
    amx: Path,
    make_tiny: Callable[..., AACLIP],
    monkeypatch: pytest.MonkeyPatch,
    kwargs: dict[str, str],
    env: dict[str, str],
    flags: set[str],
) -> None:
    calls = _fake_probe(monkeypatch, {"bf16": 2.0, "int8": 1.0})
    monkeypatch.setattr(backends, "_cpu_flags", lambda: flags)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    model = make_tiny(**{"precision": "auto", "backend": "auto", **kwargs})
    assert calls == [] and model.precision_seconds is None and model.int8_fallback is None
    assert model.metadata()["precision_choice"] in ("asked", "env", "rule")
    assert model.int8_guard == (guard.PENDING if "ONEDNN_MAX_CPU_ISA" in env else guard.NOT_APPLICABLE)


def test_real_probe_on_the_tiny_model(amx: Path, make_tiny: Callable[..., AACLIP]) -> None:
    """No fake: both candidate blocks run, the verdict follows the rule, the cache holds the timings."""
    model = make_tiny(precision="auto", backend="auto")
    seconds = model.precision_seconds
    assert seconds is not None and set(seconds) == {"bf16", "int8"} and all(v > 0 for v in seconds.values())
    want = precision_probe.pick_precision(seconds)
    assert (model.int8_guard == guard.PENDING) is (want == "int8")
    assert model.metadata()["precision_choice"] == "measured" and amx.is_file()
