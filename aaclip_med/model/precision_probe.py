"""``precision="auto"`` on AMX CPUs: bf16 or guarded int8, chosen by measurement on the user's CPU (issue 16).

On AMX CPUs ``auto`` resolves to bf16 (:func:`~aaclip_med.model.precision.resolve_precision`: weights cast once,
backend ``cast``). Dynamic int8 ran slower than bf16 on the one AMX machine we measured, but through fbgemm, which
has no AMX kernels; packed for oneDNN (:func:`~aaclip_med.model.quantize.int8_engine`) the int8 matmuls run on
AMX-INT8 tiles (twice the bf16 tile rate), and no AMX machine of ours has measured that yet. So where AMX-INT8 is
usable and nothing pins the choice (:func:`probe_applies`), :func:`choose_cpu_precision` times one vision block
on the model's own shape (``CPU_CHUNK`` images, its tokens and width), both forms interleaved
(:func:`~aaclip_med.model.tuning.interleaved_best`):

- ``bf16``: the block's weights cast to bf16, its attention core the kernel ``auto`` chose for bf16;
- ``int8``: its linears dynamic int8 (oneDNN), fp32 in between and the fused SDPA core, as int8 blocks run.

int8 is chosen only when more than :data:`INT8_MIN_SPEEDUP` faster (it also costs the guard's fp32 pass on the
first slices); the model is then built guarded (:func:`aaclip_med.model.guard.arm_int8_guard_`) with bf16 as the
fallback: if int8's maps on the first slices do not keep r >= 0.999 against fp32, the model scores in bf16 (not
fp32) for the rest of its life. The timings are cached in ``<cache_dir()>/tuning/precision.json`` like the
attention choice (same rules for corrupt or read-only caches); ``AACLIP.metadata()`` records ``precision_choice``
(``measured`` or ``cached``) and ``precision_seconds``.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from aaclip_med.model.backends import BACKEND_ENV, amx_int8_usable, cache_dir, env_override
from aaclip_med.model.blocks import CPU_CHUNK, sdpa_block
from aaclip_med.model.precision import PRECISION_ENV
from aaclip_med.model.quantize import int8_engine, quantize_block_
from aaclip_med.model.tuning import interleaved_best, machine_key, read_cache, valid_seconds, write_cache

if TYPE_CHECKING:
    from aaclip_med.model.aaclip import AACLIP

__all__ = [
    "INT8_MIN_SPEEDUP",
    "PrecisionChoice",
    "choose_cpu_precision",
    "measure_block_precisions",
    "pick_precision",
    "precision_cache_file",
    "probe_applies",
]

logger = logging.getLogger(__name__)

# int8 replaces bf16 only when its block is more than 10 % faster: besides the probe's noise (a few per cent on a
# shared CPU) int8 pays a fixed cost per model, the guard's fp32 pass over the first CPU_CHUNK slices.
INT8_MIN_SPEEDUP = 1.10
CANDIDATES = ("bf16", "int8")


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision ``auto`` picked on an AMX CPU and how.

    Attributes:
        precision: ``bf16`` or ``int8`` (int8: guarded, bf16 as its fallback).
        how: ``measured`` (probed now) or ``cached`` (an earlier probe on this machine).
        seconds: Best time of one vision block per candidate.
    """

    precision: str
    how: str
    seconds: dict[str, float]


def precision_cache_file() -> Path:
    """``<cache_dir()>/tuning/precision.json``, beside the attention choices (``$AACLIP_MED_CACHE_DIR``)."""
    return cache_dir() / "tuning" / "precision.json"


def probe_applies(precision: str, backend: str, model: AACLIP, device: torch.device) -> bool:
    """Whether ``auto`` should measure bf16 against int8 for ``model`` (built with these arguments).

    Only on a CPU with usable AMX-INT8, for ``precision="auto"`` resolved to bf16 on a PyTorch engine with
    ``backend="auto"`` and an attention kernel not pinned (an explicit or environment value of either keeps bf16:
    int8 runs on the eager engine with the fused SDPA core), and neither ``AACLIP_MED_PRECISION`` nor
    ``AACLIP_MED_BACKEND`` set.
    """
    pinned = any(env_override(v) is not None for v in (PRECISION_ENV, BACKEND_ENV))
    return (
        device.type == "cpu"
        and precision == "auto"
        and backend == "auto"
        and not pinned
        and model.precision == "bf16"
        and model.backend in ("cast", "eager")
        and model.attention_choice not in ("asked", "env")
        and amx_int8_usable()
    )


def pick_precision(seconds: dict[str, float]) -> str:
    """``int8`` if its block is more than :data:`INT8_MIN_SPEEDUP` faster than the bf16 block, else ``bf16``."""
    return "int8" if seconds["bf16"] > INT8_MIN_SPEEDUP * seconds["int8"] else "bf16"


def _timed(block: torch.nn.Module, x: torch.Tensor, kernel: str) -> float:
    start = time.perf_counter()
    sdpa_block(block, x, kernel)
    return time.perf_counter() - start


def measure_block_precisions(model: AACLIP) -> dict[str, float]:
    """Best seconds of the model's first vision block in bf16 (cast) and int8 (module docstring)."""
    visual = model.clip.visual
    block = visual.transformer.resblocks[0]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(CPU_CHUNK, visual.positional_embedding.shape[0], visual.transformer.width, generator=gen)
    bf16 = copy.deepcopy(block).to(torch.bfloat16)
    int8 = copy.deepcopy(block)
    quantize_block_(int8, engine=int8_engine())
    x16 = x.to(torch.bfloat16)
    return interleaved_best({
        "bf16": lambda: _timed(bf16, x16, model.attention),
        "int8": lambda: _timed(int8, x, "sdpa"),
    })  # fmt: skip


def _cache_key(model: AACLIP) -> str:
    visual = model.clip.visual
    shape = (CPU_CHUNK, visual.positional_embedding.shape[0], visual.transformer.width)
    parts = (
        *machine_key(),
        "batch x tokens x width " + "x".join(map(str, shape)),
        f"mlp {visual.transformer.resblocks[0].mlp.c_fc.out_features}",
        f"int8 engine {int8_engine()}",
        f"bf16 attention {model.attention}",
    )
    return " | ".join(parts)


def choose_cpu_precision(model: AACLIP) -> PrecisionChoice:
    """bf16 or int8 for ``model`` (resolved to bf16 on an AMX CPU, its attention chosen): measured or cached."""
    name, path = _cache_key(model), precision_cache_file()
    entries = read_cache(path, "precision")
    seconds = valid_seconds(entries.get(name), CANDIDATES)
    how = "cached"
    if seconds is None:
        if name in entries:
            logger.warning("precision: the tuning cache %s holds a malformed entry; measuring again", path)
        seconds, how = measure_block_precisions(model), "measured"
        when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        entries[name] = {"precision": pick_precision(seconds), "seconds": seconds, "measured": when}
        write_cache(path, entries, "precision", PRECISION_ENV)
    choice = PrecisionChoice(pick_precision(seconds), how, seconds)
    logger.info(
        "precision auto -> %s on this AMX CPU (%s: one vision block bf16 %.1f ms, int8 %.1f ms; int8 must be "
        "> %.2fx faster; cache %s)",
        choice.precision, how, seconds["bf16"] * 1e3, seconds["int8"] * 1e3, INT8_MIN_SPEEDUP, path,
    )  # fmt: skip
    return choice
