"""Parity with the reference AA-CLIP code (shared/parity/reference_outputs.npz, ViT-L-14-336 random backbone)."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import open_clip
import pytest
import torch

from aaclip_med.model import AACLIP, create_model
from aaclip_med.model.maps import training_probs

TOL = 1e-4


def _make_inputs(parity_dir: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("parity_make_inputs", parity_dir / "make_inputs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def parity(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    mk = _make_inputs(parity_dir)
    ref = dict(np.load(parity_dir / "reference_outputs.npz"))
    folder = tmp_path_factory.mktemp("reference_ckpt")
    text, image = mk.adapter_state_dicts()
    torch.save({"epoch": 4, "text_adapter": text}, folder / "text_adapter.pth")
    torch.save(
        {"epoch": 3, "image_adapter": {k: torch.zeros_like(v) for k, v in image.items()}},
        folder / "image_adapter_3.pth",
    )
    torch.save({"epoch": 20, "image_adapter": image}, folder / "image_adapter_20.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = create_model(
            "aaclip-vitl14-336",
            backbone_weights="random",
            seed=mk.SEED_BACKBONE,
            image_size=mk.SIZE,
            adapter_weights=folder,
            device="cpu",
            precision="fp32",
        )
    ours = np.asarray(model.backbone_info["fingerprint"])
    if not np.allclose(ours, ref["fingerprint"], rtol=1e-6):
        pytest.fail(
            f"the random ViT-L backbone (torch.manual_seed({mk.SEED_BACKBONE})) has fingerprint {ours.tolist()}, "
            f"the reference outputs were made on {ref['fingerprint'].tolist()}: torch {torch.__version__} / "
            f"open_clip {open_clip.__version__} initialise the backbone differently from the build that made "
            "shared/parity, so parity is not checked. Install the README's torch==2.14.1, or regenerate "
            "reference_outputs.npz with this build (shared/parity/README.md)."
        )
    x = torch.from_numpy(ref["x"])
    seen: dict[str, list[torch.Tensor]] = {}
    encode_levels = model.encode_levels

    def spy(images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        seg, det = encode_levels(images)
        seen["seg"] = seg
        return seg, det

    model.encode_levels = spy  # type: ignore[method-assign]  # reuse score_slices' ViT-L pass (CPU time)
    out = model.score_slices(x, "reference")
    del model.encode_levels
    probs = training_probs(seen["seg"][-1], model.text_anchors("reference"), model.grid(x), (224, 224))
    with torch.no_grad():
        surgery = model.surgery_tokens(x, vv_axis="batch")[-1]
    ours = {
        "anchors": model.text_anchors("reference"),
        "level_maps": out.level_maps,
        "anomaly_map": out.maps,
        "det_score": out.det_score,
        "train_probs_l24": probs,
        "surgery_tokens_l24": surgery,
    }
    return {"ref": ref, "ours": {k: v.numpy() for k, v in ours.items()}, "model": model}


@pytest.mark.parametrize(
    "key", ["anchors", "level_maps", "anomaly_map", "det_score", "train_probs_l24", "surgery_tokens_l24"]
)
def test_matches_reference(parity: dict[str, Any], key: str) -> None:
    ours, ref = parity["ours"][key], parity["ref"][key]
    assert ours.shape == ref.shape
    err = float(np.abs(ours - ref).max())
    print(f"parity {key}: max abs err {err:.3e}")
    assert err < TOL, f"{key}: max abs err {err}"


def test_reference_layout(parity: dict[str, Any]) -> None:
    model: AACLIP = parity["model"]
    assert model.layout.taps == (6, 12, 18, 24)
    assert (model.layout.image_adapt_until, model.layout.text_adapt_until, model.layout.surgery_from) == (6, 3, 6)
    assert model.untrained_backbone and model.metadata()["backbone_status"] == "untrained backbone"
    assert model.adapter_info["source"].endswith("image_adapter_20.pth")
