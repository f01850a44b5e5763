"""Backbone weights as they are released load at any input size (issue: the paper's weights at 518 px).

The OpenAI ViT-L-14-336 release is a TorchScript archive of fp16 tensors on a 336 px grid (24x24), and AA-CLIP
runs it at 518 px (37x37), so the position embedding is resized on load. These tests build each release format
themselves (no weights can be downloaded here): an fp16 state dict, a TorchScript archive with the release's
names, dtypes and extra entries, open_clip's ``.bin`` / ``.safetensors`` (fp16, bf16, fp32), a file found through
open_clip's Hugging Face cache and through ``$AACLIP_MED_WEIGHTS_DIR``, and check that each loads at its native
size and at larger and smaller ones, with the weights equal to the released values (as fp32) and finite maps.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from aaclip_med.cli import app
from aaclip_med.errors import WeightsError
from aaclip_med.model import AACLIP
from aaclip_med.model.weights import WEIGHTS_DIR_ENV, load_backbone_state, native_image_size

SIZES = (224, 112, 336, 518)  # native, smaller, larger, the paper's size
FAKE_TAG = {"cachetest": {"hf_hub": "aaclip-test/tiny/"}}  # a pretrained tag for the tiny arch (via the HF cache)


class _Holder(torch.nn.Module):
    """Plain nested modules carrying a state dict's tensors under the same names (for TorchScript archives)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def torchscript_release(state: dict[str, torch.Tensor], path: Path, input_resolution: int) -> Path:
    """Write ``state`` as an OpenAI-style TorchScript archive (``torch.jit.load(...).state_dict()`` gives it back).

    The OpenAI archive also holds the integer entries ``input_resolution``, ``context_length`` and ``vocab_size``.
    """
    root = _Holder()
    extras = {"input_resolution": input_resolution, "context_length": 77, "vocab_size": 49408}
    for key, value in [*state.items(), *((k, torch.tensor(v)) for k, v in extras.items())]:
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, _Holder())
            module = getattr(module, name)
        if value.is_floating_point():
            module.register_parameter(leaf, torch.nn.Parameter(value, requires_grad=False))
        else:
            module.register_buffer(leaf, value)
    torch.jit.save(torch.jit.script(root), str(path))
    return path


def hub_cache_entry(hub: Path, repo_id: str, state: dict[str, torch.Tensor]) -> Path:
    """Lay ``state`` out as ``hf_hub_download`` caches ``open_clip_pytorch_model.bin`` of ``repo_id``."""
    revision = "0" * 40
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    path = repo / "snapshots" / revision / "open_clip_pytorch_model.bin"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def released(make_tiny: Callable[..., AACLIP]) -> dict[str, torch.Tensor]:
    """A tiny backbone's weights as a release stores them: fp16, on its native 224 px grid."""
    make_tiny()  # registers the tiny open_clip config
    torch.manual_seed(11)
    clip = open_clip.create_model("aaclip-tiny", pretrained=None)
    return {k: v.half() if v.is_floating_point() else v for k, v in clip.state_dict().items()}


def _formats(state: dict[str, torch.Tensor], folder: Path) -> dict[str, Path]:
    files = {
        "fp16 state dict (.pt)": folder / "tiny_fp16.pt",
        "open_clip .bin fp16": folder / "open_clip_pytorch_model.bin",
        "open_clip .safetensors fp16": folder / "open_clip_model.safetensors",
        "bf16 .safetensors": folder / "tiny_bf16.safetensors",
        "fp32 .safetensors": folder / "tiny_fp32.safetensors",
        "TorchScript fp16": folder / "tiny_jit.pt",
    }
    torch.save(state, files["fp16 state dict (.pt)"])
    torch.save(state, files["open_clip .bin fp16"])
    save_file({k: v.contiguous() for k, v in state.items()}, str(files["open_clip .safetensors fp16"]))
    cast = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
    save_file({k: v.contiguous() for k, v in cast.items()}, str(files["bf16 .safetensors"]))
    save_file({k: v.float().contiguous() for k, v in state.items()}, str(files["fp32 .safetensors"]))
    torchscript_release(state, files["TorchScript fp16"], input_resolution=224)
    return files


@pytest.fixture(scope="module")
def release_files(released: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _formats(released, tmp_path_factory.mktemp("releases"))


def test_reader_gives_fp32_with_the_released_values(
    released: dict[str, torch.Tensor], release_files: dict[str, Path]
) -> None:
    for name, path in release_files.items():
        state = load_backbone_state(path)
        assert set(state) == set(released), name  # TorchScript extras dropped
        for key, value in released.items():
            assert state[key].dtype == (torch.float32 if value.is_floating_point() else value.dtype), (name, key)
            want = value.to(torch.bfloat16).float() if "bf16" in name and value.is_floating_point() else value
            assert torch.equal(state[key], want.to(state[key].dtype)), (name, key)
        assert native_image_size(state) == 224


@pytest.mark.parametrize("size", SIZES)
def test_every_release_format_loads_at_any_size(
    make_tiny: Callable[..., AACLIP],
    released: dict[str, torch.Tensor],
    release_files: dict[str, Path],
    size: int,
) -> None:
    grid = size // 16
    for name, path in release_files.items():
        model = make_tiny(backbone_weights=str(path), image_size=size)
        pos = model.clip.visual.positional_embedding
        assert pos.dtype == torch.float32 and pos.shape == (1 + grid * grid, 64), name
        if size == 224 and "bf16" not in name:  # native grid: no resize, the released values exactly
            for key, value in released.items():
                assert torch.equal(model.clip.state_dict()[key], value.to(model.clip.state_dict()[key].dtype))
        out = model.score_slices(torch.randn(1, 3, size, size))
        assert out.maps.shape == (1, size, size) and bool(torch.isfinite(out.maps).all()), (name, size)
        assert not model.untrained_backbone


def test_open_clip_hub_cache_path(
    make_tiny: Callable[..., AACLIP],
    released: dict[str, torch.Tensor],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pretrained tag resolves through open_clip's Hugging Face cache offline, as ``openai`` does for users."""
    import huggingface_hub.constants as hf_constants

    hub_cache_entry(tmp_path / "hub", "aaclip-test/tiny", released)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "aaclip-tiny", FAKE_TAG)
    model = make_tiny(backbone_weights="cachetest", image_size=518)
    assert model.backbone_info["source"] == "tag"
    assert Path(model.backbone_info["path"]).name == "open_clip_pytorch_model.bin"
    assert model.clip.visual.positional_embedding.shape[0] == 1 + 32 * 32


def test_weights_dir_is_used_for_a_tag(
    make_tiny: Callable[..., AACLIP],
    release_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``$AACLIP_MED_WEIGHTS_DIR`` holding the hand-downloaded file wins over any download."""

    def no_download(*_a: object, **_k: object) -> str:
        raise AssertionError("downloaded although the weights folder holds the file")

    (tmp_path / "aaclip-tiny-cachetest.pt").write_bytes(release_files["TorchScript fp16"].read_bytes())
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(open_clip, "download_pretrained", no_download)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "aaclip-tiny", FAKE_TAG)
    model = make_tiny(backbone_weights="cachetest", image_size=336)
    assert model.backbone_info["path"] == str(tmp_path / "aaclip-tiny-cachetest.pt")


def test_weights_import_checks_at_the_run_size(
    release_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "cache"))
    runner = CliRunner()
    src = release_files["TorchScript fp16"]
    result = runner.invoke(app, ["weights", "import", str(src), "--model", "aaclip-tiny", "--image-size", "518"])
    assert result.exit_code == 0, result.output
    assert "at 224, 518 px" in result.output
    assert (tmp_path / "cache" / src.name).read_bytes() == src.read_bytes()
    # weights of another architecture: refused in one line, nothing copied
    torch.save({"visual.conv1.weight": torch.zeros(8, 3, 16, 16, dtype=torch.float16)}, tmp_path / "other.pt")
    result = runner.invoke(app, ["weights", "import", str(tmp_path / "other.pt"), "--model", "aaclip-tiny"])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert "other.pt" in result.output and not (tmp_path / "cache" / "other.pt").exists()


def test_reference_adapters_saved_on_a_gpu(
    tiny: AACLIP, make_tiny: Callable[..., AACLIP], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reference ``.pth`` files written on a GPU record a ``cuda`` location; they load on a CPU-only machine."""
    state = tiny.adapter_state()
    text = {k.removeprefix("text_adapter."): v.clone() for k, v in state.items() if k.startswith("text_")}
    image = {k.removeprefix("image_adapter."): v.clone() for k, v in state.items() if k.startswith("image_")}
    with monkeypatch.context() as patch:  # what torch.save writes for CUDA tensors, without needing a GPU
        patch.setattr(torch.serialization, "location_tag", lambda _storage: "cuda:0")
        torch.save({"text_adapter": text}, tmp_path / "text_adapter.pth")
        torch.save({"image_adapter": image}, tmp_path / "image_adapter_5.pth")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "text_adapter.pth", weights_only=True)  # the file really is GPU-tagged
    model = make_tiny(adapter_weights=tmp_path)
    for key, value in state.items():
        assert torch.equal(model.adapter_state()[key], value), key


def test_adapters_trained_in_bf16(tiny: AACLIP, make_tiny: Callable[..., AACLIP], tmp_path: Path) -> None:
    """Adapter files holding bf16 tensors (a bf16 training run) load, as fp32, with our metadata checks."""
    import json

    from safetensors import safe_open

    from aaclip_med.model.weights import read_adapters

    path = tmp_path / "fp32.safetensors"
    tiny.save_adapters(str(path), {"threshold": 1.5})
    ckpt = read_adapters(path)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    bf16 = tmp_path / "bf16.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in ckpt.state.items()}, str(bf16), metadata=meta)
    model = make_tiny(adapter_weights=bf16)
    for key, value in ckpt.state.items():
        got = model.adapter_state()[key]
        assert got.dtype == torch.float32 and torch.equal(got, value.to(torch.bfloat16).float()), key
    assert model.threshold == 1.5 and json.loads(meta["aaclip_med"])["threshold"] == 1.5


def test_run_at_image_size_336_with_a_released_file(
    release_files: dict[str, Path], nifti_path: Path, tmp_path: Path
) -> None:
    """``run --image-size 336`` with an fp16 release file: the pipeline at a size the file was not saved at."""
    import json

    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "run", str(nifti_path), "-o", str(out), "--model", "aaclip-tiny", "--precision", "fp32",
            "--no-progress",
            "--backbone-weights", str(release_files["fp16 state dict (.pt)"]), "--image-size", "336",
        ],
    )
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["inference"]["image_size"] == 336
    assert (out / "heatmap.nii.gz").is_file()


def test_corrupt_release_is_one_line(make_tiny: Callable[..., AACLIP], tmp_path: Path) -> None:
    bad = tmp_path / "ViT-L-14-336px.pt"
    bad.write_bytes(os.urandom(256))
    with pytest.raises(WeightsError, match="ViT-L-14-336px.pt"):
        make_tiny(backbone_weights=str(bad))
