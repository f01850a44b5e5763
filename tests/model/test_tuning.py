"""attention="auto" chosen by measurement on this CPU (aaclip_med.model.tuning): the selection rule, the cache
(hit, corrupt, unreadable), what skips the probe (explicit value, AACLIP_MED_ATTENTION, fp32, OpenVINO, CUDA) and a
real probe on the tiny model in bf16. Every test uses its own cache folder (AACLIP_MED_CACHE_DIR)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from aaclip_med.model import AACLIP, attention, backends, tuning
from aaclip_med.model.weights import read_adapters

CPU = torch.device("cpu")


def _r(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1])


@pytest.fixture()
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A private cache folder, no AACLIP_MED_ATTENTION; returns the attention cache file's path."""
    monkeypatch.setenv(backends.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(attention.ATTENTION_ENV, raising=False)
    return tmp_path / "cache" / "tuning" / "attention.json"


@pytest.fixture(scope="module")
def bf16(make_tiny: Callable[..., AACLIP]) -> AACLIP:
    """A tiny bf16 model on the PyTorch cast engine (its own choice is not what these tests check)."""
    return make_tiny(precision="bf16", backend="cast", attention="sdpa")


def _fake_timer(monkeypatch: pytest.MonkeyPatch, seconds: dict[str, float]) -> list[str]:
    """Replace the kernel timer by fixed times; returns the list of kernels it was called for."""
    calls: list[str] = []

    def fake(qkv: torch.Tensor, heads: int, kernel: str) -> float:
        calls.append(kernel)
        return seconds[kernel]

    monkeypatch.setattr(tuning, "time_kernel", fake)
    return calls


def _no_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any) -> dict[str, float]:
        raise AssertionError("the attention probe ran")

    monkeypatch.setattr(tuning, "measure_attention", fail)


def test_pick_kernel_rule() -> None:
    assert tuning.GEMM_MIN_SPEEDUP == 1.05
    assert tuning.pick_kernel({"sdpa": 1.2, "matmul": 1.0, "blocked": 1.3}) == "matmul"  # 1.2x faster
    assert tuning.pick_kernel({"sdpa": 1.2, "matmul": 1.1, "blocked": 1.0}) == "blocked"  # the fastest GEMM one
    assert tuning.pick_kernel({"sdpa": 1.03, "matmul": 1.0, "blocked": 1.2}) == "sdpa"  # 1.03x: within the margin
    assert tuning.pick_kernel({"sdpa": 0.5, "matmul": 1.0, "blocked": 1.0}) == "sdpa"


@pytest.mark.parametrize(("matmul", "expected"), [(1.0, "matmul"), (1.2 / 1.03, "sdpa")])
def test_measured_choice_and_cache(
    cache: Path, monkeypatch: pytest.MonkeyPatch, bf16: AACLIP, matmul: float, expected: str
) -> None:
    """GEMM 1.2x faster than SDPA: chosen; 1.03x: SDPA. The timings go to the cache; a hit does not measure."""
    times = {"sdpa": 1.2, "matmul": matmul, "blocked": 5.0}  # blocked: > PRUNE_SLOWER x sdpa, timed once only
    calls = _fake_timer(monkeypatch, times)
    choice = tuning.choose_attention("auto", bf16, CPU)
    assert (choice.kernel, choice.how, choice.seconds) == (expected, "measured", times)
    assert calls.count("sdpa") == calls.count("matmul") == 1 + tuning.PROBE_REPEATS and calls.count("blocked") == 2
    (entry,) = json.loads(cache.read_text())["entries"].values()
    assert entry["kernel"] == expected and entry["seconds"] == times
    (key,) = json.loads(cache.read_text())["entries"]
    shape = f"2x{bf16.clip.visual.transformer.resblocks[0].attn.num_heads}x197x64"  # CPU_CHUNK x heads x 14²+1
    for part in (tuning.cpu_model(), backends.cpu_isa(), torch.__version__, "bfloat16", shape, "threads"):
        assert part in key
    _no_probe(monkeypatch)  # a cache hit does not measure again
    assert tuning.choose_attention("auto", bf16, CPU) == tuning.AttentionChoice(expected, "cached", times)


def test_cache_is_keyed_by_threads_and_dtype(cache: Path, monkeypatch: pytest.MonkeyPatch, bf16: AACLIP) -> None:
    _fake_timer(monkeypatch, {"sdpa": 1.0, "matmul": 2.0, "blocked": 2.0})
    tuning.choose_attention("auto", bf16, CPU)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert tuning.choose_attention("auto", bf16, CPU).how == "measured"
    finally:
        torch.set_num_threads(threads)
    fp16: Any = SimpleNamespace(backend="eager", precision="fp16", clip=bf16.clip)
    assert tuning.choose_attention("auto", fp16, CPU).how == "measured"
    assert len(json.loads(cache.read_text())["entries"]) == 3
    assert tuning.choose_attention("auto", bf16, CPU).how == "cached"


@pytest.mark.parametrize("content", ["{not json", '{"format": 1, "entries": []}', "\udcff", "entry"])
def test_corrupt_cache_is_measured_again_and_rewritten(
    cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, bf16: AACLIP, content: str
) -> None:
    times = {"sdpa": 1.0, "matmul": 2.0, "blocked": 2.0}
    _fake_timer(monkeypatch, times)
    cache.parent.mkdir(parents=True)
    if content == "entry":  # valid JSON, this machine's key, a malformed entry
        tuning.choose_attention("auto", bf16, CPU)
        data = json.loads(cache.read_text())
        data["entries"] = {k: {"kernel": "flash", "seconds": {"sdpa": "fast"}} for k in data["entries"]}
        cache.write_text(json.dumps(data))
    else:
        cache.write_bytes(content.encode("utf-8", "surrogateescape"))
    with caplog.at_level(logging.WARNING, logger="aaclip_med.model.tuning"):
        choice = tuning.choose_attention("auto", bf16, CPU)
    assert (choice.kernel, choice.how) == ("sdpa", "measured")
    assert "measuring again" in caplog.text and "Traceback" not in caplog.text
    (entry,) = json.loads(cache.read_text())["entries"].values()  # rewritten, valid
    assert entry["seconds"] == times


def test_unreadable_and_unwritable_cache_never_fails(
    cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, bf16: AACLIP
) -> None:
    """A directory where the file should be: reading and writing fail (also as root); logged, no traceback."""
    _fake_timer(monkeypatch, {"sdpa": 1.0, "matmul": 2.0, "blocked": 2.0})
    cache.mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="aaclip_med.model.tuning"):
        choice = tuning.choose_attention("auto", bf16, CPU)
    assert (choice.kernel, choice.how) == ("sdpa", "measured")
    assert "cannot read the tuning cache" in caplog.text and "cannot write the tuning cache" in caplog.text
    assert "AACLIP_MED_ATTENTION" in caplog.text and "Traceback" not in caplog.text
    assert cache.is_dir() and not list(cache.parent.glob(".attention*"))  # no temporary file left behind


def test_env_and_explicit_value_skip_the_probe(
    cache: Path, monkeypatch: pytest.MonkeyPatch, make_tiny: Callable[..., AACLIP]
) -> None:
    _no_probe(monkeypatch)
    model = make_tiny(precision="bf16", backend="cast", attention="blocked")
    assert (model.attention, model.metadata()["attention_choice"]) == ("blocked", "asked")
    assert model.metadata()["attention_seconds"] is None
    monkeypatch.setenv(attention.ATTENTION_ENV, "matmul")
    model = make_tiny(precision="bf16", backend="cast")
    assert (model.attention, model.attention_choice) == ("matmul", "env")
    monkeypatch.setenv(attention.ATTENTION_ENV, "sdpa")
    assert tuning.choose_attention("auto", model, CPU) == tuning.AttentionChoice("sdpa", "env")
    assert not cache.exists()


def test_no_probe_for_fp32_int8_openvino_or_cuda(
    cache: Path, monkeypatch: pytest.MonkeyPatch, make_tiny: Callable[..., AACLIP]
) -> None:
    """fp32 on any CPU (AMX faked here) keeps the static rule: default fp32 runs stay deterministic."""
    _no_probe(monkeypatch)
    monkeypatch.setattr(backends, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    model = make_tiny(precision="fp32")
    assert (model.attention, model.attention_choice, model.attention_seconds) == ("sdpa", "rule", None)
    for backend, precision, device in (
        ("eager", "int8", CPU),
        ("openvino", "bf16", CPU),
        ("eager", "fp16", torch.device("cuda")),  # only its type is read: no GPU needed
    ):
        stub: Any = SimpleNamespace(backend=backend, precision=precision)
        assert tuning.choose_attention("auto", stub, device) == tuning.AttentionChoice("sdpa", "rule")
    assert not cache.exists()


def test_real_probe_on_tiny_bf16(
    cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny: AACLIP, make_tiny: Callable[..., AACLIP]
) -> None:
    """The real probe (milliseconds on the tiny model) writes the cache; the maps stay those of fp32."""
    monkeypatch.setattr(backends, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})  # as AMX
    model = make_tiny(precision="bf16", backend="cast")
    meta = model.metadata()
    assert meta["attention_choice"] == "measured" and meta["attention"] in tuning.KERNELS
    assert set(meta["attention_seconds"]) == set(tuning.KERNELS)
    ((key, entry),) = json.loads(cache.read_text())["entries"].items()
    assert " amx " in f" {key} " and entry["kernel"] == meta["attention"] == tuning.pick_kernel(entry["seconds"])
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert _r(model.score_slices(x, "mri").maps, tiny.score_slices(x, "mri").maps) >= 0.999
    again = make_tiny(precision="bf16", backend="cast")
    assert (again.attention, again.attention_choice) == (model.attention, "cached")
    saved = read_adapters(model.save_adapters(str(tmp_path / "adapters.safetensors"))).metadata or {}
    assert "attention" in meta and not {"attention", "attention_choice", "attention_seconds"} & set(saved)
