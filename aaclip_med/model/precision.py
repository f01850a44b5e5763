"""Where a model runs: the device, and the precision ``auto`` resolves to (issue 16; benchmarks/README.md).

:func:`resolve_device` checks a device name against this machine; :func:`resolve_precision` resolves
``precision="auto"`` (fp16 on CUDA, bf16 on AMX CPUs — or guarded int8 where the probe of
:mod:`aaclip_med.model.precision_probe` measures it faster —, guarded int8 on other CPUs) and
:func:`int8_guarded` says whether a model runs the int8 accuracy guard of :mod:`aaclip_med.model.guard`.
``AACLIP_MED_PRECISION`` (:data:`PRECISION_ENV`) replaces what ``auto`` picks.
"""

from __future__ import annotations

import logging

import torch

from aaclip_med.config import BACKENDS, PRECISIONS
from aaclip_med.errors import ConfigError
from aaclip_med.model.attention import resolve_attention
from aaclip_med.model.backends import BACKEND_ENV, auto_choice, cpu_isa, env_override

__all__ = ["PRECISION_ENV", "int8_guarded", "resolve_device", "resolve_precision"]

logger = logging.getLogger(__name__)

PRECISION_ENV = "AACLIP_MED_PRECISION"  # overrides what precision "auto" resolves to (resolve_precision)


def _cpu_has_bf16() -> bool:
    """bf16 pays only with AMX: on avx512_bf16 without AMX a ViT-L block ran 1.7x slower in bf16 than fp32."""
    return cpu_isa() == "amx"


def resolve_device(device: str) -> torch.device:
    """Resolve ``auto`` (CUDA when present, else CPU) and check that the named device exists here.

    Raises:
        ConfigError: not a device name, or a CUDA/MPS device this machine does not have.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        msg = f"device={device!r} is not a device; use auto, cpu, cuda or cuda:N."
        raise ConfigError(msg) from err
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            msg = f"device={device!r}: this machine has {count} usable CUDA GPU(s); use --device cpu or auto."
            raise ConfigError(msg)
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        msg = f"device={device!r}: MPS is not available here; use --device cpu or auto."
        raise ConfigError(msg)
    elif dev.type not in ("cpu", "cuda", "mps"):
        msg = f"device={device!r} is not supported; use auto, cpu, cuda or cuda:N."
        raise ConfigError(msg)
    return dev


def resolve_precision(precision: str, device: torch.device, backend: str = "auto", attention: str = "auto") -> str:
    """Resolve ``auto``: fp16 on CUDA, bf16 on CPUs with AMX, int8 on other CPUs (guarded), else fp32.

    On AMX CPUs with AMX-INT8, :func:`~aaclip_med.model.factory.create_model` may still replace bf16 by guarded
    int8 after a one-block probe (:mod:`aaclip_med.model.precision_probe`); this function only resolves the rule.

    On a CPU without AMX (AVX2, or AVX-512 without AMX: bf16 measured slower than fp32 there) ``auto`` picks
    ``int8`` (dynamic int8 vision linears, :mod:`aaclip_med.model.quantize`), which :func:`create_model` builds
    *guarded* (:mod:`aaclip_med.model.guard`: int8 only while its maps keep r >= 0.999 against fp32 on the first
    scored slices, else fp32). That needs the eager engine and the fused SDPA attention: with another ``backend``
    (argument or ``AACLIP_MED_BACKEND``: ``openvino``, ``cast``, ``compile``) or an explicit GEMM ``attention``
    kernel, ``auto`` is fp32 there. The environment variable ``AACLIP_MED_PRECISION`` (:data:`PRECISION_ENV`),
    when set to a value other than ``auto``, replaces that choice (an explicit ``precision`` is never
    overridden): CI runs the bf16 path with ``AACLIP_MED_PRECISION=bf16`` on any CPU. An explicit ``int8``
    (argument or variable) is never guarded.

    Raises:
        ConfigError: unknown value (argument or environment variable), or ``int8`` on a non-CPU device.
    """
    asked, precision = precision, auto_choice(precision, PRECISIONS, "precision", PRECISION_ENV, "a precision")
    if asked != precision:
        logger.info("precision auto -> %s from %s", precision, PRECISION_ENV)
    if precision == "int8" and device.type != "cpu":
        msg = (
            f"precision='int8' on device {device}: int8 dynamic quantisation runs on CPU only; "
            "use --device cpu, or fp16/auto on a GPU."
        )
        raise ConfigError(msg)
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    if device.type != "cpu":
        return "fp32"
    if _cpu_has_bf16():
        return "bf16"
    eager = auto_choice(backend, BACKENDS, "backend", BACKEND_ENV, "a backend") in ("auto", "eager")
    return "int8" if eager and resolve_attention(attention, "eager") == "sdpa" else "fp32"


def int8_guarded(precision: str, resolved: str) -> bool:
    """Whether a model asked for ``precision`` and resolved to ``resolved`` runs the int8 guard: auto picked int8.

    An ``int8`` asked for (argument or ``AACLIP_MED_PRECISION``) is not guarded: the user chose it.
    """
    return resolved == "int8" and precision == "auto" and env_override(PRECISION_ENV) is None
