"""The one model factory: a registry of named AA-CLIP configurations, :func:`create_model` and :func:`list_models`.

Registry entries name an open_clip architecture; adapter widths, tap layers and adapter depths derive from the
built backbone (DESIGN section 0), never from hard-coded numbers. ``aaclip-tiny`` is a small open_clip config
shipped as package data, ``aaclip_med/data/aaclip-tiny.json`` (vision width 64, 4 blocks, patch 16 at 224 px -> a
14x14 grid; text width 64, 4 blocks), for tests and CPU benchmarks; 224 keeps a realistic grid for the 9x9 map blur
while a forward pass stays in milliseconds. :func:`register_model` adds entries and their open_clip configs.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from aaclip_med._typing import PathLike
from aaclip_med.errors import ConfigError, UnknownModelError, WeightsError, did_you_mean
from aaclip_med.model.aaclip import AACLIP
from aaclip_med.model.attention import resolve_attention
from aaclip_med.model.backends import env_override, resolve_backend
from aaclip_med.model.guard import PENDING, Int8Fallback, arm_int8_guard_
from aaclip_med.model.precision import PRECISION_ENV, int8_guarded, resolve_device, resolve_precision
from aaclip_med.model.spec import ModelSpec, check_backbone_match, check_trainable_precision
from aaclip_med.model.tuning import AttentionChoice, set_attention_
from aaclip_med.model.weights import (
    AdapterSource,
    apply_backbone_state,
    fingerprint,
    import_backbone_file,
    load_backbone_state,
    native_image_size,
    read_adapters,
    resolve_backbone_file,
    sha256_file,
)

__all__ = [
    "get_spec",
    "MODEL_REGISTRY",
    "PRECISION_ENV",
    "ModelSpec",
    "check_backbone_match",
    "create_model",
    "import_backbone",
    "int8_guarded",
    "list_models",
    "check_trainable_precision",
    "register_model",
    "resolve_precision",
]

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parents[1] / "data"

# open_clip architectures we ship or users register: arch -> its JSON config, added to open_clip on first use
_OPEN_CLIP_CONFIGS: dict[str, Path] = {"aaclip-tiny": DATA_DIR / "aaclip-tiny.json"}

MODEL_REGISTRY: dict[str, ModelSpec] = {
    "aaclip-vitl14-336": ModelSpec(
        name="aaclip-vitl14-336",
        arch="ViT-L-14-336",
        image_size=518,
        default_backbone="openai",
        description="The paper's model: OpenAI CLIP ViT-L/14@336 at 518 px, taps after blocks 6/12/18/24",
        local_names=("ViT-L-14-336px.pt",),
    ),
    "aaclip-tiny": ModelSpec(
        name="aaclip-tiny",
        arch="aaclip-tiny",
        image_size=224,
        default_backbone="random",
        description="Tiny open_clip config (width 64, 4 blocks) for tests and benchmarks; random backbone",
    ),
    "demo": ModelSpec(
        name="demo",
        arch="aaclip-tiny",
        image_size=224,
        default_backbone="random",
        description="aaclip-tiny with the shipped demo adapters (random seed-0 backbone; not for diagnosis)",
        default_adapters="demo_adapters.safetensors",
    ),
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(MODEL_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The registry entry of a model name.

    Raises:
        UnknownModelError: the name is not registered (the message suggests the closest one).
    """
    if name not in MODEL_REGISTRY:
        msg = (
            f"Unknown model '{name}'; {did_you_mean(name, MODEL_REGISTRY)}known: {', '.join(list_models())}. "
            "Pass --model with one of these names."
        )
        raise UnknownModelError(msg)
    return MODEL_REGISTRY[name]


def register_model(spec: ModelSpec, open_clip_config: PathLike | None = None, *, overwrite: bool = False) -> None:
    """Add a registry entry, so ``create_model(spec.name)`` builds it (as ``aaclip-tiny`` is registered).

    Args:
        spec: The entry; ``spec.arch`` names an open_clip architecture, built in or given by ``open_clip_config``.
        open_clip_config: An open_clip model config file named ``<spec.arch>.json`` (open_clip names configs by
            their file name), added to open_clip when the model is first built.
        overwrite: Replace an entry of the same name.

    Raises:
        ConfigError: the name is taken (without ``overwrite``), or the config file is missing or misnamed.

    Example:
        >>> spec = ModelSpec("my-tiny", "my-tiny", "2 blocks", 224, "random")  # doctest: +SKIP
        >>> register_model(spec, "configs/my-tiny.json")  # doctest: +SKIP
    """
    if spec.name in MODEL_REGISTRY and not overwrite:
        msg = f"Model '{spec.name}' is already registered; choose another name or pass overwrite=True."
        raise ConfigError(msg)
    if open_clip_config is not None:
        path = Path(open_clip_config)
        if not path.is_file() or path.name != f"{spec.arch}.json":
            msg = (
                f"open_clip config '{path}' must be an existing file named '{spec.arch}.json' (open_clip names a "
                "config by its file name); pass that file or set spec.arch to its name."
            )
            raise ConfigError(msg)
        _OPEN_CLIP_CONFIGS[spec.arch] = path
    MODEL_REGISTRY[spec.name] = spec


def _register_open_clip_config(arch: str) -> None:
    import open_clip

    if arch not in _OPEN_CLIP_CONFIGS or arch in open_clip.list_models():
        return
    open_clip.add_model_config(_OPEN_CLIP_CONFIGS[arch])


def _no_pretrained_note(record: logging.LogRecord) -> bool:
    return "No pretrained weights loaded" not in record.getMessage()


def _open_clip_backbone(spec: ModelSpec, image_size: int) -> torch.nn.Module:
    """open_clip's model for ``spec`` at ``image_size``, randomly initialised (the caller loads weights)."""
    import open_clip

    root = logging.getLogger()  # open_clip warns "No pretrained weights loaded": we load our own after this
    root.addFilter(_no_pretrained_note)
    try:
        model: torch.nn.Module = open_clip.create_model(
            spec.arch, pretrained=None, force_image_size=image_size, force_quick_gelu=spec.quick_gelu
        )
        return model
    finally:
        root.removeFilter(_no_pretrained_note)


def _build_backbone(
    spec: ModelSpec, weights: str, image_size: int, seed: int, trust_pickle: bool
) -> tuple[torch.nn.Module, dict[str, Any]]:

    info: dict[str, Any] = {"name": spec.arch, "quick_gelu": spec.quick_gelu}
    path = None if weights == "random" else resolve_backbone_file(spec.arch, weights, spec.local_names)
    state = None if path is None else load_backbone_state(path, trust_pickle)
    clip = _open_clip_backbone(spec, image_size)
    if path is None:
        warnings.warn(
            f"{spec.name}: untrained backbone (random init from seed {seed}); maps are not meaningful "
            "for diagnosis.",
            stacklevel=3,
        )
        info.update(source="random", seed=seed)
    else:
        apply_backbone_state(clip, state or {}, str(path))
        info.update(
            source="file" if Path(weights).expanduser().is_file() else "tag",
            weights=weights,
            path=str(path),
            sha256=sha256_file(path),
        )
    info["fingerprint"] = fingerprint(clip.state_dict())
    return clip, info


def _set_precision_choice(model: AACLIP, asked: str, backend: str, device: torch.device, guarded: bool) -> None:
    """How ``auto`` chose the precision (``model.metadata()``); arm the int8 guard where int8 was chosen.

    Without AMX, ``auto``'s int8 is a rule (guarded, fp32 fallback); on an AMX CPU with AMX-INT8 a probe measures
    bf16 against int8 (:mod:`aaclip_med.model.precision_probe`; int8 guarded, bf16 fallback).
    """
    from aaclip_med.model.precision_probe import choose_cpu_precision, probe_applies

    env = env_override(PRECISION_ENV) is not None
    model.precision_choice = "asked" if asked != "auto" else "env" if env else "rule"
    if guarded:
        arm_int8_guard_(model)
    elif probe_applies(asked, backend, model, device):
        choice = choose_cpu_precision(model)
        model.precision_choice, model.precision_seconds = choice.how, choice.seconds
        if choice.precision == "int8":
            bf16 = AttentionChoice(model.attention, model.attention_choice, model.attention_seconds)
            arm_int8_guard_(model, Int8Fallback(model.precision, model.backend, bf16))


def _precision_words(model: AACLIP) -> str:
    if model.int8_guard != PENDING:
        return model.precision
    words = "int8 (guarded: fp32 until the first slices' maps agree"
    return words + ")" if model.int8_fallback is None else f"{words}, else {model.int8_fallback.precision})"


def create_model(
    name: str,
    backbone_weights: str | None = None,
    adapter_weights: AdapterSource | None = None,
    device: str = "auto",
    precision: str = "auto",
    image_size: int | None = None,
    seed: int = 0,
    trust_pickle: bool = False,
    backend: str = "auto",
    attention: str = "auto",
) -> AACLIP:
    """Build an AA-CLIP model from the registry.

    Args:
        name: A registry name (:func:`list_models`).
        backbone_weights: open_clip tag (``openai``), a weight file, or ``random`` (untrained on purpose, from
            ``torch.manual_seed(seed)``). None: the entry's default (``openai`` for the ViT-L model).
        adapter_weights: Our ``.safetensors``, a reference folder (``text_adapter.pth`` +
            ``image_adapter*.pth``) or a ``(text, image)`` pair. None: the entry's shipped adapters, if any, else
            Xavier-random adapters (with a warning).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ...
        precision: ``auto`` (fp16 on CUDA; bf16 on AMX CPUs, or guarded int8 where a one-block probe measures
            it faster, :mod:`aaclip_med.model.precision_probe`; guarded int8 on other CPUs,
            :mod:`aaclip_med.model.guard`), ``fp32``, ``bf16`` or ``fp16`` (autocast in
            :meth:`AACLIP.score_slices`), or ``int8`` (CPU, inference only: the vision blocks' linear layers
            dynamically quantised).
        image_size: Input size override (position embeddings are resized); None: the entry's size.
        seed: Seeds the random backbone and the adapter initialisation; the caller's RNG state is untouched.
        trust_pickle: Allow full-pickle ``.pth`` files (they can run code).
        backend: Engine of the vision path at inference (:mod:`aaclip_med.model.backends`): ``auto`` (the
            measured fastest here), ``eager``, ``cast``, ``compile`` or ``openvino``. Training needs ``eager``.
        attention: Kernel of the vision blocks' attention core (:mod:`aaclip_med.model.attention`): ``auto``
            (fused SDPA; for bf16/fp16 on the CPU with a PyTorch engine, the kernel measured fastest here, once,
            :mod:`aaclip_med.model.tuning`; ``$AACLIP_MED_ATTENTION`` replaces it), ``sdpa``, ``matmul`` or
            ``blocked``.

    Returns:
        The model in eval mode with a frozen backbone.

    Raises:
        UnknownModelError: ``name`` is not registered.
        WeightsError: weights are missing, corrupt or do not fit.

    Example:
        >>> model = create_model("aaclip-tiny", backbone_weights="random")  # doctest: +SKIP
    """
    import open_clip

    spec = get_spec(name)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev, backend, attention)  # all three checked before the slow build
    guarded = int8_guarded(precision, prec)  # auto-int8: built fp32, int8 decided on the first call
    gemm_attention = attention not in ("auto", "sdpa")  # an explicit GEMM kernel: auto stays off OpenVINO
    resolve_attention(attention, resolve_backend(backend, dev, prec, openvino_ok=not gemm_attention))
    size = image_size or spec.image_size
    source = adapter_weights
    if source is None and spec.default_adapters is not None:
        source = DATA_DIR / spec.default_adapters
        if not source.is_file():
            msg = (
                f"{source}: the shipped adapters of model '{name}' are missing from this install. "
                "Reinstall aaclip-med or pass adapter_weights."
            )
            raise WeightsError(msg)
    ckpt = None if source is None else read_adapters(source, trust_pickle)  # small: refuse a misfit early
    if ckpt is not None and ckpt.metadata is not None:
        check_backbone_match(ckpt.metadata, {"name": spec.arch}, ckpt.source)
    _register_open_clip_config(spec.arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip, info = _build_backbone(spec, backbone_weights or spec.default_backbone, size, seed, trust_pickle)
        model = AACLIP(
            clip, spec, open_clip.get_tokenizer(spec.arch), size, "fp32" if guarded else prec, info
        )
        torch.manual_seed(seed + 1)  # adapters: independent of how much RNG the backbone consumed
        from aaclip_med.model.adapters import xavier_init_

        xavier_init_(model.image_adapter)
        xavier_init_(model.text_adapter)
    # the engine itself is built on the first scored batch (AACLIP.score_slices)
    model.backend = resolve_backend(backend, dev, prec, model.clip.visual.transformer.width, not gemm_attention)
    set_attention_(model, attention, dev)  # auto: measured once on this CPU where bf16/fp16 runs on PyTorch
    _set_precision_choice(model, precision, backend, dev, guarded)
    if prec == "int8" and not guarded and model.backend == "eager":  # after the fingerprint, before adapters
        from aaclip_med.model.quantize import int8_engine, quantize_vision_

        model.int8_engine = int8_engine()
        quantize_vision_(model.clip, engine=model.int8_engine)
    if ckpt is None:
        warnings.warn(f"{name}: no adapter weights; adapters are random (Xavier, seed {seed + 1}).", stacklevel=2)
    else:
        model.load_adapters(ckpt)
    logger.info(
        "Built %s (%s, %s backbone) on %s, %s, backend %s, attention %s",
        name,
        spec.arch,
        info["source"],
        dev,
        _precision_words(model),
        model.backend,
        model.attention,
    )
    return model.to(dev).eval()


def import_backbone(
    file: str | os.PathLike[str],
    model: str = "aaclip-vitl14-336",
    image_sizes: tuple[int, ...] = (),
    trust_pickle: bool = False,
) -> tuple[Path, str, tuple[int, ...]]:
    """Check a backbone weights file by loading it into ``model``'s backbone, then import it for offline use.

    The file is loaded at its native size (336 for the OpenAI release) and at every size in ``image_sizes``
    (default: the model's run size, 518 for the paper's model), so a release that only loads at its own grid is
    refused here, not at the first run.

    Args:
        file: The OpenAI TorchScript ``.pt``, an fp16/fp32 state dict, an open_clip ``.bin``/``.safetensors``.
        model: Registry name whose backbone the file is for.
        image_sizes: Input sizes to check besides the native one; empty: the model's default size.
        trust_pickle: Allow full pickles.

    Returns:
        The imported path, its sha256 and the input sizes it was loaded at.

    Raises:
        WeightsError: the file does not load into the backbone at one of the sizes.
    """
    spec = get_spec(model)
    _register_open_clip_config(spec.arch)
    checked: list[int] = []

    def load_at_sizes(state: dict[str, torch.Tensor], source: str) -> None:
        native = native_image_size(state)
        for size in dict.fromkeys([*([native] if native else []), *(image_sizes or (spec.image_size,))]):
            apply_backbone_state(_open_clip_backbone(spec, size), state, f"{source} at {size} px")
            checked.append(size)
            logger.info("%s loads into %s at %d px", source, spec.arch, size)

    dest, digest = import_backbone_file(file, trust_pickle, check=load_at_sizes)
    return dest, digest, tuple(checked)
