"""End-to-end `run_study`: geometry of the written maps, DICOM SEG, sheets, atomic output, no PHI, bad input."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from aaclip_med import report
from aaclip_med.config import ExportConfig, InferenceConfig, RunConfig
from aaclip_med.errors import OutputError
from aaclip_med.model.aaclip import SliceOutput
from aaclip_med.pipeline import run_study
from tests.conftest import build_series, file_hashes


class BrightnessModel:
    """Stands in for AACLIP: the map is the input's channel mean, so bright voxels are 'anomalous'.

    It makes the expected mask known exactly, which tests the slicing, resizing and stacking geometry.
    ``offset`` shifts the map and ``sign=-1`` makes dark voxels (air) the hottest: ``offset=-10`` gives
    all-negative raw maps, as trained AA-CLIP maps often are (the "not scored" rule must hold whatever the units).
    """

    untrained_backbone = True
    threshold = None
    threshold_presets: tuple[str, ...] = ()
    layout = SimpleNamespace(taps=(1, 2, 3, 4))

    def __init__(self, input_size: int, offset: float = 0.0, sign: float = 1.0) -> None:
        self.input_size = input_size
        self.offset = offset
        self.sign = sign

    def score_slices(self, x: torch.Tensor, preset: object) -> SliceOutput:
        maps = self.sign * x.float().mean(dim=1) + self.offset
        return SliceOutput(maps.amax(dim=(1, 2)), maps, torch.zeros(len(x)), None)

    def metadata(self) -> dict[str, object]:
        return {"model": "brightness-stub", "untrained_backbone": True}


class ShiftedBrightnessModel(BrightnessModel):
    """BrightnessModel with the map raised by 2, so the normalised heatmap (map / 4 levels) spans (0, 1)."""

    def score_slices(self, x: torch.Tensor, preset: object) -> SliceOutput:
        out = super().score_slices(x, preset)
        return SliceOutput(out.score + 2.0, out.maps + 2.0, out.det_score, None)


def _config(threshold: float | None, preset: str = "ct", **export: object) -> RunConfig:
    """A fixed HU window ('ct') keeps slices comparable, so only the bright block passes the threshold."""
    return RunConfig(
        preset=preset,
        inference=InferenceConfig(threshold=threshold, progress=False),
        export=ExportConfig(**export),
    )


def test_nifti_run_writes_maps_on_the_source_grid(nifti_path: Path, tmp_path: Path) -> None:
    before = file_hashes(nifti_path)
    out = run_study(nifti_path, tmp_path / "out", config=_config(1.0), model=BrightnessModel(32))
    src = nib.load(nifti_path)
    lesion = np.zeros(src.shape, bool)
    lesion[12:18, 14:20, 6:10] = True
    for name, dtype in (("heatmap.nii.gz", np.int16), ("mask.nii.gz", np.uint8)):  # heatmap: int16 + scl_slope
        img = nib.load(out.out_dir / name)
        assert img.shape == src.shape and img.get_data_dtype() == dtype
        np.testing.assert_allclose(img.affine, src.affine, atol=1e-4)
        np.testing.assert_allclose(img.get_qform(), src.affine, atol=1e-4)
        np.testing.assert_allclose(img.get_sform(), src.affine, atol=1e-4)
    mask = np.asarray(nib.load(out.out_dir / "mask.nii.gz").dataobj) > 0
    np.testing.assert_array_equal(mask, lesion)  # the mask overlays exactly the bright block
    assert file_hashes(nifti_path) == before  # input untouched
    assert not [p for p in (tmp_path).iterdir() if p.name.startswith(".")]  # no temp folder left


def test_run_folder_files_and_sheets(nifti_path: Path, tmp_path: Path) -> None:
    out = run_study(nifti_path, tmp_path / "out", config=_config(1.0, overlays=2), model=BrightnessModel(32))
    names = {p.name for p in out.out_dir.iterdir()}
    assert {
        "heatmap.nii.gz",
        "mask.nii.gz",
        "slices.csv",
        "qa.json",
        "run.json",
        "report.html",
        "overlays",
    } <= names
    assert "seg.dcm" not in names  # NIfTI input: no DICOM outputs
    with (out.out_dir / "slices.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == report.SLICE_COLUMNS and len(rows) == 16
    flagged = [int(r["slice"]) for r in rows if r["flagged"] == "True"]
    assert flagged == [6, 7, 8, 9]
    assert len(list((out.out_dir / "overlays").glob("*.png"))) == 2
    run = json.loads((out.out_dir / "run.json").read_text())
    assert run["config"]["preset"] == "ct" and run["untrained_backbone"] is True
    assert run["inputs"][0]["sha256"] == report.input_record(nifti_path)["sha256"]
    qa = json.loads((out.out_dir / "qa.json").read_text())
    assert qa["threshold_source"] == "flag" and qa["n_slices"] == 16
    html = (out.out_dir / "report.html").read_text()
    viewer = json.loads(html.split('<script type="application/json" id="viewer-data">')[1].split("</script>")[0])
    assert viewer["shape"][0] == 16
    assert viewer["scores"] == pytest.approx([float(r["score"]) for r in rows], rel=1e-6)
    assert viewer["windows"][0]["name"] == "as the model saw it" and viewer["threshold"] == 1.0
    assert str(nifti_path) not in html.split('id="provenance"')[0]  # no input path in the page above provenance


def test_dicom_run_writes_seg_on_source_instances_and_no_phi(tmp_path: Path) -> None:
    spec = build_series(tmp_path / "series", n=5, rows=12, cols=10)
    before = file_hashes(spec.folder)
    out = run_study(spec.folder, tmp_path / "out", config=_config(0.0), model=BrightnessModel(16))
    mask = np.asarray(nib.load(out.out_dir / "mask.nii.gz").dataobj)
    seg = hd.seg.segread(out.out_dir / "seg.dcm")
    uids = [pydicom.dcmread(f).SOPInstanceUID for f in spec.files]  # source files in k order
    frames = seg.get_pixels_by_source_instance(uids, segment_numbers=[1], ignore_spatial_locations=True)
    np.testing.assert_array_equal(frames[..., 0], np.transpose(mask, (2, 1, 0)))  # frame k = mask[:, :, k].T
    for path in out.out_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"Doe^Jane" not in data and b"PID-12345" not in data, path  # no PHI by default
    assert file_hashes(spec.folder) == before
    if shutil.which("dciodvfy"):
        result = subprocess.run(["dciodvfy", str(out.out_dir / "seg.dcm")], capture_output=True, text=True)
        errors = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.startswith("Error")]
        assert not errors


def test_dicom_run_writes_fractional_seg_of_the_normalised_heatmap(tmp_path: Path) -> None:
    spec = build_series(tmp_path / "series", n=5, rows=12, cols=10)
    config = _config(0.0, fractional_seg=True, parametric_map=True)
    out = run_study(spec.folder, tmp_path / "out", config=config, model=ShiftedBrightnessModel(16))
    assert out.files["fractional_seg"] == out.out_dir / "heatmap_seg.dcm"
    assert (out.out_dir / "heatmap_pm.dcm").is_file()
    heat = np.asarray(nib.load(out.out_dir / "heatmap.nii.gz").dataobj)
    seg = hd.seg.segread(out.out_dir / "heatmap_seg.dcm")
    assert seg.SegmentationType == "FRACTIONAL"
    uids = [pydicom.dcmread(f).SOPInstanceUID for f in spec.files]  # source files in k order
    frames = seg.get_pixels_by_source_instance(uids, segment_numbers=[1], ignore_spatial_locations=True)
    expected = np.clip(heat / len(BrightnessModel.layout.taps), 0.0, 1.0)
    assert 0.05 < expected.mean() < 0.95 and np.unique(np.round(expected * 255)).size > 10  # a real gradient
    np.testing.assert_allclose(frames[..., 0], np.transpose(expected, (2, 1, 0)), atol=1 / 255)
    data = (out.out_dir / "heatmap_seg.dcm").read_bytes()
    assert b"Doe^Jane" not in data and b"PID-12345" not in data  # no PHI by default
    if shutil.which("dciodvfy"):
        result = subprocess.run(["dciodvfy", str(out.out_dir / "heatmap_seg.dcm")], capture_output=True, text=True)
        assert not [ln for ln in (result.stdout + result.stderr).splitlines() if ln.startswith("Error")]


def test_nifti_run_ignores_dicom_only_heatmap_outputs(nifti_path: Path, tmp_path: Path) -> None:
    config = _config(1.0, fractional_seg=True, parametric_map=True)
    out = run_study(nifti_path, tmp_path / "out", config=config, model=BrightnessModel(32))
    assert not list(out.out_dir.glob("*.dcm")) and "fractional_seg" not in out.files
    run = json.loads((out.out_dir / "run.json").read_text())
    assert run["config"]["export"]["fractional_seg"] is True  # asked for, recorded, not applicable


def test_output_inside_input_is_refused_and_nothing_written(tmp_path: Path) -> None:
    spec = build_series(tmp_path / "series")
    with pytest.raises(OutputError, match="inside"):
        run_study(spec.folder, spec.folder / "out", config=_config(0.0), model=BrightnessModel(16))
    assert not (spec.folder / "out").exists()


def test_existing_foreign_folder_is_not_replaced(nifti_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not an aaclip-med output"):
        run_study(nifti_path, target, config=_config(1.0), model=BrightnessModel(32))
    assert (target / "notes.txt").read_text() == "keep me"


def test_rerun_is_refused_and_overwrite_replaces_only_our_files(nifti_path: Path, tmp_path: Path) -> None:
    first = run_study(nifti_path, tmp_path / "out", config=_config(1.0, overlays=3), model=BrightnessModel(32))
    (first.out_dir / "my_notes.txt").write_text("keep me")  # the user's own file beside the outputs
    (first.out_dir / "overlays" / "my_drawing.png").write_bytes(b"mine")
    with pytest.raises(OutputError, match="--overwrite"):
        run_study(nifti_path, tmp_path / "out", config=_config(50.0), model=BrightnessModel(32))
    assert json.loads((first.out_dir / "run.json").read_text())["threshold"] == 1.0  # untouched
    second = run_study(nifti_path, tmp_path / "out", config=_config(50.0, overlays=1), model=BrightnessModel(32),
                       overwrite=True)  # fmt: skip
    assert first.out_dir == second.out_dir
    assert not np.asarray(nib.load(second.out_dir / "mask.nii.gz").dataobj).any()
    assert (first.out_dir / "my_notes.txt").read_text() == "keep me"
    overlays = sorted(p.name for p in (first.out_dir / "overlays").iterdir())
    assert len(overlays) == 2 and "my_drawing.png" in overlays  # our 2 stale overlays gone, the user's kept
    run = json.loads((first.out_dir / "run.json").read_text())
    assert run["threshold"] == 50.0 and "my_notes.txt" not in run["outputs"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_interrupt_during_export_leaves_nothing(nifti_path: Path, tmp_path: Path, monkeypatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_case_html", boom)
    with pytest.raises(KeyboardInterrupt):
        run_study(nifti_path, tmp_path / "out", config=_config(1.0), model=BrightnessModel(32))
    assert list(tmp_path.iterdir()) == [nifti_path]  # neither the output nor its temporary folder
