"""File helpers shared by every layer: atomic writes, streamed sha256 and the input file suffixes.

Atomic writes: write to a temporary sibling, then ``os.replace`` it onto the target.

A reader (or a resumed batch run that skips finished cases) never sees a half-written report file, and a failed
write leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from aaclip_med._typing import PathLike
from aaclip_med.errors import OutputError, UnsupportedFormatError

__all__ = [
    "DICOM_SUFFIXES",
    "INPUT_SUFFIXES",
    "MARKER",
    "NIFTI_SUFFIXES",
    "SITK_SUFFIXES",
    "TRAINING_OUTPUTS",
    "VOLUME_SUFFIXES",
    "atomic_path",
    "case_name",
    "check_cohort_folder",
    "check_input_exists",
    "check_output_folder",
    "check_outside_inputs",
    "default_output_dir",
    "sha256_file",
    "staged_output",
    "strip_volume_suffix",
    "volume_suffix",
    "written_files",
]

_CHUNK = 1 << 20
MARKER = "run.json"  # a folder holding this file is an aaclip-med output (written last, so: a complete one)
# what a `train` run folder holds: another non-empty folder is not written into
TRAINING_OUTPUTS = ("adapters.safetensors", "checkpoints", "train_log.csv", "train_log.jsonl")

# The file suffixes aaclip_med.io reads, in one place: the reader's dispatch, folder discovery, case names,
# mask and organ-label lookup all take them from here, so a format the reader learns is found everywhere.
NIFTI_SUFFIXES = (".nii.gz", ".nii")  # nibabel; .nii.gz first: organ lookup tries <organ>.nii.gz before .nii
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")  # SimpleITK (.nhdr/.mhd: header beside a .raw data file)
VOLUME_SUFFIXES = (*NIFTI_SUFFIXES, *SITK_SUFFIXES)  # single-file images: one file, one volume
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", ".zip")  # DICOM files and zips (extension-less files are read too)
INPUT_SUFFIXES = (*VOLUME_SUFFIXES, *DICOM_SUFFIXES)  # every suffix an image or mask file may carry


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


def check_input_exists(path: PathLike) -> None:
    """Refuse a missing input at once (the CLI calls this before importing torch).

    Raises:
        UnsupportedFormatError: naming the path and what kinds of input are read.
    """
    if not Path(path).exists():
        msg = (
            f"Input '{path}': no such file or folder; check the path (DICOM file/folder/zip, .nii/.nii.gz, "
            ".nrrd, .mha)."
        )
        raise UnsupportedFormatError(msg)


def _writable_ancestor(out_dir: Path, flag: str) -> None:
    out = out_dir.resolve()
    ancestor = next(p for p in (out, *out.parents) if p.exists())
    if ancestor.is_dir() and os.access(ancestor, os.W_OK | os.X_OK):
        probe = None
        try:  # os.access trusts mode bits: /proc and read-only mounts say yes to root, so try for real
            fd, probe = tempfile.mkstemp(dir=ancestor, prefix=".aaclip-med-probe.")
            os.close(fd)
        except OSError:
            pass
        else:
            return
        finally:
            if probe is not None:
                Path(probe).unlink(missing_ok=True)
    what = "is not a writable folder (read-only or a virtual file system)" if ancestor.is_dir() else "is a file"
    msg = f"Output folder {out_dir} cannot be created: {ancestor} {what}. Choose a writable {flag} folder."
    raise OutputError(msg)


def check_output_folder(
    out_dir: PathLike, inputs: Iterable[PathLike], *, overwrite: bool = False, flag: str = "-o/--out",
    ours: Iterable[str] = (MARKER,),
) -> None:
    """Refuse an output folder that cannot be written, overlaps an input, or already holds something.

    An empty or absent folder is fine. A folder holding an earlier aaclip-med output (one of ``ours``) is
    replaced only with ``overwrite`` (and even then only the files aaclip-med wrote); any other non-empty folder
    is refused.

    Raises:
        OutputError: naming the folder, the rule and the flag to change.
    """
    out = Path(out_dir)
    check_outside_inputs(out, inputs, flag)
    _writable_ancestor(out, flag)
    if not out.exists():
        return
    if not out.is_dir():
        msg = f"Output {out} is a file; choose a folder for {flag}."
        raise OutputError(msg)
    if not any(out.iterdir()):
        return
    if not any((out / name).exists() for name in ours):
        msg = (
            f"Output {out} exists and is not an aaclip-med output folder (no {MARKER}); refusing to write into "
            f"it. Choose another {flag} folder or empty it."
        )
        raise OutputError(msg)
    if not overwrite:
        msg = (
            f"Output {out} holds an earlier aaclip-med output; pass --overwrite to replace the files aaclip-med "
            f"wrote there (files you added are kept), or choose another {flag} folder."
        )
        raise OutputError(msg)


def written_files(folder: Path) -> list[str]:
    """Relative posix paths of every file under ``folder``, sorted (run.json records them as ``outputs``)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _earlier_outputs(folder: Path) -> list[str]:
    """The files an earlier run wrote into ``folder``: its run.json ``outputs`` list (empty when unknown)."""
    try:
        listed = json.loads((folder / MARKER).read_text(encoding="utf-8")).get("outputs", [])
    except (OSError, ValueError, AttributeError):
        return []
    safe = (p for p in listed if isinstance(p, str) and p)  # never a path outside the folder
    return [p for p in safe if ".." not in Path(p).parts and not Path(p).is_absolute()]


def _merge_into(tmp: Path, out_dir: Path) -> None:
    """Move a finished staging folder's files over an earlier output, touching only files aaclip-med wrote."""
    new = written_files(tmp)
    stale = sorted(set(_earlier_outputs(out_dir)) - set(new))
    (out_dir / MARKER).unlink(missing_ok=True)  # first: until the new run.json lands, the folder is incomplete
    for rel in stale:
        path = out_dir / rel
        if path.is_file() and not path.is_symlink():
            path.unlink()
            if path.parent != out_dir and not any(path.parent.iterdir()):
                path.parent.rmdir()  # an emptied folder of ours (overlays/)
    for rel in sorted(new, key=lambda r: r == MARKER):  # run.json last
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).replace(target)


@contextlib.contextmanager
def staged_output(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success its files land in ``out_dir``, on failure it is deleted.

    A new ``out_dir`` is the renamed staging folder, so it appears complete or not at all. Over an earlier
    aaclip-med output (callers first check :func:`check_output_folder` with ``overwrite``), the new files replace
    the old ones and the earlier run's other files (listed in its run.json ``outputs``) are deleted; files that
    aaclip-med did not write are never touched. A failure also removes the parent folders it created (``-o
    new/deeper/out``), where they are still empty.

    Raises:
        OutputError: The parent folder cannot be created or written.
    """
    parent = out_dir.parent
    created = [p for p in (parent, *parent.parents) if not p.exists()]  # deepest first
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=parent))
    except OSError as err:
        _remove_empty(created)
        msg = f"Cannot write into {parent} ({err.strerror}); choose a writable -o/--out folder."
        raise OutputError(msg) from err
    done = False
    try:
        yield tmp
        tmp.chmod(0o755)
        if out_dir.exists():
            _merge_into(tmp, out_dir)
        else:
            tmp.rename(out_dir)
        done = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            _remove_empty(created)


def _remove_empty(folders: Iterable[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty: what a failed write created, and nothing else."""
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty (someone else wrote there meanwhile): keep it and its parents
            return


def volume_suffix(path: PathLike) -> str:
    """The lower-case suffix that decides how a file is read: ``.nii.gz`` as one, else the last extension.

    Example:
        >>> volume_suffix("scans/Case_01.NII.GZ"), volume_suffix("a.b.mha"), volume_suffix("IM0001")
        ('.nii.gz', '.mha', '')
    """
    p = Path(path)
    return ".nii.gz" if p.name.lower().endswith(".nii.gz") else p.suffix.lower()


def strip_volume_suffix(name: str) -> str:
    """``name`` without a trailing suffix of :data:`INPUT_SUFFIXES` (any case); unchanged when it has none.

    Example:
        >>> [strip_volume_suffix(n) for n in ("Case_01.nii.gz", "scan.NHDR", "IM0001", "notes.txt")]
        ['Case_01', 'scan', 'IM0001', 'notes.txt']
    """
    suffix = volume_suffix(name)
    return name[: -len(suffix)] or name if suffix in INPUT_SUFFIXES else name


def case_name(path: PathLike) -> str:
    """The case name of an input: its file name without image extensions, or the folder name."""
    return strip_volume_suffix(Path(path).name)


def default_output_dir(input_path: PathLike) -> Path:
    """``reports/<input name>/`` relative to the working folder (DESIGN §0)."""
    return Path("reports") / case_name(input_path)


def check_cohort_folder(
    out_dir: PathLike, inputs: Iterable[PathLike], *, resume: bool, overwrite: bool, num_parts: int
) -> None:
    """:func:`check_output_folder` for ``batch``: a finished cohort (run.json) only with --continue or --overwrite.

    Parts (``num_parts > 1``) share one folder and write no run.json, so a folder with ``cases/`` or ``parts/``
    is taken up again without a flag.
    """
    finished = (Path(out_dir) / MARKER).exists()
    check_output_folder(out_dir, inputs, overwrite=resume or overwrite or num_parts > 1 or not finished,
                        ours=(MARKER, "cases", "parts"))  # fmt: skip
