"""The output-folder protocol shared by ``run``, ``batch`` and ``eval``: marker file, case name, staged writes.

A leaf module (standard library only), so ``aaclip-med eval`` can use it without importing the scoring stack
(torch, MONAI, open_clip).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aaclip_med._typing import PathLike
from aaclip_med.errors import OutputError

__all__ = ["MARKER", "case_name", "staged_output"]

MARKER = "run.json"  # a folder holding this file is an aaclip-med output and may be replaced by a new run


def case_name(path: PathLike) -> str:
    """The case name of an input: its file name without image extensions, or the folder name."""
    p = Path(path)
    name = p.name
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm", ".zip"):
        if name.lower().endswith(ext):
            return name[: -len(ext)] or p.name
    return name


@contextmanager
def staged_output(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``out_dir``, on failure it is deleted.

    Raises:
        OutputError: The parent folder cannot be created or written.
    """
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=parent))
    except OSError as err:
        msg = f"Cannot write to {parent}: {err.strerror}. Choose a writable -o/--out folder."
        raise OutputError(msg) from err
    try:
        yield tmp
        tmp.chmod(0o755)
        if out_dir.exists():
            old = parent / f".{out_dir.name}.old-{os.getpid()}"
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
