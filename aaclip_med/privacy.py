"""Names in paths: how outputs record input paths and name cases without copying a patient's name or ID.

File and folder names often hold a patient's name or ID (``Doe_Jane/CT``, ``PID-12345.nii.gz``). Unless the user
asks to keep names (``--include-phi`` or ``--keep-names``), outputs follow this rule:

- an input path is recorded relative to ``--base-dir`` when the input lies inside it (the user chose what the
  relative part shows), else as ``sha256:<16 hex>`` of its absolute path;
- a case is named by the user (``--case-id``, a manifest's ``case_id`` column) or else ``case-<10 hex>``, a hash
  of the recorded path (for ``batch``: of the path inside the data folder), stable across reruns of the same
  input, so ``--continue`` finds finished cases;
- messages copied into outputs (qa.json warnings, failures.csv) have the input path replaced by its record.

The console and log output are the user's own and keep real paths.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aaclip_med._typing import PathLike

__all__ = ["Naming"]


def _digest(text: str, n: int) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:n]


@dataclass(frozen=True)
class Naming:
    """The naming rule of one run (module docstring).

    Attributes:
        keep_names: Record paths as given and name cases after their files (``--include-phi``, ``--keep-names``).
        base_dir: Inputs inside it are recorded relative to it.

    Example:
        >>> Naming(base_dir="/data").path("/data/a/b.nii.gz")
        'a/b.nii.gz'
        >>> Naming().path("/data/a/b.nii.gz").startswith("sha256:")
        True
    """

    keep_names: bool = False
    base_dir: str | None = None

    def path(self, path: PathLike) -> str:
        """How an input path is written into outputs."""
        if self.keep_names:
            return str(path)
        absolute = Path(path).resolve()
        if self.base_dir is not None:
            base = Path(self.base_dir).resolve()
            if absolute == base or base in absolute.parents:
                return absolute.relative_to(base).as_posix() or "."
        return f"sha256:{_digest(str(absolute), 16)}"

    def case_id(self, key: str, name: str) -> str:
        """The id of a case the user did not name: ``name`` when names are kept, else ``case-`` + hash of ``key``.

        Args:
            key: What identifies the case stably (a recorded path, or a path relative to a cohort folder).
            name: The name taken from the file or folder.
        """
        if self.keep_names:
            return name
        return f"case-{_digest(key, 10)}"

    def scrub(self, text: str, paths: Iterable[PathLike]) -> str:
        """``text`` with each input path (as given and absolute) replaced by its record."""
        if self.keep_names:
            return text
        for path in paths:
            record = self.path(path)
            for form in sorted({str(path), str(Path(path).resolve())}, key=len, reverse=True):
                if form and form != ".":
                    text = text.replace(form, record)
        return text
