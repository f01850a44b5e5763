"""Cost of the normal-reference memory search against the model's own time (issue 17), on this machine.

The search cost does not depend on the token values, so it is timed on random unit tensors of ViT-L/14's shapes at
518 px (1369 patches x 768 dims per level, 4 levels) against a memory of ``--memory`` patches per level, exactly as
:func:`aaclip_med.reference.scorer.memory_grid` runs it (chunked matmul, fp32 and bf16 memories). The model time is
one ViT-L 518 slice through ``score_slices`` (random backbone; speed does not depend on weight values), at the
precision ``auto`` picks here. faiss is timed when installed (``IndexFlatIP``, exact, same answer).

    python benchmarks/bench_reference_search.py [--memory 20000] [--out benchmarks/results/reference_search.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_common import FULL_MODEL, PRESET, ROOT, build_model, machine, random_slices

from aaclip_med.reference.memory import PatchMemory
from aaclip_med.reference.scorer import memory_grid

PATCHES, DIM, LEVELS, GRID = 1369, 768, 4, (37, 37)


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _median(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def search_times(n_memory: int, repeats: int) -> dict[str, float]:
    """Seconds per slice (4 levels) of the exact search, per memory dtype, and faiss when importable."""
    seg = [_unit(1, PATCHES, DIM, seed=i) for i in range(LEVELS)]
    out: dict[str, float] = {}
    for dtype in (torch.float32, torch.bfloat16):
        levels = tuple(_unit(n_memory, DIM, seed=10 + i).to(dtype) for i in range(LEVELS))
        mem = PatchMemory(levels, torch.zeros(n_memory, dtype=torch.long), {})
        key = f"torch_{str(dtype).removeprefix('torch.')}_s"
        out[key] = _median(lambda mem=mem: memory_grid(seg, mem, GRID), repeats)  # type: ignore[misc]
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        out["faiss_s"] = float("nan")  # not installed here
    else:
        indexes = []
        for i in range(LEVELS):
            index = faiss.IndexFlatIP(DIM)
            index.add(_unit(n_memory, DIM, seed=10 + i).numpy())
            indexes.append(index)
        pairs = list(zip(indexes, seg, strict=True))
        out["faiss_s"] = _median(lambda: [ix.search(s[0].numpy(), 1) for ix, s in pairs], repeats)
    return out


def model_time(repeats: int, n_memory: int) -> tuple[float, str, list[float]]:
    """Seconds of one ViT-L 518 slice through score_slices (median), the precision used, and the overhead ratios.

    The ratios time the fp32 search and the model alternately (search, model, search, model, ...), so a change in
    the load of the shared CPU hits both sides of each ratio alike.
    """
    model = build_model(FULL_MODEL, "cpu")
    x = random_slices(1, model.input_size)
    seg = [_unit(1, PATCHES, DIM, seed=i) for i in range(LEVELS)]
    levels = tuple(_unit(n_memory, DIM, seed=10 + i) for i in range(LEVELS))
    mem = PatchMemory(levels, torch.zeros(n_memory, dtype=torch.long), {})
    model.score_slices(x, PRESET, return_levels=False)  # warm-up (backend compile, caches)
    pairs = []
    for _ in range(repeats):
        search = _median(lambda: memory_grid(seg, mem, GRID), 1)
        pairs.append((search, _median(lambda: model.score_slices(x, PRESET, return_levels=False), 1)))
    ratios = [a / b for a, b in pairs]
    return statistics.median(b for _, b in pairs), model.precision, ratios


def main() -> None:
    """Measure and write the JSON (and print the ratios)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memory", type=int, default=20000, help="memory patches per level")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/reference_search.json")
    args = ap.parse_args()
    info = machine(torch.device("cpu"))
    search = search_times(args.memory, args.repeats)
    seconds, precision, ratios = model_time(args.repeats, args.memory)
    result = {
        "machine": info,
        "memory_patches_per_level": args.memory,
        "query": f"{LEVELS} x {PATCHES} x {DIM}",
        "search_s_per_slice": search,
        "model_s_per_slice": seconds,
        "model_precision": precision,
        "overhead": {k: v / seconds for k, v in search.items()},
        "overhead_interleaved_fp32": {"median": statistics.median(ratios), "each": ratios},
        "memory_bytes": {"fp32": LEVELS * args.memory * DIM * 4, "fp16_file": LEVELS * args.memory * DIM * 2},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
