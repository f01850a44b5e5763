"""Adapter checkpoints: our ``.safetensors`` (with a JSON metadata block) and reference AA-CLIP ``.pth`` files.

Reference checkpoints are mapped key by key onto ours (``text_adapter.*``, ``image_adapter.*``);
:func:`check_adapter_state` checks the key set and every shape against the model before anything is loaded.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import torch

from aaclip_med._files import atomic_path, sha256_file
from aaclip_med.errors import WeightsError
from aaclip_med.model.weights.backbone import load_torch_file

__all__ = [
    "METADATA_KEY",
    "AdapterCheckpoint",
    "AdapterSource",
    "check_adapter_state",
    "read_adapters",
    "write_adapters",
]

logger = logging.getLogger(__name__)

METADATA_KEY = "aaclip_med"
AdapterSource: TypeAlias = "str | os.PathLike[str] | tuple[str | os.PathLike[str], str | os.PathLike[str]]"


@dataclass(frozen=True)
class AdapterCheckpoint:
    """Adapter tensors under our keys (``text_adapter.*``, ``image_adapter.*``) and where they came from."""

    state: dict[str, torch.Tensor]
    metadata: dict[str, Any] | None
    source: str
    sha256: str | None


def write_adapters(
    path: str | os.PathLike[str], state: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]
) -> Path:
    """Write adapter tensors to ``.safetensors`` with ``metadata`` as a JSON block (atomic rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(dict(metadata), sort_keys=True)})
    return path


def _read_safetensors(path: Path) -> AdapterCheckpoint:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta_raw = (fh.metadata() or {}).get(METADATA_KEY)
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no iterator
        metadata = json.loads(meta_raw) if meta_raw else None
    except Exception as err:
        msg = (
            f"{path}: cannot read adapter safetensors ({type(err).__name__}); the file is corrupt "
            "or truncated. Re-export or re-download it."
        )
        raise WeightsError(msg) from err
    return AdapterCheckpoint(state, metadata, str(path), sha256_file(path))


def _read_reference(path: Path, key: str, trust_pickle: bool) -> dict[str, torch.Tensor]:
    if not path.is_file():
        msg = f"{path}: reference adapter checkpoint not found. Check the path."
        raise WeightsError(msg)
    obj = load_torch_file(path, trust_pickle)
    if not isinstance(obj, Mapping) or key not in obj:
        found = sorted(obj)[:6] if isinstance(obj, Mapping) else type(obj).__name__
        msg = f"{path}: no '{key}' entry (found {found}); expected a reference AA-CLIP {key}.pth checkpoint."
        raise WeightsError(msg)
    return {f"{key}.{k}": v for k, v in obj[key].items()}


def _pick_image_checkpoint(folder: Path) -> Path:
    numbered = []
    for p in folder.glob("image_adapter*.pth"):
        match = re.fullmatch(r"image_adapter_(\d+)\.pth", p.name)
        if match:
            numbered.append((int(match.group(1)), p))
    if numbered:
        epoch, chosen = max(numbered)
        logger.info("Reference image adapter: %s (highest epoch %d of %d)", chosen.name, epoch, len(numbered))
        return chosen
    plain = folder / "image_adapter.pth"
    if plain.is_file():
        logger.info("Reference image adapter: %s", plain)
        return plain
    msg = (
        f"{folder}: no image_adapter*.pth. Pass a folder with the reference text_adapter.pth and "
        "image_adapter_<epoch>.pth, or our .safetensors."
    )
    raise WeightsError(msg)


def read_adapters(source: AdapterSource, trust_pickle: bool = False) -> AdapterCheckpoint:
    """Read adapter weights: our ``.safetensors``, a reference folder, or a ``(text, image)`` pair of paths.

    Reference checkpoint keys (spec 2.6) map to ours by an explicit prefix: ``{i}.fc.0.weight`` of the
    ``text_adapter`` entry becomes ``text_adapter.{i}.fc.0.weight``, and likewise for ``image_adapter``.

    Raises:
        WeightsError: missing, corrupt or wrongly structured files.
    """
    if isinstance(source, tuple | list):
        if len(source) != 2:
            msg = f"adapter_weights pair {source!r} must be (text_adapter.pth, image_adapter.pth)."
            raise WeightsError(msg)
        text_path, image_path = (Path(p) for p in source)
    else:
        path = Path(source)
        if path.is_dir():
            text_path, image_path = path / "text_adapter.pth", _pick_image_checkpoint(path)
        elif path.is_file() and path.suffix.lower() in (".pth", ".pt", ".bin", ".ckpt"):
            msg = (
                f"Adapter weights '{source}' is a single {path.suffix} file; adapters are our .safetensors, or a "
                "folder holding the reference text_adapter.pth and image_adapter_<epoch>.pth (pass the folder)."
            )
            raise WeightsError(msg)
        elif path.is_file():
            return _read_safetensors(path)
        else:
            msg = (
                f"Adapter weights '{source}' not found; pass our .safetensors, a folder with "
                "reference text_adapter.pth + image_adapter_<epoch>.pth, or a (text, image) pair."
            )
            raise WeightsError(msg)
    state = _read_reference(text_path, "text_adapter", trust_pickle)
    state.update(_read_reference(image_path, "image_adapter", trust_pickle))
    return AdapterCheckpoint(state, None, f"{text_path} + {image_path}", None)


def check_adapter_state(
    expected: Mapping[str, torch.Size], state: Mapping[str, torch.Tensor], source: str
) -> None:
    """Check that ``state`` has exactly the expected adapter keys and shapes.

    Raises:
        WeightsError: listing missing and unexpected keys and shape mismatches.
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k} {tuple(state[k].shape)}!={tuple(expected[k])}"
        for k in sorted(set(expected) & set(state))
        if state[k].shape != expected[k]
    ]
    if missing or unexpected or shapes:
        hint = (
            " (fc.0 vs fc: the checkpoint and model disagree on the seg/det --relu flag)"
            if any(".fc.0." in k and "proj" in k for k in missing + unexpected)
            else ""
        )
        msg = (
            f"{source}: adapter weights do not fit this model{hint}; missing {missing}, "
            f"unexpected {unexpected}, shape mismatches {shapes}. Use adapters trained for this "
            "model name."
        )
        raise WeightsError(msg)
