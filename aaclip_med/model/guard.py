"""The int8 accuracy guard of ``precision="auto"`` on CPUs without AMX (issue 16; benchmarks/README.md).

There ``auto`` picks int8 (dynamic int8 vision linears, :mod:`aaclip_med.model.quantize`) only while it keeps the
maps of the user's own weights on the user's own slices: a guarded model is built fp32, and its first inference
call (:meth:`~aaclip_med.model.aaclip.AACLIP.encode`) takes the first ``CPU_CHUNK`` images, computes their text
maps (:func:`~aaclip_med.model.maps.level_anomaly_maps` summed over levels, with the preset's blur) in fp32,
quantises the vision tower in place (keeping the fp32 modules), computes the same maps in int8 and compares them:

- Pearson r >= :data:`INT8_GUARD_R` (the issue's guard): int8 stays and the fp32 modules are freed;
- else the fp32 modules are put back, the model scores in fp32 for the rest of its life and one warning says so
  (on an AMX CPU where a probe chose int8 over bf16, :mod:`aaclip_med.model.precision_probe`, it scores in its
  :class:`Int8Fallback` instead: bf16 with the ``cast`` engine).

When r is undefined (a constant map: zero variance), the maps pass only if they differ by at most
:data:`INT8_GUARD_FLAT_TOL` anywhere; non-finite int8 maps fail. The guard runs once per model instance (cohort
workers each run it once), and the guard chunk is returned in the final precision, so a volume is scored in one
precision. The verdict is ``model.int8_guard`` (``run.json``: ``model.metadata.int8_guard``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from aaclip_med.model.maps import level_anomaly_maps
from aaclip_med.model.quantize import Originals, int8_engine, quantize_vision_, restore_modules_
from aaclip_med.model.tuning import AttentionChoice

if TYPE_CHECKING:
    from aaclip_med.model.aaclip import AACLIP
    from aaclip_med.presets import ModalityPreset

__all__ = [
    "INT8_GUARD_FLAT_TOL",
    "INT8_GUARD_R",
    "NOT_APPLICABLE",
    "PENDING",
    "Int8Fallback",
    "arm_int8_guard_",
    "compare_maps",
    "run_int8_guard",
]

logger = logging.getLogger(__name__)

INT8_GUARD_R = 0.999  # Pearson r of the guard chunk's maps, int8 against fp32, that keeps int8 (issue 16)
INT8_GUARD_FLAT_TOL = 1e-3  # map units: max |int8 - fp32| that passes when r is undefined (a constant map)
PENDING = "not run"  # a guarded model before its first inference call
NOT_APPLICABLE = "not applicable"  # precision chosen explicitly, not auto-int8 (or the model was trained)


@dataclass(frozen=True)
class Int8Fallback:
    """What a guarded model scores in when int8 fails its guard, instead of fp32 (the AMX probe's bf16).

    Attributes:
        precision: ``bf16``.
        backend: Its engine (``cast``).
        attention: Its attention kernel and how it was chosen.
    """

    precision: str
    backend: str
    attention: AttentionChoice


def arm_int8_guard_(model: AACLIP, fallback: Int8Fallback | None = None) -> None:
    """Make a freshly built (fp32 weights, CPU) model a guarded auto-int8 model.

    Until its first inference call it computes in fp32 with the eager engine and the fused SDPA core (as int8
    blocks run); that call decides int8, or ``fallback`` (None: fp32).
    """
    model.precision, model.backend = "fp32", "eager"
    model.attention, model.attention_choice, model.attention_seconds = "sdpa", "rule", None
    model.int8_guard, model.int8_fallback = PENDING, fallback


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Pearson r of two flat float64 tensors; None when either is constant (r undefined)."""
    da, db = a - a.mean(), b - b.mean()
    denom = float(torch.sqrt((da * da).sum() * (db * db).sum()))
    return float((da * db).sum()) / denom if denom > 0 else None


def compare_maps(reference: torch.Tensor, test: torch.Tensor, threshold: float = INT8_GUARD_R) -> dict[str, Any]:
    """The guard's verdict on ``test`` maps (B,H,W) against ``reference`` maps (module docstring).

    Returns:
        ``{"r", "max_abs_diff", "slices", "threshold", "passed"}``; ``r`` is None where it is undefined.
    """
    ref, out = reference.double().flatten(), test.double().flatten()
    if not bool(torch.isfinite(out).all()):
        return {"r": None, "max_abs_diff": None, "slices": len(reference), "threshold": threshold, "passed": False}
    r, max_abs = _pearson(ref, out), float((ref - out).abs().max())
    passed = r >= threshold if r is not None else max_abs <= INT8_GUARD_FLAT_TOL
    return {"r": r, "max_abs_diff": max_abs, "slices": len(reference), "threshold": threshold, "passed": passed}


def run_int8_guard(
    model: AACLIP, x: torch.Tensor, preset: ModalityPreset
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run the guard on the chunk ``x`` of a guarded fp32 model; set its precision and ``int8_guard``.

    Args:
        model: A model with ``int8_guard == PENDING`` (fp32 vision tower, eager backend, CPU).
        x: (B,3,H,W) the first images of its first inference call (at most ``CPU_CHUNK``).
        preset: The call's preset (prompts and blur of the compared maps).

    Returns:
        ``encode_levels(x)`` in the precision the model keeps: int8 if the guard passed, else fp32.
    """
    anchors, grid, size = model.text_anchors(preset), model.grid(x), (x.shape[-2], x.shape[-1])

    def text_maps(seg: list[torch.Tensor]) -> torch.Tensor:
        return level_anomaly_maps(seg, anchors, grid, size, preset.blur_kernel, preset.blur_sigma).sum(0)

    fp32 = model.encode_levels(x)
    originals: Originals = []
    engine = int8_engine()
    quantize_vision_(model.clip, originals=originals, engine=engine)
    int8 = model.encode_levels(x)
    verdict = compare_maps(text_maps(fp32[0]), text_maps(int8[0]), INT8_GUARD_R)
    model.int8_guard, fallback, model.int8_fallback = verdict, model.int8_fallback, None
    r = "undefined" if verdict["r"] is None else f"{verdict['r']:.6f}"
    if verdict["passed"]:
        originals.clear()  # the only references to the fp32 linears: freed
        model.precision, model.int8_engine = "int8", engine
        logger.info("int8 guard passed: maps r %s (>= %s) against fp32 on %d slices; scoring in int8",
                    r, verdict["threshold"], verdict["slices"])  # fmt: skip
        return int8
    restore_modules_(originals)
    after = "fp32" if fallback is None else fallback.precision
    logger.warning(
        "int8 accuracy guard failed: maps r %s < %s (max |d| %s) against fp32 on the first %d slices; scoring in "
        "%s (skip the guard with --precision %s)",
        r, verdict["threshold"], verdict["max_abs_diff"], verdict["slices"], after, after,
    )  # fmt: skip
    if fallback is None:
        model.precision = "fp32"
        return fp32
    model.precision, model.backend = fallback.precision, fallback.backend
    choice = fallback.attention
    model.attention, model.attention_choice, model.attention_seconds = choice.kernel, choice.how, choice.seconds
    return model.encode(x)  # guard done: through the fallback's engine (built now)
