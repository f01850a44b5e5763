"""Bad input and bad flags, as a new user meets them: exit 2, one `error:` line, nothing written, input unchanged.

Every case fails before any slow work (model build, scoring), so the whole file runs in a few seconds.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from aaclip_med.cli import app
from tests.conftest import file_hashes

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "datasets" / "samples" / "hcc048_ct"
TINY = ["--model", "aaclip-tiny", "--backbone-weights", "random", "--image-size", "64", "--no-progress"]
runner = CliRunner()


def _nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def _volume(d: Path) -> Path:
    return _nifti(d / "vol.nii.gz", np.random.default_rng(0).random((12, 12, 4), dtype=np.float32) * 100)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _train_manifest(d: Path) -> Path:
    """Two volumes, one with a lesion mask: a manifest that passes every check before the model build."""
    mask = np.zeros((12, 12, 4), "u1")
    mask[4:8, 4:8, 1:3] = 1
    _nifti(d / "m1.nii.gz", mask)
    _nifti(d / "m0.nii.gz", np.zeros_like(mask))
    _volume(d)
    return _write(d / "m.csv", "case_id,image,mask\na,vol.nii.gz,m1.nii.gz\nb,vol.nii.gz,m0.nii.gz\n")


def _truncated_dicom(d: Path) -> Path:
    data = sorted(SAMPLE.glob("*.dcm"))[0].read_bytes()
    (d / "cut.dcm").write_bytes(data[: len(data) // 2])
    return d / "cut.dcm"


def _fails_cleanly(args: list[str], tmp_path: Path, contains: str) -> None:
    before = file_hashes(tmp_path)
    result = runner.invoke(app, ["-q", *args])
    out = result.output.strip()
    assert result.exit_code == 2, out
    assert "Traceback" not in out and out.startswith("error: ") and len(out.splitlines()) == 1, out
    assert contains in out, out
    assert not (tmp_path / "out").exists()
    assert file_hashes(tmp_path) == before  # no input changed, no hidden temp folder left


Make = Callable[[Path], list[str]]

CASES: dict[str, tuple[Make, str]] = {
    # inputs
    "all-NaN volume": (lambda d: ["run", str(_nifti(d / "nan.nii.gz", np.full((8, 8, 3), np.nan, "f4")))],
                       "no finite voxel"),
    "truncated DICOM": (lambda d: ["run", str(_truncated_dicom(d))], "truncated"),
    # flags: one line, not click's usage box
    "batch size 0": (lambda d: ["run", str(_volume(d)), "--batch-size", "0"], "--batch-size"),
    "image size 31": (lambda d: ["run", str(_volume(d)), "--image-size", "31"], "--image-size"),
    "missing argument": (lambda d: ["run"], "Missing argument"),
    "unknown command": (lambda d: ["runn"], "Did you mean 'run'"),
    # values checked before the model is built
    "threshold nan": (lambda d: ["run", str(_volume(d)), "--threshold", "nan"], "threshold=nan"),
    "threshold inf": (lambda d: ["run", str(_volume(d)), "--threshold", "inf"], "threshold=inf"),
    "image size huge": (lambda d: ["run", str(_volume(d)), "--image-size", "100000"], "32..2048"),
    "device cuda": (lambda d: ["run", str(_volume(d)), "--device", "cuda:7"], "--device cpu"),
    "device foo": (lambda d: ["run", str(_volume(d)), "--device", "foo"], "device='foo'"),
    "precision fp8": (lambda d: ["run", str(_volume(d)), "--precision", "fp8"], "precision='fp8'"),
    # run configs
    "config is a folder": (lambda d: ["run", str(_volume(d)), "--config", str(d)], "not a readable TOML"),
    "config unknown key": (
        lambda d: ["run", str(_volume(d)), "--config", str(_write(d / "c.toml", "foo = 1\n"))],
        "c.toml: Unknown key(s) ['foo'] in the top level",
    ),
    # batch
    "scheduler garbage": (lambda d: ["batch", str(_volume(d)), "--scheduler", "garbage"], "tcp://HOST:PORT"),
    "scheduler refused": (lambda d: ["batch", str(_volume(d)), "--scheduler", "tcp://127.0.0.1:1"], "reach"),
    "scheduler unknown host": (lambda d: ["batch", str(_volume(d)), "--scheduler", "tcp://no-such-host.invalid:8786"],
                               "reach"),
    "batch threshold nan": (lambda d: ["batch", str(_volume(d)), "--threshold", "nan"], "threshold=nan"),
    # train
    "train stage1 levels": (lambda d: ["train", str(_train_manifest(d)), "--stage1-levels", "x"], "stage1_levels"),
    "train on a volume, not a manifest": (lambda d: ["train", str(_volume(d))], "not a CSV text file"),
    "train device": (lambda d: ["train", str(_train_manifest(d)), "--device", "cuda:7"], "--device cpu"),
    "train int8": (lambda d: ["train", str(_train_manifest(d)), "--precision", "int8"], "precision='int8'"),
    "train size": (lambda d: ["train", str(_train_manifest(d)), "--image-size", "4096"], "image_size=4096"),
    "train config key": (lambda d: ["train", str(_train_manifest(d)), "--config",
                                    str(_write(d / "t.toml", "text_epoch = 2\n"))], "did you mean 'text_epochs'"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_or_flag_fails_in_one_line(tmp_path: Path, name: str) -> None:
    make, contains = CASES[name]
    args = make(tmp_path)
    if args[0] in ("run", "batch", "train") and len(args) > 1:
        args = [*args[:2], *TINY, *args[2:], "-o", str(tmp_path / "out")]
    _fails_cleanly(args, tmp_path, contains)


def test_precision_int8_is_listed_and_accepted(tmp_path: Path) -> None:
    for command in ("run", "batch"):
        assert "int8" in runner.invoke(app, [command, "--help"]).output, command
    out = tmp_path / "out"
    args = ["-q", "run", str(_volume(tmp_path)), *TINY, "--precision", "int8", "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert '"precision": "int8"' in (out / "run.json").read_text()


@pytest.mark.parametrize(
    ("labels", "contains"),
    [
        (lambda d: _nifti(d / "small.nii.gz", np.zeros((5, 5, 4), "u1")), "differs from the image"),
        (lambda d: d / "vol.nii.gz.txt", "no such file"),
        (lambda d: _write(d / "bad.nii.gz", "garbage"), "not a readable NIfTI"),
    ],
)
def test_eval_with_unusable_labels_fails(tmp_path: Path, run_output: Path, labels, contains: str) -> None:
    pred = tmp_path / "pred"
    shutil.copytree(run_output, pred)
    _fails_cleanly(["eval", str(pred), "--labels", str(labels(tmp_path)), "-o", str(tmp_path / "out")],
                   tmp_path, contains)  # fmt: skip
    assert not (pred / "evaluation").exists()


def test_failed_eval_leaves_no_folder_it_created(tmp_path: Path, run_output: Path) -> None:
    """A case found unusable during the evaluation (inside the staging): no `new/deeper/` parent is left behind."""
    pred = tmp_path / "pred"
    shutil.copytree(run_output, pred)
    (tmp_path / "kept").mkdir()  # an existing empty parent is the user's: it stays
    labels = _nifti(tmp_path / "small.nii.gz", np.zeros((5, 5, 4), "u1"))
    before = sorted(tmp_path.rglob("*"))
    for out in (tmp_path / "new" / "deeper" / "out", tmp_path / "kept" / "deeper" / "out"):
        _fails_cleanly(["eval", str(pred), "--labels", str(labels), "-o", str(out)], tmp_path,
                       "Nothing could be evaluated")  # fmt: skip
        assert sorted(tmp_path.rglob("*")) == before, out  # folders included


@pytest.fixture(scope="module")
def run_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny run on a 12x12x4 volume (about a second)."""
    d = tmp_path_factory.mktemp("run")
    result = runner.invoke(app, ["-q", "run", str(_volume(d)), *TINY, "-o", str(d / "out")])
    assert result.exit_code == 0, result.output
    return d / "out"
