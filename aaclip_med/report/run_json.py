"""Provenance for ``run.json``: how an output folder was made (nnU-Net ``predict_from_raw_data_args.json``).

It records the resolved configuration, the model (name, weights hash, untrained flag), the versions of the
packages that shape the numbers, the interpreter and platform, the sha256 of every input, timings and a UTC
timestamp.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import importlib.metadata
import logging
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

from aaclip_med._files import sha256_file
from aaclip_med._typing import PathLike
from aaclip_med.errors import UnsupportedFormatError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "NOT_RECORDED",
    "PROVENANCE_PACKAGES",
    "describe_case_precisions",
    "describe_precision",
    "input_record",
    "mixed_precision_note",
    "package_versions",
    "provenance",
]

logger = logging.getLogger(__name__)

# Distributions whose versions can change the outputs (import name differs for some: open_clip, SimpleITK).
PROVENANCE_PACKAGES: tuple[str, ...] = (
    "aaclip-med",
    "torch",
    "open_clip_torch",
    "monai",
    "numpy",
    "pydicom",
    "nibabel",
    "SimpleITK",
    "highdicom",
)
_WEIGHTS_HASH_KEYS = ("weights_sha256", "adapter_sha256", "sha256")


def input_record(path: PathLike, name: str | None = None) -> dict[str, Any]:
    """Describe one input: its path, kind, file count, byte count and sha256.

    A folder (a DICOM series) is hashed as the sha256 of the lines ``<relative posix path> NUL <file sha256>``
    over its files in sorted order, so renaming, adding or changing any file changes the hash.

    Args:
        path: An input file or folder, as given by the user.
        name: What to record as its path (default: ``path`` as given; see :mod:`aaclip_med.privacy`).

    Returns:
        ``{"path", "kind": "file"|"folder", "n_files", "n_bytes", "sha256"}``.

    Raises:
        UnsupportedFormatError: The path does not exist.
    """
    source = Path(path)
    shown = str(path) if name is None else name
    if source.is_file():
        return {
            "path": shown,
            "kind": "file",
            "n_files": 1,
            "n_bytes": source.stat().st_size,
            "sha256": sha256_file(source),
        }
    if not source.is_dir():
        msg = f"Input {shown} does not exist; cannot hash it for run.json. Check the path."
        raise UnsupportedFormatError(msg)
    files = sorted((p for p in source.rglob("*") if p.is_file()), key=lambda p: p.relative_to(source).as_posix())
    combined = hashlib.sha256()
    for file in files:
        combined.update(f"{file.relative_to(source).as_posix()}\0{sha256_file(file)}\n".encode())
    return {
        "path": shown,
        "kind": "folder",
        "n_files": len(files),
        "n_bytes": sum(f.stat().st_size for f in files),
        "sha256": combined.hexdigest(),
    }


def package_versions(names: Sequence[str] = PROVENANCE_PACKAGES) -> dict[str, str | None]:
    """Return the installed version of each distribution, None when it is not installed.

    Args:
        names: Distribution names.

    Returns:
        Name to version string or None.
    """
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@runtime_checkable
class _ToDict(Protocol):
    """A config object that converts itself to a dict (:class:`~aaclip_med.config.RunConfig`)."""

    def to_dict(self) -> Mapping[str, Any]: ...


_ConfigLike: TypeAlias = "Mapping[str, Any] | DataclassInstance | _ToDict | None"


def _config_dict(config: _ConfigLike) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, _ToDict):  # the hasattr(config, "to_dict") test
        return dict(config.to_dict())
    if isinstance(config, Mapping):
        return dict(config)
    return dataclasses.asdict(config)


def describe_precision(metadata: Mapping[str, Any] | None) -> str | None:
    """How the model computed, in words, from ``model.metadata()``: precision, how auto chose it, backend.

    The parenthesis says how ``auto`` decided: the AMX probe's block timings (bf16 against int8), the int8
    guard's verdict; the int8 engine (``x86``: fbgemm, ``onednn``: AMX-INT8 where present) follows.

    Example:
        >>> describe_precision({"precision": "int8", "backend": "eager", "int8_guard": {"r": 0.99998,
        ...     "max_abs_diff": 0.01, "slices": 2, "threshold": 0.999, "passed": True}})
        'int8 (auto; guard passed: maps r 0.99998 >= 0.999 vs fp32 on 2 slices), backend eager'
    """
    meta = metadata or {}
    if not meta.get("precision"):
        return None
    why, guard, seconds = [], meta.get("int8_guard"), meta.get("precision_seconds")
    if isinstance(seconds, Mapping) and {"bf16", "int8"} <= set(seconds):
        why.append(f"one vision block bf16 {seconds['bf16'] * 1e3:.1f} ms vs int8 {seconds['int8'] * 1e3:.1f} ms, "
                   f"{meta.get('precision_choice', 'measured')}")  # fmt: skip
    if isinstance(guard, Mapping):
        r = "undefined" if guard.get("r") is None else f"{guard['r']:.5f}"
        verdict = ("passed", ">=") if guard.get("passed") else ("failed", "<")
        why.append(f"guard {verdict[0]}: maps r {r} {verdict[1]} {guard.get('threshold')} vs fp32 on "
                   f"{guard.get('slices')} slices")  # fmt: skip
    elif guard == "not run":  # aaclip_med.model.guard.PENDING (the report does not import the model)
        why.append("int8 guard not run yet")
    text = str(meta["precision"]) + (f" (auto; {'; '.join(why)})" if why else "")
    if meta["precision"] == "int8" and meta.get("int8_engine"):
        text += f", int8 engine {meta['int8_engine']}"
    return text + (f", backend {meta['backend']}" if meta.get("backend") else "")


NOT_RECORDED = "not recorded"  # a case whose run.json has no model.metadata.precision (written before it was kept)


def describe_case_precisions(counts: Mapping[str, int] | None) -> str | None:
    """The precisions a cohort's cases were scored in, with counts (run.json ``case_precisions``), in words.

    Example:
        >>> describe_case_precisions({"int8": 3, "fp32": 1})
        'int8: 3 cases, fp32: 1 case'
    """
    if not counts:
        return None
    return ", ".join(f"{name}: {n} case{'' if n == 1 else 's'}" for name, n in counts.items())


def mixed_precision_note(counts: Mapping[str, int] | None) -> str | None:
    """The warning for a cohort whose cases were scored in different precisions; None when they agree.

    Cohort workers each build their model and run their own int8 guard, and a resumed cohort keeps the cases of
    earlier runs, so one cohort can hold cases of several precisions.

    Example:
        >>> mixed_precision_note({"int8": 3}) is None
        True
    """
    if counts is None or len(counts) < 2:
        return None
    return (
        f"Cases were scored in different precisions ({describe_case_precisions(counts)}): compare scores across "
        "cases with care; pin --precision fp32 for a uniform cohort."
    )


def _model_record(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    metadata = dict(metadata or {})
    weights_hash = next((metadata[k] for k in _WEIGHTS_HASH_KEYS if metadata.get(k)), None)
    return {
        "name": metadata.get("name", metadata.get("model")),
        "weights_sha256": weights_hash,
        "untrained_backbone": bool(metadata.get("untrained_backbone", False)),
        "metadata": metadata,
    }


def provenance(
    config: _ConfigLike,
    model_metadata: Mapping[str, Any] | None,
    inputs: Sequence[PathLike],
    timings: Mapping[str, float] | None = None,
    *,
    extra: Mapping[str, Any] | None = None,
    name_input: Callable[[PathLike], str] = str,
) -> dict[str, Any]:
    """Build the content of ``run.json``.

    Args:
        config: The resolved configuration: a mapping, a dataclass, or an object with ``to_dict()`` (RunConfig).
        model_metadata: ``model.metadata()``; its ``name`` (or ``model``), ``weights_sha256`` (or
            ``adapter_sha256`` / ``sha256``) and ``untrained_backbone`` keys are lifted into ``model``.
        inputs: Input files or folders; each is hashed in full (streamed).
        timings: Named durations in seconds (e.g. ``{"read": 1.2, "score": 30.5}``).
        extra: More top-level keys (e.g. ``{"modality_guessed": True}``); they override nothing above.
        name_input: How an input path is recorded (:meth:`aaclip_med.privacy.Naming.path`); default as given.

    Returns:
        ``{"created_utc", "config", "model", "packages", "python", "inputs", "timings", ...extra}``; pass it to
        :func:`~aaclip_med.report.write_json`.

    Raises:
        UnsupportedFormatError: An input path does not exist.

    Example:
        >>> prov = provenance({"preset": "ct"}, {"name": "demo"}, [])
        >>> prov["model"]["name"], sorted(prov)[:3]
        ('demo', ['config', 'created_utc', 'inputs'])
    """
    record: dict[str, Any] = {
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": _config_dict(config),
        "model": _model_record(model_metadata),
        "packages": package_versions(),
        "python": {
            "version": sys.version.split()[0],
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "machine": platform.machine(),
        },
        "inputs": [input_record(p, name_input(p)) for p in inputs],
        "timings": {k: float(v) for k, v in (timings or {}).items()},
    }
    for key, value in (extra or {}).items():
        record.setdefault(key, value)
    return record
