"""The streaming patch sample of a memory build, and the normal-reference calibration of both maps.

Calibration puts the memory map and the text map in one unit, normal standard deviations: a random sample of the
normal patches (:data:`CALIBRATION_PATCHES`) is scored against the memory *without its own study* (leave one
volume out; one slice out when a single volume is given; one patch out for a single slice), as an unseen normal
study would be, and the mean and standard deviation of its summed nearest-neighbour distances are stored beside
those of its text-map values (grid resolution, the preset's blur, summed over levels).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from aaclip_med.reference.memory import SEARCH_BLOCK

__all__ = ["CALIBRATION_PATCHES", "Candidates", "calibrate"]

CALIBRATION_PATCHES = 4096  # normal patches scored held out (a uniform random sample, like the memory)


class _Sample:
    """A uniform random sample of at most ``bound`` rows of a stream: random keys, the smallest stay."""

    def __init__(self, bound: int, gen: torch.Generator) -> None:
        self.bound, self.gen = bound, gen
        self.keys = torch.empty(0)
        self.cols: dict[str, torch.Tensor] = {}

    def add(self, cols: dict[str, torch.Tensor]) -> None:
        n = next(iter(cols.values())).shape[0]
        keys = torch.cat([self.keys, torch.rand(n, generator=self.gen)])
        merged = {k: torch.cat([self.cols[k], v]) if k in self.cols else v for k, v in cols.items()}
        keep = torch.topk(keys, min(self.bound, len(keys)), largest=False).indices.sort().values
        self.keys = keys[keep]
        self.cols = {k: v[keep] for k, v in merged.items()}


class Candidates:
    """Normal patches streamed in slice by slice: the memory sample and the calibration sample.

    Attributes:
        n_seen: Patches offered so far.
    """

    def __init__(self, bound: int, gen: torch.Generator) -> None:
        self.n_seen = 0
        self.kept = _Sample(bound, gen)
        self.held = _Sample(CALIBRATION_PATCHES, gen)

    def add(self, levels: list[torch.Tensor], text: torch.Tensor, *, volume_id: int, slice_id: int) -> None:
        """Offer one slice's foreground patches: per level (n, D) unit tokens and their (n,) text-map values."""
        n = int(text.shape[0])
        if n == 0:
            return
        ids = {"volume": torch.full((n,), volume_id), "slice": torch.full((n,), slice_id),
               "patch": torch.arange(self.n_seen, self.n_seen + n)}  # fmt: skip
        cols = {f"level{i}": t.to(torch.float16) for i, t in enumerate(levels)} | ids | {"text": text.float()}
        self.kept.add(cols)
        self.held.add(cols)
        self.n_seen += n

    def memory(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The memory sample: per level (M, D) float32 unit rows, and (M,) source volume ids."""
        cols = self.kept.cols
        n_levels = sum(1 for k in cols if k.startswith("level"))
        return [cols[f"level{i}"].float() for i in range(n_levels)], cols["volume"]


def _held_out_nearest(
    q: torch.Tensor, q_unit: torch.Tensor, mem: torch.Tensor, m_unit: torch.Tensor
) -> torch.Tensor:
    """Cosine distance to the nearest memory row of another unit (inf when there is none)."""
    best = torch.full((q.shape[0],), -math.inf)
    step = max(1, SEARCH_BLOCK // max(1, q.shape[0]))
    for start in range(0, mem.shape[0], step):
        sims = q @ mem[start : start + step].T
        sims[q_unit[:, None] == m_unit[None, start : start + step]] = -math.inf
        best = torch.maximum(best, sims.amax(dim=1))
    return 1.0 - best


def _stats(values: torch.Tensor) -> dict[str, float]:
    values = values[torch.isfinite(values)].double()
    std = float(values.std()) if values.numel() > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "p99": float(torch.quantile(values, 0.99))}


def calibrate(pool: Candidates) -> dict[str, Any]:
    """Mean, standard deviation and 99th percentile of the held-out memory map and of the text map on normals."""
    held, kept = pool.held.cols, pool.kept.cols
    unit = next((u for u in ("volume", "slice") if int(torch.unique(held[u]).numel()) > 1), "patch")
    n_levels = sum(1 for k in held if k.startswith("level"))
    total = sum(
        _held_out_nearest(held[f"level{i}"].float(), held[unit], kept[f"level{i}"].float(), kept[unit])
        for i in range(n_levels)
    )
    memory = torch.as_tensor(total)
    return {"memory": _stats(memory), "text": _stats(held["text"]), "held_out": unit,
            "n_patches": int(torch.isfinite(memory).sum())}  # fmt: skip
