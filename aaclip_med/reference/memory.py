"""The normal-reference patch memory: per-level tokens of normal slices, its file, and nearest-neighbour search.

A memory holds, for each of the model's 4 map levels, unit-norm adapted patch tokens (:meth:`AACLIP.encode_levels`)
of normal slices, the same patches at every level. The anomaly of a query patch at one level is its cosine
distance to the nearest memory patch, ``1 - max_m <q, m>``; the memory map sums it over the levels (PatchCore /
APRIL-GAN / MVFA-AD few-shot). The search is an exact chunked matmul whose temporary stays under
:data:`SEARCH_BLOCK` scores however large the memory (faiss-cpu is not installed here, so
it was not measured or adopted: benchmarks/README.md).

File: safetensors with tensors ``level0..level{L-1}`` (float16, ``(M, D)``), ``group`` (int32, ``(M,)``: the
source volume of each patch) and one JSON metadata block (:data:`METADATA_KEY`): the model identity it was built
with (model, backbone name and fingerprint or sha256, adapter sha256, input size), the preset and its window rule,
the sources with their sha256, patch counts and the normal-reference calibration (:mod:`.calibration`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aaclip_med._files import atomic_path, sha256_file
from aaclip_med.errors import WeightsError

__all__ = [
    "FORMAT",
    "METADATA_KEY",
    "SEARCH_BLOCK",
    "PatchMemory",
    "check_memory",
    "load_memory",
    "nearest_distance",
    "save_memory",
]

FORMAT = "aaclip-med-reference/1"
METADATA_KEY = "aaclip_med_reference"
SEARCH_BLOCK = 1 << 24  # scores per matmul block (64 MiB in fp32) whatever the memory and batch sizes
_STORE_DTYPE = torch.float16  # unit vectors: fp16 keeps cosines to ~1e-3 and halves the file


@dataclass(frozen=True, eq=False)
class PatchMemory:
    """Normal patch tokens per level, their source volume ids and the provenance metadata.

    Attributes:
        levels: Per level, (M, D) float32 unit rows (the same M patches at every level).
        group: (M,) int64 index of each patch's source volume (``metadata["sources"]``).
        metadata: JSON-serialisable provenance (module docstring).
        source: The file it was read from, or None.
        sha256: That file's sha256, or None.
    """

    levels: tuple[torch.Tensor, ...]
    group: torch.Tensor
    metadata: dict[str, Any]
    source: str | None = None
    sha256: str | None = None

    @property
    def n_patches(self) -> int:
        """Patches per level."""
        return int(self.levels[0].shape[0])

    def to(self, device: torch.device | str) -> PatchMemory:
        """The same memory with its tensors on ``device``."""
        levels = tuple(t.to(device) for t in self.levels)
        return PatchMemory(levels, self.group.to(device), self.metadata, self.source, self.sha256)

    def describe(self) -> dict[str, Any]:
        """What run.json and qa.json record: path, sha256, patch count, sources and model identity."""
        meta = self.metadata
        keys = ("model", "preset", "input_size", "subsample", "n_slices", "n_patches_collected")
        return {"path": self.source, "sha256": self.sha256, "n_patches": self.n_patches,
                **{k: meta.get(k) for k in keys}, "n_sources": len(meta.get("sources", []))}  # fmt: skip


def nearest_distance(queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """Cosine distance of each query row to its nearest memory row: ``1 - max_m <q, m>``, exact.

    The (N, M) score matrix is never built: memory rows go through in blocks of ``SEARCH_BLOCK // N``.

    Args:
        queries: (..., D) unit rows.
        memory: (M, D) unit rows, M >= 1; its dtype sets the matmul's.

    Returns:
        (N,) float32 distances in [0, 2], N the number of query rows.
    """
    q = queries.reshape(-1, queries.shape[-1]).to(memory.dtype)
    best = torch.full((q.shape[0],), -math.inf, dtype=torch.float32, device=q.device)
    step = max(1, SEARCH_BLOCK // max(1, q.shape[0]))
    for start in range(0, memory.shape[0], step):
        sims = q @ memory[start : start + step].T
        best = torch.maximum(best, sims.amax(dim=1).float())
    return (1.0 - best).clamp_min(0.0)


def save_memory(path: str | os.PathLike[str], memory: PatchMemory) -> Path:
    """Write ``memory`` to ``.safetensors`` (atomic rename); ``metadata`` as one JSON block."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {f"level{i}": t.detach().to("cpu", _STORE_DTYPE).contiguous() for i, t in enumerate(memory.levels)}
    tensors["group"] = memory.group.detach().to("cpu", torch.int32).contiguous()
    meta = {**memory.metadata, "format": FORMAT, "storage_dtype": str(_STORE_DTYPE).removeprefix("torch.")}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    return path


_CACHE: dict[tuple[str, int, int], PatchMemory] = {}  # one read per file version per process (batch runs)


def load_memory(path: str | os.PathLike[str]) -> PatchMemory:
    """Read a memory written by :func:`save_memory` (cached per path, size and modification time).

    Raises:
        WeightsError: missing, unreadable or not an aaclip-med reference memory.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        msg = f"{path}: reference memory not found. Build one with `aaclip-med reference build` or fix the path."
        raise WeightsError(msg)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _CACHE:
        return _CACHE[key]
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(METADATA_KEY)
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no iterator
        meta = json.loads(raw) if raw else {}
    except Exception as err:
        msg = f"{path}: cannot read the reference memory ({type(err).__name__}); rebuild it (`reference build`)."
        raise WeightsError(msg) from err
    n_levels = sum(1 for k in tensors if k.startswith("level"))
    if meta.get("format") != FORMAT or not n_levels or "group" not in tensors:
        msg = f"{path}: not an aaclip-med reference memory ({FORMAT}); build one with `reference build`."
        raise WeightsError(msg)
    levels = tuple(tensors[f"level{i}"].float() for i in range(n_levels))
    memory = PatchMemory(levels, tensors["group"].long(), meta, str(path), sha256_file(path))
    _CACHE.clear()
    _CACHE[key] = memory
    return memory


def identity(model_meta: Mapping[str, Any]) -> dict[str, Any]:
    """The model identity a memory is tied to: model, backbone (name, fingerprint, sha256), adapters, size."""
    backbone = model_meta.get("backbone") or {}
    return {
        "model": model_meta.get("model"),
        "backbone": {k: backbone.get(k) for k in ("name", "source", "seed", "sha256", "fingerprint")},
        "adapter_sha256": model_meta.get("adapter_sha256"),
        "input_size": model_meta.get("input_size"),
        "n_levels": len(model_meta.get("taps") or ()),
    }


def _same_fingerprint(a: Sequence[float] | None, b: Sequence[float] | None) -> bool:
    if a is None or b is None:
        return a is b
    close = (math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-4) for x, y in zip(a, b, strict=True))
    return len(a) == len(b) and all(close)


def check_memory(memory: PatchMemory, model_meta: Mapping[str, Any], preset: str | None) -> None:
    """Refuse a memory built for another model, backbone, adapters, input size or preset.

    Args:
        memory: The memory.
        model_meta: ``model.metadata()`` of the scoring model.
        preset: The scoring preset's name (None: not checked yet).

    Raises:
        WeightsError: one line naming the mismatch, both values and the fix.
    """
    want, have = memory.metadata.get("identity") or {}, identity(model_meta)
    wb, hb = want.get("backbone") or {}, have["backbone"]
    checks = [
        ("model", want.get("model"), have["model"], "--model"),
        ("backbone", wb.get("name"), hb["name"], "--model"),
        ("backbone weights sha256", wb.get("sha256"), hb["sha256"], "--backbone-weights"),
        ("adapter sha256", want.get("adapter_sha256"), have["adapter_sha256"], "--adapter-weights"),
        ("input size", want.get("input_size"), have["input_size"], "--image-size"),
        ("levels", want.get("n_levels"), have["n_levels"], "--model"),
    ]
    if preset is not None:
        checks.append(("preset", memory.metadata.get("preset"), preset, "--preset"))
    for what, built, scoring, flag in checks:
        if built != scoring:
            _refuse(memory, what, built, scoring, flag)
    if not _same_fingerprint(wb.get("fingerprint"), hb["fingerprint"]):
        _refuse(memory, "backbone weights", f"seed {wb.get('seed')}", f"seed {hb['seed']}", "--backbone-weights")


def _refuse(memory: PatchMemory, what: str, built: object, scoring: object, flag: str) -> None:
    short = {str(v): (f"{v[:12]}..." if isinstance(v, str) and len(v) > 16 else v) for v in (built, scoring)}
    msg = (
        f"{memory.source}: reference memory built with {what} {short[str(built)]}, this run uses "
        f"{short[str(scoring)]}; score with the same {flag} or rebuild it with `aaclip-med reference build`."
    )
    raise WeightsError(msg)
