"""The command line as a user meets it: fast help, `info`, the README's main command, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from aaclip_med.cli import app
from aaclip_med.config import load_run_config
from tests.conftest import build_series, file_hashes

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "datasets" / "samples" / "hcc048_ct"
runner = CliRunner()


def _fails_cleanly(args: list[str], *, contains: str) -> str:
    result = runner.invoke(app, ["-q", *args])
    assert result.exit_code == 2, result.output
    out = result.output.strip()
    assert "Traceback" not in out and out.startswith("error: "), out
    assert len(out.splitlines()) == 1 and contains in out, out
    return out


def test_help_imports_no_heavy_packages() -> None:
    code = "import sys, aaclip_med.cli; print([m for m in ('torch', 'monai', 'open_clip') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert runner.invoke(app, ["--help"]).exit_code == 0


def test_info_describes_the_bundled_sample() -> None:
    result = runner.invoke(app, ["info", str(SAMPLE)])
    assert result.exit_code == 0, result.output
    for text in ("[512, 512, 16]", "LPS", "CT", "Recon 3: LIVER 2 PHASE", "0.7031"):
        assert text in result.output


def test_readme_main_command_on_the_bundled_sample(tmp_path: Path) -> None:
    before = file_hashes(SAMPLE)
    args = ["run", str(SAMPLE), "--model", "demo", "-o", str(tmp_path / "out"), "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "outputs:" in result.output and "volume score" in result.output
    for name in ("heatmap.nii.gz", "mask.nii.gz", "seg.dcm", "slices.csv", "qa.json", "run.json", "report.html"):
        assert (tmp_path / "out" / name).is_file(), name
    assert file_hashes(SAMPLE) == before
    qa = json.loads((tmp_path / "out" / "qa.json").read_text())
    assert qa["threshold_source"] == "checkpoint"  # the demo's threshold calibrated for the automatic 'ct' preset
    mask = np.asarray(nib.load(tmp_path / "out" / "mask.nii.gz").dataobj)
    assert 0 < mask.mean() < 0.01  # something is marked, not nothing and not the whole body
    assert "untrained" in result.output


def test_demo_has_a_threshold_for_every_preset() -> None:
    from aaclip_med import create_model
    from aaclip_med.presets import MODALITY_PRESETS

    model = create_model("demo", device="cpu")
    assert set(model.preset_thresholds) == set(MODALITY_PRESETS)
    assert model.preset_thresholds["brain_mri"] > -3.0  # not the F1-max value that marked the whole brain


def test_fractional_seg_flag_and_toml_key(tmp_path: Path) -> None:
    series = build_series(tmp_path / "series", rows=12, cols=10).folder
    out = tmp_path / "out"
    args = ["run", str(series), "--model", "demo", "--no-progress", "-o", str(out), "--fractional-seg"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert hd.seg.segread(out / "heatmap_seg.dcm").SegmentationType == "FRACTIONAL"
    assert not (out / "heatmap_pm.dcm").exists()
    cohort_out = tmp_path / "cohort"  # batch has the same DICOM export switches
    args = ["batch", str(series), "-o", str(cohort_out), "--model", "demo", "--no-progress", "--fractional-seg",
            "--parametric-map", "--min-component-mm3", "5"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (case,) = (cohort_out / "cases").iterdir()
    assert {"seg.dcm", "heatmap_seg.dcm", "heatmap_pm.dcm"} <= {p.name for p in case.iterdir()}
    assert '"min_component_mm3": 5.0' in (case / "run.json").read_text()
    toml = tmp_path / "run.toml"  # the same switch in a run config (NIfTI inputs: tests/test_pipeline.py)
    toml.write_text("[export]\nfractional_seg = true\n")
    assert load_run_config(toml).export.fractional_seg is True


@pytest.mark.parametrize(
    ("make", "contains"),
    [
        (lambda d: d / "missing.nii.gz", "no such"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "empty"),
        (lambda d: (d / "fake.dcm").write_text("not dicom") and d / "fake.dcm", "fake.dcm"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(tmp_path: Path, make, contains: str) -> None:
    path = make(tmp_path)
    _fails_cleanly(["run", str(path), "--model", "aaclip-tiny", "-o", str(tmp_path / "out")], contains=contains)
    assert not (tmp_path / "out").exists()


def test_bad_options_exit_2_and_write_nothing(tmp_path: Path) -> None:
    series = build_series(tmp_path / "series").folder
    out = str(tmp_path / "out")
    _fails_cleanly(["run", str(series), "--model", "aaclip-tinny", "-o", out], contains="mean 'aaclip-tiny'")
    _fails_cleanly(["run", str(series), "--preset", "liver-ct", "-o", out], contains="did you mean 'liver_ct'")
    adapters = str(tmp_path / "a.safetensors")
    _fails_cleanly(["run", str(series), "--model", "aaclip-tiny", "--adapter-weights", adapters, "-o", out],
                   contains="not found")  # fmt: skip
    _fails_cleanly(["run", str(series), "--model", "aaclip-vitl14-336", "--backbone-weights",
                    str(tmp_path / "ViT-L-14-336px.pt"), "-o", out], contains="three ways")  # fmt: skip
    _fails_cleanly(["run", str(series), "--model", "aaclip-tiny", "-o", str(series / "out")], contains="inside")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    _fails_cleanly(["run", str(series), "--model", "aaclip-tiny", "-o", str(blocker / "o")], contains="writable")
    assert not (tmp_path / "out").exists() and not (series / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_batch_with_failed_cases_exits_3(tmp_path: Path) -> None:
    src = tmp_path / "cohort"
    src.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        (src / name).write_text("not a nifti")
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.random((24, 24, 3), dtype=np.float32) * 100, np.eye(4)), src / "c.nii.gz")
    args = ["batch", str(src), "-o", str(tmp_path / "out"), "--model", "aaclip-tiny", "--image-size", "64",
            "--no-progress"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 3, result.output  # not 0: a script must notice; not 2: that means bad usage
    assert "2 of 3 cases failed; see" in result.output and "failures.csv" in result.output
    assert (tmp_path / "out" / "failures.csv").is_file()  # the failure sheet says why, per case
    assert (tmp_path / "out" / "run.json").is_file()  # the cohort sheets of the good case are written


def test_flags_lay_over_the_config_file(tmp_path: Path) -> None:
    from aaclip_med.cli_options import scoring_config

    toml = tmp_path / "run.toml"
    toml.write_text('preset = "liver_ct"\n[inference]\nthreshold = 3.0\n[export]\nfractional_seg = true\n')
    cfg = scoring_config(toml, threshold=None, fractional_seg=False, include_phi=True, precision="fp32")
    assert cfg.preset == "liver_ct" and cfg.inference.threshold == 3.0  # flags not given keep the file's values
    assert cfg.export.fractional_seg is True  # an unset switch never turns a setting off
    assert cfg.export.include_phi is True and cfg.inference.precision == "fp32"
    assert scoring_config(None, preset="brain_mri", batch_size=2).inference.batch_size == 2
