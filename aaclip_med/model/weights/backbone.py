"""Backbone weight files: resolution, import, reading, fp32 conversion, fingerprints, loading into a CLIP.

Backbone weights come from one of three places: an open_clip ``pretrained`` tag (downloaded where online, cached by
open_clip), a local file (open_clip checkpoint, state dict, safetensors, or the OpenAI TorchScript ``.pt``), or a
folder named by ``AACLIP_MED_WEIGHTS_DIR`` that holds such a file. Torch files are read with ``weights_only=True``
(:func:`load_torch_file`, shared with the reference adapter checkpoints of
:mod:`~aaclip_med.model.weights.adapter_checkpoint`).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import shutil
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from aaclip_med._files import atomic_path, sha256_file
from aaclip_med.errors import WeightsError

if TYPE_CHECKING:
    from open_clip.model import CLIP

__all__ = [
    "WEIGHTS_DIR_ENV",
    "apply_backbone_state",
    "as_fp32",
    "fingerprint",
    "import_backbone_file",
    "load_backbone_state",
    "load_torch_file",
    "native_image_size",
    "resolve_backbone_file",
    "weights_dir",
]

logger = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "AACLIP_MED_WEIGHTS_DIR"
_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def fingerprint(state_dict: Mapping[str, torch.Tensor]) -> list[float]:
    """Return sums of five backbone tensors (as ``shared/parity/make_inputs.py``): identifies a backbone cheaply.

    The last vision block's MLP weight is used whatever the depth, so the rule fits every config.
    """
    n_blocks = 1 + max(int(k.split(".")[3]) for k in state_dict if k.startswith("visual.transformer.resblocks."))
    keys = [
        "visual.conv1.weight",
        "token_embedding.weight",
        f"visual.transformer.resblocks.{n_blocks - 1}.mlp.c_fc.weight",
        "text_projection",
        "visual.proj",
    ]
    return [float(state_dict[k].double().sum()) for k in keys]


def _how_to(arch: str, what: str) -> str:
    return (
        f"Backbone weights for {arch} not available ({what}). Supply them one of three ways: a pretrained tag "
        f"such as 'openai' with network access (downloads once into the open_clip cache), "
        f"--backbone-weights FILE (open_clip checkpoint, state dict or the OpenAI ViT-L-14-336px.pt), or a "
        f"folder holding that file named by {WEIGHTS_DIR_ENV}."
    )


def resolve_backbone_file(arch: str, weights: str, local_names: tuple[str, ...] = ()) -> Path:
    """Turn a ``backbone_weights`` value (tag or path) into a local file, downloading a tag where online.

    Args:
        arch: open_clip model config name, e.g. ``ViT-L-14-336``.
        weights: A file path or an open_clip pretrained tag such as ``openai``.
        local_names: Extra file names to look for in ``$AACLIP_MED_WEIGHTS_DIR`` (e.g. ``ViT-L-14-336px.pt``).

    Returns:
        Path of the weight file.

    Raises:
        WeightsError: the file does not exist, the tag is unknown, or the download failed (offline).
    """
    import open_clip

    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if path.suffix in _SUFFIXES or os.sep in weights:
        raise WeightsError(_how_to(arch, f"file '{weights}' not found"))
    cfg = open_clip.get_pretrained_cfg(arch, weights)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise WeightsError(_how_to(arch, f"'{weights}' is neither a file nor a pretrained tag; tags: {known}"))
    cache_dir = os.environ.get(WEIGHTS_DIR_ENV) or None
    url_name: str | None = cfg.get("url", "").rsplit("/", 1)[-1] or None
    names = [*local_names, *([url_name] if url_name else []), *(f"{arch}-{weights}{s}" for s in _SUFFIXES)]
    for name in names:
        candidate = weights_dir() / name
        if candidate.is_file():
            logger.info("Backbone weights from %s: %s", weights_dir(), candidate)
            return candidate
    try:
        target = open_clip.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as err:  # network, hub and file-system errors all mean "not available"
        raise WeightsError(_how_to(arch, f"download of tag '{weights}' failed: {type(err).__name__}")) from err
    if not target:
        raise WeightsError(_how_to(arch, f"tag '{weights}' has no download source"))
    return Path(target)


def weights_dir() -> Path:
    """The offline weights folder: ``$AACLIP_MED_WEIGHTS_DIR``, else ``~/.cache/aaclip-med/weights``."""
    return Path(os.environ.get(WEIGHTS_DIR_ENV) or Path.home() / ".cache" / "aaclip-med" / "weights")


def import_backbone_file(
    file: str | os.PathLike[str],
    trust_pickle: bool = False,
    check: Callable[[dict[str, torch.Tensor], str], object] | None = None,
) -> tuple[Path, str]:
    """Check that ``file`` loads as backbone weights, then copy it into :func:`weights_dir` under its own name.

    Args:
        file: The weights file.
        trust_pickle: Allow full pickles.
        check: Called with the fp32 state and the file name before the copy, e.g. to load the state into the
            model at its run size (:func:`aaclip_med.model.factory.import_backbone`); raises to refuse the file.

    Returns:
        The copied path and its sha256.

    Raises:
        WeightsError: the file is missing or does not load as CLIP weights.
    """
    src = Path(file).expanduser()
    if not src.is_file():
        msg = f"{src}: no such weights file. Check the path (e.g. the OpenAI ViT-L-14-336px.pt)."
        raise WeightsError(msg)
    state = load_backbone_state(src, trust_pickle)
    if check is not None:
        check(state, str(src))
    del state
    dest = weights_dir() / src.name
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest, sha256_file(dest)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def load_torch_file(path: Path, trust_pickle: bool) -> object:
    """``torch.load`` with ``weights_only=True``; full pickles only when ``trust_pickle``.

    Raises:
        WeightsError: the file is corrupt or not a torch checkpoint, or a full pickle without ``trust_pickle``.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if not isinstance(err, pickle.UnpicklingError):
            msg = (
                f"{path}: cannot read ({type(err).__name__}: {err}); the file is corrupt or "
                "not a torch checkpoint. Re-download or re-export it."
            )
            raise WeightsError(msg) from err
        if not trust_pickle:
            msg = (
                f"{path}: a full pickle, not a plain state dict; loading it can run code. Pass "
                "trust_pickle=True (--trust-pickle) only if you trust its source."
            )
            raise WeightsError(msg) from err
        logger.warning("Loading full pickle %s (trust_pickle=True)", path)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err2:  # a plain pickle (not a torch archive), or a corrupt one
            msg = (
                f"{path}: not a torch checkpoint ({type(err2).__name__}: {' '.join(str(err2).split())}); "
                "torch.save() files are read, plain pickle files are not. Re-export it with torch.save()."
            )
            raise WeightsError(msg) from err2


def load_backbone_state(path: Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a backbone state dict from safetensors, a torch checkpoint or an OpenAI TorchScript archive.

    TorchScript archives are read with ``torch.jit.load`` (TorchScript's own restricted deserialiser, as open_clip
    and the OpenAI code do), so they need no ``trust_pickle``.

    Raises:
        WeightsError: the file is unreadable, corrupt, or not a state dict.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        elif _is_torchscript(path):
            obj = torch.jit.load(str(path), map_location="cpu").state_dict()
            for key in ("input_resolution", "context_length", "vocab_size"):
                obj.pop(key, None)
        else:
            obj = load_torch_file(path, trust_pickle)
    except WeightsError:
        raise
    except Exception as err:
        msg = f"{path}: cannot read backbone weights ({type(err).__name__}); the file is corrupt. Re-download it."
        raise WeightsError(msg) from err
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        msg_0 = f"{path}: not a state dict of tensors. Pass an open_clip checkpoint or the OpenAI .pt."
        raise WeightsError(msg_0)
    return as_fp32({k.removeprefix("module."): v for k, v in obj.items()})


def as_fp32(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors as fp32 on CPU, others unchanged.

    Releases store fp16 (the OpenAI ``.pt``) or bf16; the position-embedding resize (bicubic, antialias) has no
    fp16 kernel on CPU and would round twice in half precision, so every floating tensor becomes fp32 first, as
    the reference code does. The model casts to its run precision afterwards.
    """
    return {
        k: v.to("cpu", torch.float32) if v.is_floating_point() else v.to("cpu") for k, v in state.items()
    }


def native_image_size(state: Mapping[str, torch.Tensor]) -> int | None:
    """The input size a backbone state was saved for: position grid x patch size (336 for the OpenAI ViT-L/14@336).

    Returns None when the state has no ViT position embedding.
    """
    pos, conv = state.get("visual.positional_embedding"), state.get("visual.conv1.weight")
    if pos is None or conv is None or pos.ndim != 2:
        return None
    grid = math.isqrt(pos.shape[0] - 1)
    return grid * int(conv.shape[-1]) if grid * grid == pos.shape[0] - 1 else None


def apply_backbone_state(clip: CLIP, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a backbone state dict into an open_clip CLIP, resizing position embeddings (bicubic, antialias).

    The tensors are converted to fp32 first (:func:`as_fp32`), so fp16/bf16 releases load at any input size.

    Raises:
        WeightsError: keys or shapes do not fit the architecture.
    """
    from open_clip.model import resize_pos_embed, resize_text_pos_embed

    state = as_fp32(state)  # before any resize: no fp16 bicubic kernel on CPU
    if "logit_scale" in state and state["logit_scale"].ndim != clip.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(clip.logit_scale.shape)
    resize_pos_embed(state, clip)
    resize_text_pos_embed(state, clip)
    try:
        result = clip.load_state_dict(state, strict=False)
    except RuntimeError as err:
        first = str(err).splitlines()[1:2] or [str(err)]
        msg = (
            f"{source}: shapes do not fit this backbone ({first[0].strip()}). "
            "Use weights of the model's architecture."
        )
        raise WeightsError(msg) from err
    if result.missing_keys or result.unexpected_keys:
        msg = (
            f"{source}: not weights for this backbone; missing {sorted(result.missing_keys)[:5]}, "
            f"unexpected {sorted(result.unexpected_keys)[:5]}. Use weights of its architecture."
        )
        raise WeightsError(msg)
