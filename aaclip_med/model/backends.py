"""Inference engines for the vision path of :meth:`AACLIP.score_slices` (``backend``; benchmarks/README.md).

The vision path (patch embedding, the ViT blocks with the image adapters, seg/det projections: everything
:meth:`AACLIP.encode_levels` computes) is about all of a slice's FLOPs. A backend runs it:

- ``eager``: PyTorch as written; bf16/fp16 by autocast. The fallback, and the only backend for training.
- ``cast``: the vision weights cast once to bf16/fp16 (no autocast, no per-call weight copies); fp32: as eager.
- ``compile``: ``torch.compile`` (inductor) of the vision path, in the dtype of ``cast``.
- ``openvino``: the vision path converted once to OpenVINO (optional extra ``aaclip-med[openvino]``), compiled
  for the CPU with the precision as inference hint (``int8``: int8 weights by NNCF and activations quantised
  dynamically per call, no calibration data); the converted model is cached on disk, keyed by the sha256
  of the vision weights, the input size, the precision and the versions (:func:`openvino_cache_key`).

``auto`` (:func:`resolve_backend`) picks what measured fastest with maps within r >= 0.999 of fp32 eager.
Engines are built lazily on the first scored batch and dropped when adapters are reloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from aaclip_med.config import BACKENDS
from aaclip_med.errors import ConfigError

if TYPE_CHECKING:
    from aaclip_med.model.aaclip import AACLIP

__all__ = [
    "BACKEND_ENV",
    "CACHE_ENV",
    "amx_int8_usable",
    "auto_choice",
    "Engine",
    "VisionPath",
    "build_engine",
    "check_trainable_backend",
    "cpu_isa",
    "env_override",
    "isa_cap",
    "openvino_available",
    "openvino_cache_key",
    "resolve_backend",
]

logger = logging.getLogger(__name__)

BACKEND_ENV = "AACLIP_MED_BACKEND"  # overrides what backend "auto" resolves to (resolve_backend)
ISA_CAP_ENVS = (  # variables that cap the kernels' ISA (isa_cap; benchmarks/README.md, "AVX2 emulation")
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "FBGEMM_ENABLE_INSTRUCTIONS",
)
CACHE_ENV = "AACLIP_MED_CACHE_DIR"  # where converted OpenVINO models are kept (default ~/.cache/aaclip-med)
Engine = Callable[[torch.Tensor], tuple[list[torch.Tensor], torch.Tensor]]
OPENVINO_MIN_WIDTH = 512  # auto uses OpenVINO from ViT-B widths up (the width-64 test model: 3x slower than eager)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_OV_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}  # int8: int8 weights, see below


def env_override(env_var: str) -> str | None:
    """What ``$env_var`` puts in place of ``auto`` (stripped, lower case); None where unset, empty or ``auto``."""
    env = os.environ.get(env_var, "").strip().lower()
    return None if env in ("", "auto") else env


def auto_choice(value: str, allowed: tuple[str, ...], name: str, env_var: str, noun: str) -> str:
    """``value``, its ``auto`` replaced by ``$env_var`` where that is set to another value than ``auto``.

    How ``AACLIP_MED_PRECISION``, ``AACLIP_MED_BACKEND`` and ``AACLIP_MED_ATTENTION`` override ``auto`` (an
    explicit value is never overridden). ``noun`` names a value in the error (``"a backend"``).

    Raises:
        ConfigError: ``value``, or the variable, is not one of ``allowed``.
    """
    if value == "auto":
        env = env_override(env_var)
        if env is not None:
            if env not in allowed:
                msg = f"{env_var}={env!r} is not {noun}; set it to one of {', '.join(allowed)} or unset it."
                raise ConfigError(msg)
            value = env
    if value not in allowed:
        msg = f"{name}={value!r} is not valid; use {', '.join(allowed)}."
        raise ConfigError(msg)
    return value


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def _cap_of(var: str, value: str) -> str | None:
    """The ISA class an ISA-cap variable's value allows at most; None where it does not cap below AMX."""
    value = value.strip().upper()
    if var == "ATEN_CPU_CAPABILITY":  # ATen's own vector kernels; matmuls are oneDNN's/MKL's (their own caps)
        return {"AVX2": "avx2", "DEFAULT": "other"}.get(value)
    if not value or value == "ALL" or "AMX" in value or value.startswith("AVX512_E"):  # MKL's E4/E5: AMX
        return None
    if value.startswith(("AVX512", "AVX10")):
        return "avx512"
    return "avx2" if value.startswith("AVX2") else "other"  # SSE41, AVX, SSE4_2


def isa_cap() -> tuple[str, dict[str, str]] | None:
    """The ISA class the environment restricts the kernels to, with the variables that do it; None: no cap.

    Read: ``ATEN_CPU_CAPABILITY`` (PyTorch's vector kernels), ``ONEDNN_MAX_CPU_ISA`` / ``DNNL_MAX_CPU_ISA``
    (oneDNN: torch's bf16 matmuls and convolutions, and OpenVINO's CPU plugin), ``MKL_ENABLE_INSTRUCTIONS`` (MKL:
    torch's fp32 matmuls) and ``FBGEMM_ENABLE_INSTRUCTIONS`` (fbgemm: torch's int8 linears). The lowest cap set
    wins (benchmarks/README.md, "AVX2 emulation").
    """
    order = ("other", "avx2", "avx512", "amx")
    found = {v: os.environ[v] for v in ISA_CAP_ENVS if os.environ.get(v, "").strip()}
    caps = [c for var, value in found.items() if (c := _cap_of(var, value)) is not None]
    return (min(caps, key=order.index), found) if caps else None


def cpu_isa(honour_cap: bool = True) -> str:
    """The widest matrix ISA usable here: ``amx`` (AMX-BF16), ``avx512``, ``avx2`` or ``other`` (no cpuinfo).

    From the CPU flags, lowered to :func:`isa_cap` when the environment restricts the kernels (unless
    ``honour_cap`` is False: the hardware's own class).
    """
    flags = _cpu_flags()
    order = ("other", "avx2", "avx512", "amx")
    widest = (("amx", "amx_bf16"), ("avx512", "avx512f"), ("avx2", "avx2"))
    isa = next((isa for isa, flag in widest if flag in flags), "other")
    cap = isa_cap() if honour_cap else None
    return isa if cap is None else min(isa, cap[0], key=order.index)


def amx_int8_usable() -> bool:
    """Whether int8 matmuls can run on AMX tiles here: the CPU lists ``amx_int8`` and no ISA cap is below AMX."""
    return cpu_isa() == "amx" and "amx_int8" in _cpu_flags()


def openvino_available() -> bool:
    """Whether the optional ``openvino`` package is importable."""
    return importlib.util.find_spec("openvino") is not None


def resolve_backend(
    backend: str, device: torch.device, precision: str, vision_width: int | None = None, openvino_ok: bool = True
) -> str:
    """Resolve ``auto`` to the measured-fastest backend for the device, the resolved precision and the model size.

    CUDA, and ``int8`` (torch dynamic quantisation), run ``eager``. On CPU, ``openvino`` when installed and the
    vision tower is at least :data:`OPENVINO_MIN_WIDTH` wide (ViT-L: faster than eager fp32, maps r 0.999999;
    the tiny test models run faster eager; benchmarks/README.md), else ``cast`` for bf16/fp16 (weights cast once
    beat autocast) and ``eager`` for fp32. ``vision_width`` None (model not built yet): only checks the value.
    ``openvino_ok`` False (a GEMM attention kernel was asked for, :mod:`aaclip_med.model.attention`): ``auto``
    stays on the PyTorch backends.
    ``AACLIP_MED_BACKEND`` (:data:`BACKEND_ENV`), when set to another value than ``auto``, replaces that choice;
    an explicit ``backend`` is never overridden.

    Raises:
        ConfigError: unknown value, or a backend that cannot run this device/precision.
    """
    backend = auto_choice(backend, BACKENDS, "backend", BACKEND_ENV, "a backend")
    if backend == "auto":
        if device.type != "cpu" or precision == "int8":
            return "eager"
        wide = vision_width is None or vision_width >= OPENVINO_MIN_WIDTH
        if openvino_ok and openvino_available() and wide:
            return "openvino"
        return "cast" if precision in _DTYPES else "eager"
    if precision == "int8" and backend not in ("eager", "openvino"):
        msg = f"backend={backend!r} with precision='int8': int8 runs on eager or openvino; use --backend eager."
        raise ConfigError(msg)
    if backend == "openvino":
        if device.type != "cpu":
            msg = f"backend='openvino' on device {device}: OpenVINO runs on the CPU here; use --device cpu."
            raise ConfigError(msg)
        if not openvino_available() or (precision == "int8" and importlib.util.find_spec("nncf") is None):
            msg = (
                f"backend='openvino' with precision={precision!r} needs the openvino package (and nncf for int8); "
                "pip install 'aaclip-med[openvino]' or use --backend eager."
            )
            raise ConfigError(msg)
    return backend


def check_trainable_backend(backend: str) -> None:
    """Refuse training a model built for another backend than ``eager`` (its vision weights may be cast/copied).

    Raises:
        ConfigError: ``backend`` is not ``eager``.
    """
    if backend != "eager":
        msg = f"backend={backend!r} is inference only; build the model with backend='eager' to train."
        raise ConfigError(msg)


class VisionPath(nn.Module):
    """``model.encode_levels`` as one module returning a flat tuple ``(*seg_levels, det)`` (for tracing).

    The model is held outside the module tree (its weights are reached, not registered), so an engine attached
    to the model creates no reference cycle of modules.
    """

    def __init__(self, model: AACLIP) -> None:
        super().__init__()
        self.__dict__["model"] = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(*seg_levels, det)`` of :meth:`AACLIP.encode_levels`."""
        seg, det = self.__dict__["model"].encode_levels(x)
        return (*seg, det)


def _split(out: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    return [t.float() for t in out[:-1]], out[-1].float()


def _cast_vision_(model: AACLIP, dtype: torch.dtype) -> None:
    model.clip.visual.to(dtype)
    model.image_adapter.to(dtype)


def _torch_engine(model: AACLIP, compiled: bool) -> Engine:
    dtype = _DTYPES.get(model.precision)
    if dtype is not None:
        _cast_vision_(model, dtype)
    path = VisionPath(model)
    run: Callable[[torch.Tensor], Any] = torch.compile(path) if compiled else path

    def engine(x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        return _split(run(x if dtype is None else x.to(dtype)))

    return engine


def _vision_state(model: AACLIP) -> list[tuple[str, torch.Tensor]]:
    modules = {"visual": model.clip.visual, "image_adapter": model.image_adapter}
    return [(f"{k}.{n}", t) for k, m in modules.items() for n, t in m.state_dict().items()]


def openvino_cache_key(model: AACLIP) -> str:
    """sha256 of the vision weights (backbone and image adapters), input size, precision, layout and versions."""
    import openvino

    from aaclip_med._version import __version__

    digest = hashlib.sha256()
    for name, tensor in _vision_state(model):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    ir_format = "fp16-weights"  # how _openvino_model saves the IR
    versions = (openvino.__version__, __version__)
    parts = (model.input_size, model.precision, model.layout, model.lam_image, ir_format, versions)
    digest.update(repr(parts).encode())
    return digest.hexdigest()


def cache_dir() -> Path:
    """``$AACLIP_MED_CACHE_DIR``, else ``$XDG_CACHE_HOME/aaclip-med``, else ``~/.cache/aaclip-med``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aaclip-med"


def _openvino_model(model: AACLIP, folder: Path) -> Path:
    """The converted vision path ``folder/<key>/vision.xml``; converted (and saved atomically) when absent."""
    import openvino as ov

    key = openvino_cache_key(model)
    target = folder / key[:32] / "vision.xml"
    if target.is_file():
        logger.info("openvino: cached vision model %s", target)
        return target
    size = model.input_size
    example = torch.zeros(1, 3, size, size)
    logger.info("openvino: converting the vision path of %s at %d px (once per weights)", model.spec.name, size)
    trainable = [p for p in model.image_adapter.parameters() if p.requires_grad]
    try:  # tracing refuses weights that require grad and are not parameters of the traced module
        for p in trainable:
            p.requires_grad_(False)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes are fixed but the batch (dynamic)
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace", category=FutureWarning)
            converted = ov.convert_model(
                VisionPath(model).eval(), example_input=example, input=[ov.PartialShape([-1, 3, size, size])]
            )
    finally:
        for p in trainable:
            p.requires_grad_(True)
    if model.precision == "int8":  # int8 weights (per output channel); activations quantised per call (compile)
        import nncf

        converted = nncf.compress_weights(converted, mode=nncf.CompressWeightsMode.INT8_SYM)
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp_", dir=target.parent.parent))
    try:
        ov.save_model(converted, tmp / "vision.xml", compress_to_fp16=True)  # fp16 weights on disk: -0.6 GB RSS
        tmp.rename(target.parent)
    except OSError:  # another process saved the same key first, or the cache is read-only
        if not target.is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _openvino_engine(model: AACLIP) -> Engine:
    import openvino as ov

    folder = cache_dir() / "openvino"
    xml = _openvino_model(model, folder)
    config = {
        "INFERENCE_PRECISION_HINT": _OV_HINTS[model.precision],
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "CACHE_DIR": str(folder / "compiled"),
    }
    if model.precision == "int8":  # int8 matmuls (VNNI/AMX) on activations quantised in groups of 32 per call
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = 32
    _release_vision_weights(model)  # the IR holds them now: 1.2 GB less for ViT-L (the peak RSS target)
    compiled = ov.Core().compile_model(str(xml), "CPU", config)
    request = compiled.create_infer_request()
    outputs = compiled.outputs

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        result = request.infer({0: x.detach().float().contiguous().numpy()}, share_outputs=False)
        return [torch.from_numpy(result[o]) for o in outputs]

    def engine(x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        from aaclip_med.model.blocks import CPU_CHUNK  # batches of 8 in chunks of 2: activations stay small

        parts = [run(chunk) for chunk in torch.split(x, CPU_CHUNK)]
        return _split([torch.cat(level) for level in zip(*parts, strict=True)])

    return engine


def _release_vision_weights(model: AACLIP) -> None:
    """Free the PyTorch copy of the vision tower's weights (the image adapters stay: checkpoints save them)."""
    with torch.no_grad():
        for param in model.clip.visual.parameters():
            param.data = torch.empty(0, dtype=param.dtype)
    model.vision_weights_released = True


def build_engine(model: AACLIP) -> Engine:
    """The engine of ``model.backend`` (not ``eager``: that one is the model itself).

    ``cast`` and ``compile`` cast the vision weights once; ``openvino`` converts (or loads) the vision path.
    """
    if model.backend == "openvino":
        return _openvino_engine(model)
    return _torch_engine(model, compiled=model.backend == "compile")
