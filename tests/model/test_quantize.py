"""precision="int8": dynamic int8 vision linears on CPU (aaclip_med.model.quantize), accuracy and refusals."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch

from aaclip_med import config
from aaclip_med.errors import ConfigError
from aaclip_med.model import AACLIP, factory
from aaclip_med.model import precision as precision_mod
from aaclip_med.model.aaclip import sdpa_block
from aaclip_med.model.quantize import Int8SelfAttention


@pytest.fixture(scope="module")
def int8(make_tiny: Callable[..., AACLIP]) -> AACLIP:
    return make_tiny(precision="int8")


def _x(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def test_int8_maps_finite_and_close_to_fp32(tiny: AACLIP, int8: AACLIP) -> None:
    x = _x(2)
    ref = tiny.score_slices(x, "mri")
    out = int8.score_slices(x, "mri")
    assert int8.precision == "int8" and out.maps.dtype == torch.float32
    assert torch.isfinite(out.maps).all() and torch.isfinite(out.det_score).all()
    corr = torch.corrcoef(torch.stack([out.maps.flatten(), ref.maps.flatten()]))[0, 1]
    assert corr >= 0.999  # measured 0.99993-0.99997 here (0.9996 on CT sample slices); the guard
    assert (out.maps - ref.maps).abs().max() < 0.1  # measured 0.015, map range about 2


def test_int8_quantises_only_the_vision_blocks(tiny: AACLIP, int8: AACLIP) -> None:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    blocks = int8.clip.visual.transformer.resblocks
    assert all(isinstance(b.attn, Int8SelfAttention) for b in blocks)
    assert sum(isinstance(m, DynamicLinear) for m in blocks.modules()) == 4 * len(blocks)  # qkv, out, fc, proj
    for fp32_part in (int8.clip.transformer, int8.image_adapter, int8.text_adapter):
        assert not any(isinstance(m, DynamicLinear) for m in fp32_part.modules())
    assert int8.backbone_info["fingerprint"] == tiny.backbone_info["fingerprint"]  # fp32 checkpoints still load
    torch.testing.assert_close(int8.text_anchors("mri"), tiny.text_anchors("mri"))


def test_int8_block_forward_matches_fused_path(int8: AACLIP) -> None:
    block = int8.clip.visual.transformer.resblocks[0]
    assert isinstance(block.attn, Int8SelfAttention)
    x = torch.randn(2, 9, 64)
    with torch.inference_mode():
        torch.testing.assert_close(block(x), sdpa_block(block, x))
        with pytest.raises(NotImplementedError):
            block.attn(x, x, x, attn_mask=torch.zeros(9, 9))


def test_only_the_quantisation_deprecation_is_silenced() -> None:
    from aaclip_med.model.quantize import _quiet_deprecation

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with _quiet_deprecation():  # torch raises this one once per process, from C++, at weight quantisation
            warnings.warn("torch.quantize_per_tensor, torch.quantize_per_channel ... deprecated", stacklevel=1)
            warnings.warn("something else", stacklevel=1)
    assert [str(w.message) for w in seen] == ["something else"]


def test_int8_is_inference_only(int8: AACLIP) -> None:
    with pytest.raises(ConfigError, match="int8.*inference only"):
        int8.trainable_parameters(2)
    with pytest.raises(ConfigError, match="int8.*inference only"):  # the stage-1 V-V path reads fp32 weights
        int8.surgery_features(torch.zeros(1, 3, int8.input_size, int8.input_size))


def test_int8_refused_off_cpu_and_auto_only_guarded(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (factory.PRECISION_ENV, "AACLIP_MED_BACKEND", "AACLIP_MED_ATTENTION"):
        monkeypatch.delenv(var, raising=False)
    assert factory.resolve_precision("int8", torch.device("cpu")) == "int8"
    assert not factory.int8_guarded("int8", "int8")  # asked for: quantised at build, no guard
    with pytest.raises(ConfigError, match=r"precision='int8' on device cuda.*CPU only.*--device cpu"):
        factory.resolve_precision("int8", torch.device("cuda"))
    for has_bf16, auto in ((False, "int8"), (True, "bf16")):  # without AMX: int8 behind the guard (test_guard.py)
        monkeypatch.setattr(precision_mod, "_cpu_has_bf16", lambda v=has_bf16: v)
        assert factory.resolve_precision("auto", torch.device("cpu")) == auto
        assert factory.int8_guarded("auto", auto) is (auto == "int8")


def test_one_list_of_precisions() -> None:
    assert "int8" in config.PRECISIONS and precision_mod.PRECISIONS is config.PRECISIONS
    assert config.InferenceConfig(precision="int8").precision == "int8"
    with pytest.raises(ConfigError, match="precision='fp8'.*int8"):
        config.InferenceConfig(precision="fp8")
    with pytest.raises(ConfigError, match="precision='fp8'.*int8"):
        factory.resolve_precision("fp8", torch.device("cpu"))
