"""Backends of the vision path (aaclip_med.model.backends): resolution, agreement with fp32 eager, the OpenVINO
cache, refusals. The bf16 rows run on any CPU (slowly without AMX): they are the bf16 path's correctness tests."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from aaclip_med.config import BACKENDS, InferenceConfig
from aaclip_med.errors import ConfigError
from aaclip_med.model import AACLIP, backends
from aaclip_med.model.weights import read_adapters

needs_openvino = pytest.mark.skipif(not backends.openvino_available(), reason="openvino not installed (extra)")
CPU = torch.device("cpu")


def _x(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _r(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1])


@pytest.fixture()
def no_backend_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(backends.BACKEND_ENV, raising=False)  # tests/conftest.py sets eager for the suite
    return monkeypatch


def test_auto_resolution(no_backend_env: pytest.MonkeyPatch) -> None:
    mp = no_backend_env
    mp.setattr(backends, "openvino_available", lambda: True)
    assert backends.resolve_backend("auto", CPU, "fp32") == "openvino"
    assert backends.resolve_backend("auto", CPU, "bf16") == "openvino"
    assert backends.resolve_backend("auto", CPU, "fp32", vision_width=1024) == "openvino"  # ViT-L
    assert backends.resolve_backend("auto", CPU, "fp32", vision_width=64) == "eager"  # tiny: eager is faster
    assert backends.resolve_backend("auto", CPU, "int8") == "eager"  # torch dynamic quantisation
    assert backends.resolve_backend("auto", torch.device("cuda"), "fp16") == "eager"
    mp.setattr(backends, "openvino_available", lambda: False)
    assert backends.resolve_backend("auto", CPU, "fp32") == "eager"
    assert backends.resolve_backend("auto", CPU, "bf16") == "cast"  # weights cast once beat autocast
    mp.setenv(backends.BACKEND_ENV, "compile")
    assert backends.resolve_backend("auto", CPU, "fp32") == "compile"
    assert backends.resolve_backend("eager", CPU, "fp32") == "eager"  # an explicit choice wins


def test_refusals(no_backend_env: pytest.MonkeyPatch) -> None:
    mp = no_backend_env
    with pytest.raises(ConfigError, match=r"backend='fast' is not valid; use auto, eager"):
        backends.resolve_backend("fast", CPU, "fp32")
    with pytest.raises(ConfigError, match=r"precision='int8'.*--backend eager"):
        backends.resolve_backend("cast", CPU, "int8")
    mp.setattr(backends, "openvino_available", lambda: True)
    with pytest.raises(ConfigError, match=r"openvino' on device cuda.*--device cpu"):
        backends.resolve_backend("openvino", torch.device("cuda"), "fp16")
    mp.setattr(backends, "openvino_available", lambda: False)
    with pytest.raises(ConfigError, match=r"needs the openvino package.*pip install 'aaclip-med\[openvino\]'"):
        backends.resolve_backend("openvino", CPU, "fp32")
    mp.setenv(backends.BACKEND_ENV, "turbo")
    with pytest.raises(ConfigError, match="AACLIP_MED_BACKEND='turbo' is not a backend"):
        backends.resolve_backend("auto", CPU, "fp32")
    with pytest.raises(ConfigError, match="backend='turbo'"):
        InferenceConfig(backend="turbo")
    assert InferenceConfig().backend == "auto" and "openvino" in BACKENDS


def test_cpu_isa_from_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from aaclip_med.model import precision as precision_mod

    for flags, isa in (({"avx2", "avx512f", "amx_bf16"}, "amx"), ({"avx2", "avx512f", "avx512_bf16"}, "avx512"),
                       ({"avx2"}, "avx2"), (set(), "other")):  # fmt: skip
        monkeypatch.setattr(backends, "_cpu_flags", lambda f=flags: f)
        assert backends.cpu_isa() == isa
        assert precision_mod._cpu_has_bf16() is (isa == "amx")  # avx512_bf16 without AMX measured slower than fp32


def test_isa_cap_lowers_cpu_isa(monkeypatch: pytest.MonkeyPatch) -> None:
    """ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA / MKL_ENABLE_INSTRUCTIONS emulate a smaller ISA (the AVX2 runs)."""
    from aaclip_med.model import precision as precision_mod

    monkeypatch.setattr(backends, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    for var in backends.ISA_CAP_ENVS:
        monkeypatch.delenv(var, raising=False)
    assert (backends.cpu_isa(), backends.isa_cap()) == ("amx", None)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")  # does not cap below AMX
    assert backends.cpu_isa() == "amx" and precision_mod._cpu_has_bf16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert backends.cpu_isa() == "avx512" and not precision_mod._cpu_has_bf16()  # auto precision: fp32
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    envs = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}
    assert backends.isa_cap() == ("avx2", envs)
    assert (backends.cpu_isa(), backends.cpu_isa(honour_cap=False)) == ("avx2", "amx")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "SSE4_2")
    assert backends.cpu_isa() == "other"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cast_backend_matches_eager(tiny: AACLIP, make_tiny: Callable[..., AACLIP], precision: str) -> None:
    x = _x()
    ref = tiny.score_slices(x, "mri")
    model = make_tiny(precision=precision, backend="cast")
    out = model.score_slices(x, "mri")
    assert model.backend == "cast" and out.maps.dtype == torch.float32 and out.level_maps is not None
    if precision == "fp32":
        torch.testing.assert_close(out.maps, ref.maps)
    else:  # bf16 weights: about 3 significant digits per matmul
        assert model.clip.visual.conv1.weight.dtype == torch.bfloat16
        assert model.clip.transformer.resblocks[0].mlp.c_fc.weight.dtype == torch.float32  # text tower untouched
        assert _r(out.maps, ref.maps) >= 0.999  # measured 0.99992 (tiny, random slices)
        assert (out.maps - ref.maps).abs().max() < 0.1  # map range about 2
        assert (out.score - ref.score).abs().max() < 0.1
    assert model.metadata()["backend"] == "cast"


def test_bf16_autocast_volume_path(make_tiny: Callable[..., AACLIP]) -> None:
    """The bf16 path through score_volume (what AACLIP_MED_PRECISION=bf16 exercises in the whole suite)."""
    import numpy as np

    from aaclip_med.inference import score_volume
    from aaclip_med.volume import Volume

    rng = np.random.default_rng(0)
    vol = Volume(rng.normal(size=(40, 40, 4)).astype(np.float32) + 2, np.eye(4), "MR", "synthetic", {})
    ref = score_volume(make_tiny(precision="fp32"), vol, "mri", progress=False)
    low = score_volume(make_tiny(precision="bf16", backend="eager"), vol, "mri", progress=False)
    assert _r(torch.from_numpy(low.heatmap), torch.from_numpy(ref.heatmap)) >= 0.999
    assert np.abs(low.slice_scores - ref.slice_scores).max() < 0.1


def test_non_eager_backends_are_inference_only(make_tiny: Callable[..., AACLIP]) -> None:
    model = make_tiny(backend="cast")
    with pytest.raises(ConfigError, match="backend='cast' is inference only"):
        model.trainable_parameters(2)
    with pytest.raises(ConfigError, match="backend='cast' is inference only"):
        model.surgery_features(torch.zeros(1, 3, 224, 224))


@pytest.mark.slow
def test_compile_backend_matches_eager(tiny: AACLIP, make_tiny: Callable[..., AACLIP]) -> None:
    x = _x(2)
    out = make_tiny(backend="compile").score_slices(x, "mri").maps  # inductor: tens of seconds to compile
    torch.testing.assert_close(out, tiny.score_slices(x, "mri").maps, atol=1e-4, rtol=1e-4)


@needs_openvino
def test_openvino_matches_eager_and_caches(
    tiny: AACLIP,
    make_tiny: Callable[..., AACLIP],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import openvino

    monkeypatch.setenv(backends.CACHE_ENV, str(tmp_path))
    x = _x()
    ref = tiny.score_slices(x, "mri")
    model = make_tiny(backend="openvino")
    key = backends.openvino_cache_key(model)  # before the engine releases the PyTorch vision weights
    out = model.score_slices(x, "mri")
    # the IR stores the weights in fp16 (OpenVINO computes in f32): measured max |d| 4.4e-4, map range about 2
    torch.testing.assert_close(out.maps, ref.maps, atol=2e-3, rtol=0)
    assert _r(out.maps, ref.maps) >= 0.99999
    torch.testing.assert_close(out.det_score, ref.det_score, atol=1e-3, rtol=0)
    assert (tmp_path / "openvino" / key[:32] / "vision.xml").is_file()

    def no_conversion(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted again although the cache holds this model")

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    with caplog.at_level(logging.INFO, logger="aaclip_med.model.backends"):
        again = make_tiny(backend="openvino").score_slices(x[:1], "mri").maps  # same weights: from the cache
    assert "cached vision model" in caplog.text
    torch.testing.assert_close(again, out.maps[:1])
    assert backends.openvino_cache_key(make_tiny(backend="openvino", seed=5)) != key  # other weights, other key


@needs_openvino
def test_openvino_releases_torch_vision_weights(
    tiny: AACLIP, make_tiny: Callable[..., AACLIP], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Peak RSS: once the OpenVINO IR holds the vision weights, the PyTorch copy goes (adapters: create_model)."""
    monkeypatch.setenv(backends.CACHE_ENV, str(tmp_path / "cache"))
    path = tiny.save_adapters(str(tmp_path / "a.safetensors"))
    model = make_tiny(backend="openvino", adapter_weights=path)  # loaded before the engine: fine
    x = _x(1)
    before = model.score_slices(x, "mri").maps
    assert model.vision_weights_released and model.clip.visual.conv1.weight.numel() == 0
    with pytest.raises(ConfigError, match="already holds the only copy of the vision weights.*adapter_weights"):
        model.load_adapters(read_adapters(path))
    torch.testing.assert_close(model.score_slices(x, "mri").maps, before)  # still usable
    assert not tiny.vision_weights_released


def test_amx_path_on_any_cpu(
    no_backend_env: pytest.MonkeyPatch, tiny: AACLIP, make_tiny: Callable[..., AACLIP]
) -> None:
    """What an AMX CPU gets by default (bf16, weights cast once; OpenVINO bf16 for large models), run here."""
    from aaclip_med.model import factory

    no_backend_env.delenv(factory.PRECISION_ENV, raising=False)
    no_backend_env.setattr(backends, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    model = make_tiny(precision="auto", backend="auto")
    assert (model.precision, model.backend) == ("bf16", "cast")  # tiny: below OPENVINO_MIN_WIDTH
    x = _x(2)
    assert _r(model.score_slices(x, "mri").maps, tiny.score_slices(x, "mri").maps) >= 0.999


@needs_openvino
def test_openvino_bf16_close_to_fp32(
    tiny: AACLIP, make_tiny: Callable[..., AACLIP], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(backends.CACHE_ENV, str(tmp_path))
    x = _x(2)
    out = make_tiny(precision="bf16", backend="openvino").score_slices(x, "mri").maps
    ref = tiny.score_slices(x, "mri").maps
    assert _r(out, ref) >= 0.999 and (out - ref).abs().max() < 0.1  # bf16 inference hint (AMX: bf16 matmuls)


@needs_openvino
def test_openvino_int8_close_to_fp32(
    tiny: AACLIP, make_tiny: Callable[..., AACLIP], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("nncf", reason="nncf (int8 weights for OpenVINO) not installed")
    monkeypatch.setenv(backends.CACHE_ENV, str(tmp_path))
    x = _x(2)
    model = make_tiny(precision="int8", backend="openvino")
    assert not any("quantized" in type(m).__module__ for m in model.clip.visual.modules())  # not torch's int8
    out = model.score_slices(x, "mri").maps
    ref = tiny.score_slices(x, "mri").maps
    assert _r(out, ref) >= 0.999 and (out - ref).abs().max() < 0.1  # int8 weights, dynamic int8 activations


def test_backend_flag_and_config(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from aaclip_med.cli import app
    from aaclip_med.cli_options import scoring_config as _scoring_config
    from aaclip_med.config import load_run_config

    assert _scoring_config(None, backend="eager").inference.backend == "eager"
    toml = tmp_path / "run.toml"
    toml.write_text('[inference]\nbackend = "cast"\n')
    assert load_run_config(toml).inference.backend == "cast"
    assert _scoring_config(toml, backend=None).inference.backend == "cast"  # a flag not given keeps the file's
    for command in ("run", "batch"):
        out = ["-o", str(tmp_path / "o")] if command == "batch" else []
        args = [command, str(tmp_path), "--backend", "turbo", *out]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and "backend='turbo' is not valid" in res.output, res.output
        assert "Traceback" not in res.output
