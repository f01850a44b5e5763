"""``attention="auto"`` decided by measurement on the user's CPU where no measurement of ours decides it.

On an AVX-512 Xeon without AMX fused SDPA beats the GEMM attention kernels in fp32 and bf16
(benchmarks/README.md, issue 16 "(e)"); on AMX CPUs the GEMM kernels (oneDNN batched GEMMs on AMX tiles) may win
in bf16, and no AMX machine measured it. So where the model runs bf16/fp16 on the CPU with a PyTorch engine
(``eager``, ``cast``, ``compile``), :func:`set_attention_` times the attention core
(:func:`aaclip_med.model.attention.self_attention`) once with every kernel on the model's own shape (``CPU_CHUNK``
images, its heads and width, ``grid² + 1`` tokens, its dtype) and keeps the fastest GEMM kernel only when it is
more than :data:`GEMM_MIN_SPEEDUP` faster than SDPA (``compile`` runs the chosen kernel compiled; the probe times
it eager). The timings are cached in
``<cache_dir()>/tuning/attention.json`` (``$AACLIP_MED_CACHE_DIR``), keyed by what decides them: CPU model, ISA
class, torch version, threads, dtype, shape and the kernels' chunking; a cache hit does not measure again, and an
unreadable, corrupt or read-only cache only costs a new measurement (logged, never an error).

fp32 (the default on every CPU without AMX), int8 blocks, OpenVINO and CUDA keep the measured static rule of
:func:`~aaclip_med.model.attention.resolve_attention` (``sdpa``): no probe, deterministic runs.
``AACLIP_MED_ATTENTION`` or an explicit ``attention`` skip the probe. How the kernel was chosen goes into
``AACLIP.metadata()`` (``attention_choice``: ``measured``, ``cached``, ``rule``, ``asked`` or ``env``, and
``attention_seconds`` per kernel when measured or cached).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import math
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from aaclip_med._files import atomic_path
from aaclip_med.errors import OutputError
from aaclip_med.model import attention as attention_mod
from aaclip_med.model.attention import ATTENTION_ENV, resolve_attention, self_attention
from aaclip_med.model.backends import CACHE_ENV, cache_dir, cpu_isa, env_override

if TYPE_CHECKING:
    from aaclip_med.model.aaclip import AACLIP

__all__ = [
    "GEMM_MIN_SPEEDUP",
    "AttentionChoice",
    "attention_cache_file",
    "choose_attention",
    "cpu_model",
    "interleaved_best",
    "machine_key",
    "measure_attention",
    "pick_kernel",
    "read_cache",
    "set_attention_",
    "valid_seconds",
    "write_cache",
]

logger = logging.getLogger(__name__)

# A GEMM kernel replaces SDPA only when more than 5 % faster: the interleaved best-of-3 times of one kernel spread
# by a few per cent on a shared CPU, so a smaller margin would flip the choice between runs for no real gain.
GEMM_MIN_SPEEDUP = 1.05
PROBE_REPEATS = 3  # timed rounds after one warm-up round; each kernel keeps its best
PRUNE_SLOWER = 1.5  # a GEMM kernel this much slower than SDPA after a round is not timed again: it cannot win
KERNELS = ("sdpa", "matmul", "blocked")
PROBE_BACKENDS = ("eager", "cast", "compile")  # the PyTorch engines (OpenVINO runs its own attention kernel)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class AttentionChoice:
    """The attention kernel of a model and how it was chosen.

    Attributes:
        kernel: ``sdpa``, ``matmul`` or ``blocked``.
        how: ``measured`` (probed now), ``cached`` (an earlier probe on this machine), ``rule`` (the static rule
            of ``resolve_attention``), ``asked`` (an explicit argument) or ``env`` (``AACLIP_MED_ATTENTION``).
        seconds: Best time of the attention core per kernel (measured or cached), else None.
    """

    kernel: str
    how: str
    seconds: dict[str, float] | None = None


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (else ``platform.processor()``, else ``unknown``)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        text = ""
    names = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")]
    return names[0] if names else platform.processor() or "unknown"


def attention_cache_file() -> Path:
    """``<cache_dir()>/tuning/attention.json``, beside the OpenVINO cache (``$AACLIP_MED_CACHE_DIR``)."""
    return cache_dir() / "tuning" / "attention.json"


def pick_kernel(seconds: dict[str, float]) -> str:
    """The fastest GEMM kernel if more than :data:`GEMM_MIN_SPEEDUP` faster than ``sdpa``, else ``sdpa``."""
    gemm = min((k for k in seconds if k != "sdpa"), key=seconds.__getitem__, default=None)
    if gemm is not None and seconds["sdpa"] > GEMM_MIN_SPEEDUP * seconds[gemm]:
        return gemm
    return "sdpa"


def time_kernel(qkv: torch.Tensor, heads: int, kernel: str) -> float:
    """Seconds of one :func:`self_attention` call of ``kernel`` on packed ``qkv``."""
    start = time.perf_counter()
    self_attention(qkv, heads, kernel)
    return time.perf_counter() - start


def interleaved_best(timers: Mapping[str, Callable[[], float]], prune: float | None = None) -> dict[str, float]:
    """Best seconds of each timer: one warm-up round, then :data:`PROBE_REPEATS` rounds taking them in turn.

    Interleaving spreads a shared CPU's noise over all candidates alike. With ``prune``, a candidate more than
    ``prune`` times slower than the first one after a round is not timed again (it cannot win).
    """
    names = list(timers)
    best = dict.fromkeys(names, math.inf)
    with torch.inference_mode():
        for name in names:
            timers[name]()
        for _ in range(PROBE_REPEATS):
            for name in names:
                best[name] = min(best[name], timers[name]())
            if prune is not None:
                names = [n for n in names if n == names[0] or best[n] <= prune * best[names[0]]]
    return best


def measure_attention(shape: tuple[int, int, int, int], dtype: torch.dtype) -> dict[str, float]:
    """Best seconds per kernel of the attention core on ``shape`` = (batch, heads, tokens, width), interleaved.

    One warm-up round, then :data:`PROBE_REPEATS` rounds over the kernels in turn; a GEMM kernel more than
    :data:`PRUNE_SLOWER` slower than SDPA after a round leaves the later rounds (ViT-L at 518 on 2 AVX-512 cores:
    3.8 s measured; the tiny model: about 0.1 s, mostly the first calls).
    """
    batch, heads, tokens, width = shape
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(batch, tokens, 3 * width, generator=gen).to(dtype)
    timers = {k: functools.partial(time_kernel, qkv, heads, k) for k in KERNELS}  # sdpa first: the pruning base
    return interleaved_best(timers, PRUNE_SLOWER)


def _probe_shape(model: AACLIP) -> tuple[int, int, int, int]:
    from aaclip_med.model.blocks import CPU_CHUNK

    visual = model.clip.visual
    tokens = visual.positional_embedding.shape[0]  # grid² + 1 at the model's input size
    return CPU_CHUNK, visual.transformer.resblocks[0].attn.num_heads, tokens, visual.transformer.width


def _cache_key(shape: tuple[int, int, int, int], dtype: torch.dtype) -> str:
    """What decides the choice, readable: CPU, ISA, torch, threads, dtype, shape and the kernels' chunks."""
    parts = (
        *machine_key(),
        str(dtype).removeprefix("torch."),
        "batch x heads x tokens x width " + "x".join(map(str, shape)),
        f"matmul {attention_mod.MATMUL_HEADS} pairs, blocked {attention_mod.BLOCK_ROWS} rows",
    )
    return " | ".join(parts)


def valid_seconds(entry: object, names: tuple[str, ...]) -> dict[str, float] | None:
    """A cache entry's ``seconds`` when it holds a finite positive time for exactly ``names``, else None."""
    seconds = entry.get("seconds") if isinstance(entry, dict) else None
    if not isinstance(seconds, dict) or set(seconds) != set(names):
        return None
    ok = all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in seconds.values())
    return {k: float(v) for k, v in seconds.items()} if ok else None


def read_cache(path: Path, what: str) -> dict[str, Any]:
    """The entries of the tuning cache ``path``; empty (a warning naming ``what``) when unreadable or corrupt."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except OSError as err:
        logger.warning("%s: cannot read the tuning cache %s (%s); measuring again", what, path, err.strerror)
        return {}
    except ValueError as err:  # not JSON, or not UTF-8
        logger.warning("%s: the tuning cache %s is corrupt (%s); measuring again, rewriting it", what, path, err)
        return {}
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        logger.warning("%s: the tuning cache %s has no entries table; measuring again, rewriting it", what, path)
        return {}
    return entries


def write_cache(path: Path, entries: dict[str, Any], what: str, pin_env: str) -> None:
    """Write a tuning cache atomically; a failure (read-only cache) is logged: the choice holds for this run only.

    ``what`` names the choice in the message, ``pin_env`` the variable that pins it without measuring.
    """
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"format": _CACHE_FORMAT, "entries": entries}, indent=1), encoding="utf-8")
    except (OutputError, OSError) as err:
        cause = err.__cause__ if isinstance(err, OutputError) and err.__cause__ is not None else err
        logger.warning(
            "%s: cannot write the tuning cache %s (%s); the choice holds for this run only "
            "(set %s to a writable folder, or pin the choice with %s)",
            what,
            path,
            getattr(cause, "strerror", None) or cause,
            CACHE_ENV,
            pin_env,
        )


def machine_key() -> tuple[str, ...]:
    """What every tuning decision depends on: CPU model, ISA class, torch version and threads."""
    return cpu_model(), cpu_isa(), f"torch {torch.__version__}", f"{torch.get_num_threads()} threads"


def _times(seconds: dict[str, float]) -> str:
    return ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in seconds.items())


def _probed_choice(model: AACLIP) -> AttentionChoice:
    """The measured (or cached) kernel for ``model``'s attention shape and dtype."""
    shape, dtype = _probe_shape(model), _DTYPES[model.precision]
    name, path = _cache_key(shape, dtype), attention_cache_file()
    entries = read_cache(path, "attention")
    seconds = valid_seconds(entries.get(name), KERNELS)
    if seconds is not None:
        kernel = pick_kernel(seconds)
        logger.info("attention auto -> %s (cached in %s: %s)", kernel, path, _times(seconds))
        return AttentionChoice(kernel, "cached", seconds)
    if name in entries:
        logger.warning("attention: the tuning cache %s holds a malformed entry; measuring again", path)
    seconds = measure_attention(shape, dtype)
    kernel = pick_kernel(seconds)
    logger.info(
        "attention auto -> %s (measured on %s: %s; a GEMM kernel must be > %.2fx faster than sdpa; cached in %s)",
        kernel,
        name,
        _times(seconds),
        GEMM_MIN_SPEEDUP,
        path,
    )
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    entries[name] = {"kernel": kernel, "seconds": seconds, "measured": when}
    write_cache(path, entries, "attention", ATTENTION_ENV)
    return AttentionChoice(kernel, "measured", seconds)


def choose_attention(attention: str, model: AACLIP, device: torch.device) -> AttentionChoice:
    """The attention kernel of ``model`` (its backend and precision resolved) on ``device``, and how it was chosen.

    An explicit ``attention`` or ``AACLIP_MED_ATTENTION`` decide; else a probe (or its cache) where the model runs
    bf16/fp16 on the CPU with a PyTorch engine; else the static rule of ``resolve_attention`` (``sdpa``).

    Raises:
        ConfigError: an unknown kernel (argument or environment variable), or a GEMM kernel with OpenVINO.
    """
    kernel = resolve_attention(attention, model.backend)
    if attention != "auto":
        return AttentionChoice(kernel, "asked")
    if env_override(ATTENTION_ENV) == kernel:
        return AttentionChoice(kernel, "env")
    probe = device.type == "cpu" and model.backend in PROBE_BACKENDS and model.precision in _DTYPES
    return _probed_choice(model) if probe else AttentionChoice(kernel, "rule")


def set_attention_(model: AACLIP, attention: str, device: torch.device) -> None:
    """Set ``model.attention`` by :func:`choose_attention`, and how it was chosen (``model.metadata()``).

    Raises:
        ConfigError: as :func:`choose_attention`.
    """
    choice = choose_attention(attention, model, device)
    model.attention, model.attention_choice, model.attention_seconds = choice.kernel, choice.how, choice.seconds
