"""Registry, backbone weight resolution (random, local file, tag, env folder) and precision."""

from __future__ import annotations

import ast
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import open_clip
import pytest
import torch

from aaclip_med.errors import ConfigError, UnknownModelError, WeightsError
from aaclip_med.model import AACLIP, create_model, factory, list_models
from aaclip_med.model import precision as precision_mod
from aaclip_med.model.weights import WEIGHTS_DIR_ENV, resolve_backbone_file, sha256_file


def test_registry() -> None:
    assert list_models() == ["aaclip-tiny", "aaclip-vitl14-336", "demo"]
    with pytest.raises(UnknownModelError, match="did you mean 'aaclip-tiny'"):
        create_model("aaclip-tiyn")


def test_random_backbone_metadata(tiny: AACLIP) -> None:
    meta = tiny.metadata()
    assert tiny.untrained_backbone and meta["backbone_status"] == "untrained backbone"
    assert meta["backbone"]["source"] == "random" and len(meta["backbone"]["fingerprint"]) == 5
    assert tiny.input_size == 224 and tiny.grid(torch.zeros(1, 3, 224, 224)) == (14, 14)
    assert tiny.threshold is None


def test_random_backbone_warns_and_keeps_caller_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with pytest.warns(UserWarning, match="untrained backbone"):
        create_model("aaclip-tiny", backbone_weights="random", device="cpu")
    assert torch.equal(torch.rand(3), expected)


def test_local_pretrained_path(make_tiny: Callable[..., AACLIP], tmp_path: Path) -> None:
    make_tiny()  # registers the tiny open_clip config
    torch.manual_seed(42)
    source = open_clip.create_model("aaclip-tiny", pretrained=None)
    sd = source.state_dict()
    torch.save(sd, tmp_path / "tiny.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "tiny_wrapped.pth")
    for name in ("tiny.pt", "tiny_wrapped.pth"):
        model = make_tiny(backbone_weights=str(tmp_path / name))
        for key, value in model.clip.state_dict().items():
            assert torch.equal(value, sd[key]), key
        assert not model.untrained_backbone
        assert model.backbone_info["sha256"] == sha256_file(tmp_path / name)
        assert model.metadata()["backbone_status"] == "pretrained backbone"


def test_local_path_resized_image(make_tiny: Callable[..., AACLIP], tmp_path: Path) -> None:
    make_tiny()
    torch.save(open_clip.create_model("aaclip-tiny", pretrained=None).state_dict(), tmp_path / "tiny.pt")
    model = make_tiny(backbone_weights=str(tmp_path / "tiny.pt"), image_size=112)
    assert model.clip.visual.positional_embedding.shape == (1 + 7 * 7, 64)
    assert model.score_slices(torch.zeros(1, 3, 112, 112)).maps.shape == (1, 112, 112)


def test_bad_backbone_files(make_tiny: Callable[..., AACLIP], tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found.*--backbone-weights FILE"):
        make_tiny(backbone_weights=str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="corrupt"):
        make_tiny(backbone_weights=str(tmp_path / "junk.pt"))
    torch.save({"visual.conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(WeightsError, match="this backbone"):
        make_tiny(backbone_weights=str(tmp_path / "wrong.pt"))


def test_offline_tag_explains_the_three_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*_args: object, **_kwargs: object) -> str:
        raise ConnectionError("no network")

    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    with pytest.raises(WeightsError) as info:
        create_model("aaclip-vitl14-336", device="cpu")  # None means the "openai" tag
    message = str(info.value)
    assert "openai" in message and "--backbone-weights FILE" in message and WEIGHTS_DIR_ENV in message
    with pytest.raises(WeightsError, match="neither a file nor a pretrained tag"):
        resolve_backbone_file("ViT-L-14-336", "laion-nope")


def test_weights_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "ViT-L-14-336px.pt").write_bytes(b"x")
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    found = resolve_backbone_file("ViT-L-14-336", "openai", ("ViT-L-14-336px.pt",))
    assert found == tmp_path / "ViT-L-14-336px.pt"


def test_demo_needs_shipped_adapters(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(factory, "DATA_DIR", tmp_path)
    with pytest.raises(WeightsError, match="demo_adapters.safetensors.*shipped adapters of model 'demo'"):
        create_model("demo", device="cpu")


def test_adapters_of_another_model_are_refused_before_the_backbone_build(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the backbone was built before the adapters were checked")

    monkeypatch.setattr(open_clip, "create_model", no_build)
    shipped = factory.DATA_DIR / "demo_adapters.safetensors"
    rule = r"trained for model 'aaclip-tiny' \(backbone aaclip-tiny\).*--model aaclip-tiny"
    with pytest.raises(WeightsError, match=rule) as err:
        create_model("aaclip-vitl14-336", backbone_weights="random", adapter_weights=shipped, device="cpu")
    assert "\n" not in str(err.value) and "missing" not in str(err.value)


def test_precision_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (factory.PRECISION_ENV, "AACLIP_MED_ATTENTION"):  # CI may set AACLIP_MED_PRECISION=bf16
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(precision_mod, "_cpu_has_bf16", lambda: False)
    assert factory.resolve_precision("auto", torch.device("cpu")) == "int8"  # guarded (tests/model/test_guard.py)
    assert factory.resolve_precision("auto", torch.device("cpu"), backend="openvino") == "fp32"
    assert factory.resolve_precision("auto", torch.device("cuda")) == "fp16"
    monkeypatch.setattr(precision_mod, "_cpu_has_bf16", lambda: True)
    assert factory.resolve_precision("auto", torch.device("cpu")) == "bf16"
    assert factory.resolve_precision("fp32", torch.device("cpu")) == "fp32"


def test_tiny_config_is_package_data_and_register_model_adds_entries(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shipped = factory.DATA_DIR / "aaclip-tiny.json"
    config = json.loads(shipped.read_text(encoding="utf-8"))
    assert config["vision_cfg"]["width"] == 64 and config["vision_cfg"]["layers"] == 4
    monkeypatch.setattr(factory, "MODEL_REGISTRY", dict(factory.MODEL_REGISTRY))  # registration stays local
    config["vision_cfg"]["layers"] = 2
    own = tmp_path / "aaclip-test-2block.json"
    own.write_text(json.dumps(config), encoding="utf-8")
    spec = factory.ModelSpec("two-blocks", "aaclip-test-2block", "2 vision blocks", 64, "random")
    factory.register_model(spec, own)
    assert "two-blocks" in list_models()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = create_model("two-blocks", device="cpu", precision="fp32")
    assert len(model.clip.visual.transformer.resblocks) == 2 and model.layout.taps == (1, 2)
    with pytest.raises(ConfigError, match="already registered"):
        factory.register_model(spec)
    with pytest.raises(ConfigError, match="'other.json'"):
        factory.register_model(factory.ModelSpec("x", "other", "", 64, "random"), own)


def test_model_imports_run_one_way() -> None:
    """spec <- aaclip <- factory (no import back, even inside a function); __version__ from the leaf module."""
    package = Path(factory.__file__).resolve().parents[1]

    def imported(path: Path) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.update(f"{node.module}.{a.name}" for a in node.names)
        return names

    assert not {n for n in imported(package / "model" / "aaclip.py") if n.startswith("aaclip_med.model.factory")}
    assert not {n for n in imported(package / "model" / "spec.py") if n.startswith("aaclip_med.model")}
    for path in package.rglob("*.py"):
        assert "aaclip_med.__version__" not in imported(path), path


def test_precision_env_overrides_auto_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision_mod, "_cpu_has_bf16", lambda: False)
    monkeypatch.setenv(factory.PRECISION_ENV, "bf16")
    assert factory.resolve_precision("auto", torch.device("cpu")) == "bf16"  # CI: the bf16 path on any CPU
    assert factory.resolve_precision("fp32", torch.device("cpu")) == "fp32"  # an explicit choice wins
    monkeypatch.setenv(factory.PRECISION_ENV, " FP32 ")
    monkeypatch.setattr(precision_mod, "_cpu_has_bf16", lambda: True)
    assert factory.resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setenv(factory.PRECISION_ENV, "auto")
    assert factory.resolve_precision("auto", torch.device("cpu")) == "bf16"
    monkeypatch.setenv(factory.PRECISION_ENV, "int8")
    with pytest.raises(ConfigError, match="int8.*CPU only"):
        factory.resolve_precision("auto", torch.device("cuda"))
    monkeypatch.setenv(factory.PRECISION_ENV, "fp8")
    with pytest.raises(ConfigError, match=r"AACLIP_MED_PRECISION='fp8' is not a precision.*fp32.*unset it"):
        factory.resolve_precision("auto", torch.device("cpu"))


def test_precision_env_reaches_the_model(
    monkeypatch: pytest.MonkeyPatch, make_tiny: Callable[..., AACLIP]
) -> None:
    monkeypatch.setenv(factory.PRECISION_ENV, "bf16")
    assert make_tiny(precision="auto").precision == "bf16"
    assert make_tiny(precision="fp32").precision == "fp32"
