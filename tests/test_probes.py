"""The adversarial pass of issue 14, kept as parametrised probes: a new user's mistakes and an adversary's inputs.

Every probe checks the same promises: no traceback, the documented exit code (0 done, 2 bad input or flag, 3
batch with failed cases), inputs never modified, no hidden temporary folder left behind. A refusal is one
``error:`` line that names the problem and writes nothing; a run on dubious input finishes but says so in
qa.json ("silent garbage" is a failure). :func:`test_probe_tally` prints the counts quoted in the issue's
closing note.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from aaclip_med.cli import app
from tests.conftest import build_series, file_hashes

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "aaclip-tiny", "--backbone-weights", "random", "--image-size", "64", "--no-progress"]
runner = CliRunner()


@dataclass(frozen=True)
class Probe:
    """One probe: the arguments (built in ``inputs``; ``{out}`` is the output folder), what must come back."""

    make: Callable[[Path], list[str]]
    code: int  # expected exit code
    says: str  # text the output (or, for "warns", qa.json's warnings) must hold
    kind: str = "refusal"  # refusal (exit 2, one line), warns (exit 0, a qa.json warning), ok, cases-failed


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def _vol(d: Path, name: str = "vol.nii.gz", shape: tuple[int, int, int] = (24, 24, 3)) -> Path:
    return _nifti(d / name, np.random.default_rng(0).random(shape, dtype=np.float32) * 100)


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _zero_geometry(d: Path) -> Path:
    img = nib.Nifti1Image(np.random.default_rng(1).random((24, 24, 3), dtype=np.float32) * 100, None)
    img.header["pixdim"][1:4] = 0
    img.header.set_sform(None, code=0)
    img.header.set_qform(None, code=0)
    return _write(d / "zero_geometry.nii", img.to_bytes())


def _huge_header(d: Path) -> Path:
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.uint8)
    return _write(d / "huge.nii", header.binaryblock + b"\0" * 1028)


def _fake_run(folder: Path) -> Path:
    """A folder that looks like an earlier aaclip-med output (run.json)."""
    _write(folder / "run.json", "{}")
    return folder


def _series(d: Path, *, frame_of_reference: bool = True) -> Path:
    spec = build_series(d / "series", rows=20, cols=20, n=3)
    if not frame_of_reference:  # like 3D-IRCADb, old LiTS conversions, anonymised exports
        import pydicom

        for file in spec.files:
            ds = pydicom.dcmread(file)
            del ds.FrameOfReferenceUID
            ds.save_as(file, enforce_file_format=True)
    return spec.folder


def _pickle_adapters(d: Path) -> Path:
    folder = d / "adapters"
    folder.mkdir(parents=True)
    for name in ("text_adapter.pth", "image_adapter.pth"):
        _write(folder / name, pickle.dumps({"text_adapter": {}}))
    return folder


def _run_tiny(d: Path, source: Path, out: Path) -> Path:
    result = runner.invoke(app, ["-q", "run", str(source), *TINY, "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _predictions(d: Path) -> Path:
    return _run_tiny(d, _vol(d / "src"), d / "pred")


def _cohort_two_bad(d: Path) -> Path:
    folder = d / "cohort"
    _write(folder / "a.nii.gz", "not a nifti")
    _write(folder / "b.nii.gz", "not a nifti")
    _vol(folder, "c.nii.gz")
    return folder


def _run(*extra: str) -> Callable[[Path], list[str]]:
    """``run <a 24x24x3 volume> TINY extra -o {out}``."""
    return lambda d: ["run", str(_vol(d)), *TINY, *extra, "-o", "{out}"]


PROBES: dict[str, Probe] = {
    # inputs that are not images
    "missing input": Probe(lambda d: ["run", str(d / "nope.nii.gz"), *TINY, "-o", "{out}"], 2, "no such file"),
    "empty folder": Probe(lambda d: (d / "empty").mkdir() or ["run", str(d / "empty"), *TINY, "-o", "{out}"], 2,
                          "empty"),
    "text file named .dcm": Probe(lambda d: ["run", str(_write(d / "x.dcm", "hello")), *TINY, "-o", "{out}"], 2,
                                  "not a DICOM file"),
    "random bytes .zip": Probe(lambda d: ["run", str(_write(d / "r.zip", bytes(range(256)) * 20)), *TINY,
                                          "-o", "{out}"], 2, "not a readable zip archive"),
    "30000^3 header": Probe(lambda d: ["run", str(_huge_header(d)), *TINY, "-o", "{out}"], 2, "30000x30000x30000"),
    "truncated gzip NIfTI": Probe(lambda d: ["run", str(_write(d / "t.nii.gz", _vol(d).read_bytes()[:200])), *TINY,
                                             "-o", "{out}"], 2, "not a readable NIfTI"),
    "all-NaN volume": Probe(lambda d: ["run", str(_nifti(d / "nan.nii.gz", np.full((8, 8, 3), np.nan, "f4"))),
                                       *TINY, "-o", "{out}"], 2, "no finite voxel"),
    "4D without --volume-index": Probe(lambda d: ["run", str(_nifti(d / "4d.nii.gz", np.ones((8, 8, 3, 2), "f4"))),
                                                  *TINY, "-o", "{out}"], 2, "--volume-index"),
    "--series on a NIfTI": Probe(_run("--series", "2"), 2, "drop --series"),
    "--volume-index on 3D": Probe(_run("--volume-index", "1"), 2, "only applies to 4D"),
    # output folders
    "-o /proc/x": Probe(lambda d: ["run", str(_vol(d)), *TINY, "-o", "/proc/aaclip-probe"], 2,
                        "/proc is not a writable folder"),
    "-o below a file": Probe(lambda d: ["run", str(_vol(d)), *TINY, "-o", str(_write(d / "f", "x") / "o")], 2,
                             "is a file"),
    "-o inside the input": Probe(lambda d: ["run", str(_series(d)), *TINY, "-o", str(d / "series" / "o")], 2,
                                 "inside"),
    "-o a foreign folder": Probe(lambda d: ["run", str(_vol(d)), *TINY, "-o", str(_write(d / "mine" / "a.txt",
                                            "x").parent)], 2, "not an aaclip-med output"),  # fmt: skip
    "-o an earlier run": Probe(lambda d: ["run", str(_vol(d)), *TINY, "-o", str(_fake_run(d / "old"))], 2,
                               "--overwrite"),
    # models, weights, flags
    "unknown model": Probe(lambda d: ["run", str(_vol(d)), "--model", "aaclip-tinny", "-o", "{out}"], 2,
                           "did you mean 'aaclip-tiny'"),
    "unknown preset": Probe(_run("--preset", "liver-ct"), 2, "did you mean 'liver_ct'"),
    "adapters missing": Probe(_run("--adapter-weights", "/nonexistent/a.safetensors"), 2, "not found"),
    "single .pth adapter": Probe(lambda d: ["run", str(_vol(d)), *TINY, "--adapter-weights",
                                            str(_write(d / "a.pth", b"x")), "-o", "{out}"], 2, "single .pth file"),
    "plain-pickle adapters, --trust-pickle": Probe(lambda d: ["run", str(_vol(d)), *TINY, "--trust-pickle",
                                                              "--adapter-weights", str(_pickle_adapters(d)),
                                                              "-o", "{out}"], 2, "not a torch checkpoint"),
    "threshold nan": Probe(_run("--threshold", "nan"), 2, "threshold=nan"),
    "batch size 0": Probe(_run("--batch-size", "0"), 2, "--batch-size"),
    "precision fp8": Probe(_run("--precision", "fp8"), 2, "precision='fp8'"),
    "config missing": Probe(_run("--config", "/nonexistent.toml"), 2, "not found"),
    "config unknown key": Probe(lambda d: _run("--config", str(_write(d / "c.toml", "foo = 1\n")))(d), 2,
                                "Unknown key(s) ['foo']"),
    "unknown command": Probe(lambda d: ["runn"], 2, "Did you mean 'run'"),
    "missing argument": Probe(lambda d: ["run"], 2, "Missing argument"),
    "info on a missing path": Probe(lambda d: ["info", str(d / "nope")], 2, "no such file"),
    # batch
    "batch missing source": Probe(lambda d: ["batch", str(d / "nope"), *TINY, "-o", "{out}"], 2, "no such"),
    "batch empty folder": Probe(lambda d: (d / "e").mkdir() or ["batch", str(d / "e"), *TINY, "-o", "{out}"], 2,
                                "holds no"),
    "batch scheduler garbage": Probe(lambda d: ["batch", str(_vol(d)), *TINY, "--scheduler", "x", "-o", "{out}"],
                                     2,
                                     "tcp://HOST:PORT"),
    "batch over a finished cohort": Probe(lambda d: ["batch", str(_vol(d)), *TINY, "-o", str(_fake_run(d / "c"))],
                                          2, "--overwrite"),
    "batch, 2 of 3 cases fail": Probe(lambda d: ["batch", str(_cohort_two_bad(d)), *TINY, "-o", "{out}"], 3,
                                      "2 of 3 cases failed; see", "cases-failed"),
    # eval
    "eval, not a run folder": Probe(lambda d: ["eval", str(_vol(d).parent), "--labels", str(_vol(d)), "-o",
                                               "{out}"], 2, "no finished predictions"),  # fmt: skip
    "eval, labels match no case": Probe(lambda d: ["eval", str(_predictions(d)), "--labels",
                                                   str(_write(d / "l.csv", "case_id,mask,label\nzz,,1\n")), "-o",
                                                   "{out}"], 2, "No case id"),
    "eval, a float image as labels": Probe(lambda d: ["eval", str(_predictions(d)), "--labels",
                                                      str(_vol(d / "src")), "-o", "{out}"], 2, "non-integer"),
    "eval, float labels + --labels-threshold": Probe(lambda d: ["eval", str(_predictions(d)), "--labels",
                                                                str(_vol(d / "src")), "--labels-threshold", "50",
                                                                "-o", "{out}"], 0, "sheets:", "ok"),
    # train
    "train, missing data": Probe(lambda d: ["train", str(d / "nope"), "-o", "{out}"], 2, "no such"),
    "train -o a foreign folder": Probe(lambda d: ["train", str(_vol(d / "data").parent), "-o",
                                                  str(_write(d / "mine" / "a.txt", "x").parent)], 2,
                                       "not an aaclip-med output"),
    "train, volumes without masks": Probe(lambda d: ["train", str(_vol(d / "data").parent), *TINY[:4], "-o",
                                                     "{out}"], 2, "no mask paired"),
    # dubious input that runs: must say so
    "3x3x3 volume": Probe(lambda d: ["run", str(_vol(d, shape=(3, 3, 3))), *TINY, "-o", "{out}"], 0,
                          "voxels per slice", "warns"),
    "zero sform and pixdim": Probe(lambda d: ["run", str(_zero_geometry(d)), *TINY, "-o", "{out}"], 0,
                                   "voxel size is 0", "warns"),
    "constant volume": Probe(lambda d: ["run", str(_nifti(d / "c.nii.gz", np.full((24, 24, 3), 7, "f4"))), *TINY,
                                        "-o", "{out}"], 0, "no slice was scored", "warns"),
    "DICOM without FrameOfReferenceUID": Probe(lambda d: ["run", str(_series(d, frame_of_reference=False)), *TINY,
                                                          "-o", "{out}"], 0, "FrameOfReferenceUID", "warns"),
    # the CLI as documented
    "-q after the command": Probe(lambda d: ["run", str(_vol(d)), *TINY, "-o", "{out}", "-q"], 0, "outputs:",
                                  "ok"),
    "--version": Probe(lambda d: ["--version"], 0, "aaclip-med ", "ok"),
    "--no-seg on DICOM": Probe(lambda d: ["run", str(_series(d)), *TINY, "--no-seg", "-o", "{out}"], 0,
                               "outputs:", "ok"),
    "--overwrite an earlier run": Probe(lambda d: ["run", str(_vol(d)), *TINY, "--overwrite", "-o",
                                                   str(_run_tiny(d, _vol(d), d.parent / "old"))], 0, "outputs:",
                                        "ok"),
}  # fmt: skip

OUTCOMES: dict[str, str] = {}  # probe name -> what happened, for the tally


@pytest.mark.parametrize("name", list(PROBES))
def test_probe(tmp_path: Path, name: str) -> None:
    probe = PROBES[name]
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    args = [a.replace("{out}", str(out)) for a in probe.make(inputs)]
    before = file_hashes(inputs)
    result = runner.invoke(app, args)
    text = result.output.strip()
    OUTCOMES[name] = "traceback" if result.exception and not isinstance(result.exception, SystemExit) else ""
    assert "Traceback" not in text and not OUTCOMES[name], f"{result.exception!r}\n{text}"
    OUTCOMES[name] = "wrong exit code"
    assert result.exit_code == probe.code, text
    OUTCOMES[name] = "input modified"
    after = {k: v for k, v in file_hashes(inputs).items() if k in before}
    assert after == before  # files the probe's set-up made are never modified (earlier runs may be replaced)
    assert not list(tmp_path.rglob(".*.partial"))  # no staging folder left behind
    OUTCOMES[name] = "silent garbage"
    if probe.kind == "refusal":
        lines = text.splitlines()
        assert lines[-1].startswith("error: ") and probe.says in lines[-1], text
        assert not out.exists()
    elif probe.kind == "warns":
        warnings = json.loads((out / "qa.json").read_text())["warnings"]
        assert any(probe.says in w for w in warnings), warnings
        assert "QA warning" in text  # and the console says so
        assert (out / "heatmap.nii.gz").is_file() and (out / "mask.nii.gz").is_file()  # work is kept
    else:
        assert probe.says in text, text
    if name == "--no-seg on DICOM":
        assert not (out / "seg.dcm").exists()
    if name == "--overwrite an earlier run":
        assert json.loads((tmp_path / "old" / "run.json").read_text())["outputs"]
    OUTCOMES[name] = {"refusal": "clean refusal", "warns": "warned", "ok": "ok"}.get(probe.kind, probe.kind)


def test_probe_tally(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs last in this file: the counts for the closing note (when the probes ran in this session)."""
    if not OUTCOMES:
        pytest.skip("no probe ran in this session")
    counts: dict[str, int] = {}
    for outcome in OUTCOMES.values():
        counts[outcome or "traceback"] = counts.get(outcome or "traceback", 0) + 1
    with capsys.disabled():
        print(f"\nprobes: {len(OUTCOMES)} tried; " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    assert set(counts) <= {"clean refusal", "warned", "ok", "cases-failed"}, counts


def test_missing_input_is_refused_before_the_heavy_imports(tmp_path: Path) -> None:
    """`run /nonexistent` answered in well under 2 s (it took 7-14 s when torch was imported first)."""
    cmd = [sys.executable, "-m", "aaclip_med", "run", str(tmp_path / "nope"), "--model", "demo"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    seconds = time.perf_counter() - t0
    assert done.returncode == 2 and "no such file" in done.stderr, done.stderr
    assert seconds < 2.0, f"{seconds:.1f} s"
    assert not (tmp_path / "reports").exists()


def test_every_option_has_help_text() -> None:
    import typer.main

    group = typer.main.get_command(app)
    commands = dict(group.commands)  # type: ignore[attr-defined]
    commands.update({f"weights {k}": v for k, v in commands.pop("weights").commands.items()})
    missing = [f"{name} {p.name}" for name, cmd in commands.items() for p in cmd.params
               if p.param_type_name == "option" and not p.help]  # fmt: skip
    assert not missing


def test_random_weights_log_no_open_clip_note_and_one_format(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "aaclip_med", "run", str(_vol(tmp_path)), *TINY, "-o", str(tmp_path / "o")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "No pretrained weights" not in done.stderr  # we asked for random weights: no note about it
    logs = [line for line in done.stderr.splitlines() if line.split(" ", 1)[0] in ("INFO", "WARNING", "ERROR")]
    assert logs and all(": " in line and ".py:" not in line for line in logs), done.stderr  # no file:line form
    assert ".partial" not in done.stderr  # no vanished temporary path named


def test_train_reads_the_folder_layouts_batch_reads(tmp_path: Path) -> None:
    from aaclip_med.training.layouts import discover_folder

    for case in ("a", "b"):
        _vol(tmp_path / case, f"{case}_flair.nii.gz")
        _nifti(tmp_path / case / f"{case}_seg.nii.gz", np.zeros((24, 24, 3), "u1"))
    cases = discover_folder(tmp_path)
    assert [c.case_id for c in cases] == ["a_flair", "b_flair"] and all(c.mask is not None for c in cases)


@pytest.mark.slow
def test_real_3dircadb_without_frame_of_reference_keeps_the_work(shared_dir: Path, tmp_path: Path) -> None:
    """3D-IRCADb's DICOM lacks FrameOfReferenceUID: the run used to fail after scoring and keep nothing."""
    zipped = shared_dir / "data/liver_3dircadb1_patient01/3Dircadb1.1/PATIENT_DICOM.zip"
    if not zipped.is_file():
        pytest.skip(f"{zipped} is absent")
    out = tmp_path / "ircad"
    args = ["run", str(zipped), "--model", "demo", "--preset", "liver_ct", "--no-progress", "--overlays", "1",
            "--no-report", "-o", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    qa = json.loads((out / "qa.json").read_text())
    assert any("FrameOfReferenceUID" in w for w in qa["warnings"])
    assert {"heatmap.nii.gz", "mask.nii.gz", "slices.csv", "run.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "seg.dcm").exists() and not (out / "report.html").exists()
    shutil.rmtree(out)
