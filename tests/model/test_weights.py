"""Adapter checkpoints (ours and reference) and their error messages."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from aaclip_med import __version__
from aaclip_med.errors import WeightsError
from aaclip_med.model import AACLIP
from aaclip_med.model.weights import read_adapters


def _reference_dicts(model: AACLIP) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    state = model.adapter_state()
    text = {k.removeprefix("text_adapter."): v.clone() for k, v in state.items() if k.startswith("text_")}
    image = {k.removeprefix("image_adapter."): v.clone() for k, v in state.items() if k.startswith("image_")}
    return text, image


def test_save_load_round_trip(tiny: AACLIP, make_tiny: Callable[..., AACLIP], tmp_path: Path) -> None:
    path = tmp_path / "adapters.safetensors"
    tiny.save_adapters(str(path), {"threshold": 3.25, "presets": ["brain_mri"]})
    other = make_tiny(seed=0, adapter_weights=path)
    for key, value in tiny.adapter_state().items():
        assert torch.equal(other.adapter_state()[key], value), key
    assert other.threshold == 3.25
    meta = read_adapters(path).metadata
    assert meta is not None and meta["aaclip_med_version"] == __version__
    assert meta["backbone"]["seed"] == 0 and len(meta["backbone"]["fingerprint"]) == 5
    assert meta["taps"] == [1, 2, 3, 4] and meta["lam_image"] == 0.1
    assert other.metadata()["adapters"]["sha256"]
    json.dumps(other.metadata())


def test_backbone_mismatch_refused(tiny: AACLIP, make_tiny: Callable[..., AACLIP], tmp_path: Path) -> None:
    path = tmp_path / "adapters.safetensors"
    tiny.save_adapters(str(path))
    with pytest.raises(WeightsError, match="different aaclip-tiny backbone.*random seed 0"):
        make_tiny(seed=5, adapter_weights=path)


def test_reference_folder_and_pair(tiny: AACLIP, make_tiny: Callable[..., AACLIP], tmp_path: Path) -> None:
    text, image = _reference_dicts(tiny)
    torch.save({"epoch": 4, "text_adapter": text, "text_optimizer": {"state": {}}}, tmp_path / "text_adapter.pth")
    torch.save({"epoch": 9, "image_adapter": image}, tmp_path / "image_adapter_9.pth")
    zeros = {k: torch.zeros_like(v) for k, v in image.items()}
    torch.save({"epoch": 10, "image_adapter": zeros}, tmp_path / "image_adapter_10.pth")
    from_dir = make_tiny(seed=7, adapter_weights=tmp_path)  # picks epoch 10 (highest number), not 9
    assert all(float(v.abs().sum()) == 0 for k, v in from_dir.adapter_state().items() if "image_adapter" in k)
    pair = make_tiny(seed=7, adapter_weights=(tmp_path / "text_adapter.pth", tmp_path / "image_adapter_9.pth"))
    for key, value in tiny.adapter_state().items():
        assert torch.equal(pair.adapter_state()[key], value)


def test_wrong_shapes_and_missing_keys(tiny: AACLIP, make_tiny: Callable[..., AACLIP], tmp_path: Path) -> None:
    text, image = _reference_dicts(tiny)
    image["seg_proj.0.fc.weight"] = torch.zeros(3, 3)
    del image["det_proj.fc.weight"]
    image["extra.weight"] = torch.zeros(1)
    torch.save({"text_adapter": text}, tmp_path / "text_adapter.pth")
    torch.save({"image_adapter": image}, tmp_path / "image_adapter.pth")
    with pytest.raises(WeightsError) as info:
        make_tiny(adapter_weights=tmp_path)
    message = str(info.value)
    assert "image_adapter.det_proj.fc.weight" in message and "image_adapter.extra.weight" in message
    assert "image_adapter.seg_proj.0.fc.weight (3, 3)!=(64, 64)" in message


def test_corrupted_and_missing_files(make_tiny: Callable[..., AACLIP], tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(WeightsError, match="corrupt"):
        make_tiny(adapter_weights=bad)
    (tmp_path / "text_adapter.pth").write_bytes(b"not a zip")
    (tmp_path / "image_adapter.pth").write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="corrupt"):
        read_adapters(tmp_path)
    with pytest.raises(WeightsError, match="not found"):
        read_adapters(tmp_path / "nothing.safetensors")
    with pytest.raises(WeightsError, match="no image_adapter"):
        read_adapters(tmp_path / "..")


class _Opaque:
    """A class instance makes a checkpoint a full pickle (weights_only=True refuses it)."""


def test_full_pickle_needs_trust(tiny: AACLIP, tmp_path: Path) -> None:
    text, image = _reference_dicts(tiny)
    torch.save({"text_adapter": text, "extra": _Opaque()}, tmp_path / "text_adapter.pth")
    torch.save({"image_adapter": image}, tmp_path / "image_adapter.pth")
    with pytest.raises(WeightsError, match="trust_pickle"):
        read_adapters(tmp_path)
    assert len(read_adapters(tmp_path, trust_pickle=True).state) == len(tiny.adapter_state())
