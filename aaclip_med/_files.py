"""File helpers shared by every layer: atomic writes and streamed sha256.

Atomic writes: write to a temporary sibling, then ``os.replace`` it onto the target.

A reader (or a resumed batch run that skips finished cases) never sees a half-written report file, and a failed
write leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from aaclip_med._typing import PathLike
from aaclip_med.errors import OutputError

__all__ = ["atomic_path", "check_outside_inputs", "sha256_file"]

_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``, on failure delete it.

    Args:
        path: The final file location; its parent folder is created if needed.

    Yields:
        A temporary path with the target's extensions, in the same folder (same file system, so the final
        ``os.replace`` is atomic).

    Raises:
        OutputError: The folder cannot be created or written.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # the temporary name keeps the target's extensions: writers such as nibabel choose the format by them
        suffix = ".partial" + "".join(target.suffixes[-2:])
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=suffix)
    except OSError as err:
        msg = f"Cannot write {target}: {err.strerror}; choose a writable output folder (--out)."
        raise OutputError(msg) from err
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp creates 0600; report files are meant to be shared
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: PathLike) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks (any size, constant memory)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_outside_inputs(out_dir: PathLike, inputs: Iterable[PathLike], flag: str = "-o/--out") -> None:
    """Refuse an output folder that is an input, lies inside one or contains one (inputs are never modified).

    Raises:
        OutputError: naming the output, the input it overlaps and the flag to change.
    """
    out = Path(out_dir).resolve()
    for given in inputs:
        src = Path(given).resolve()
        if out == src or src in out.parents or out in src.parents:
            msg = (
                f"Output folder {out_dir} is the input, inside it or contains it ({given}); "
                f"outputs never go inside or over the input. Choose another {flag} folder."
            )
            raise OutputError(msg)
