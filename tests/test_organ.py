"""Organ masks: scoring inside the organ (``--organ-mask``), grid refusal, DICOM mask series, manifests, eval."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aaclip_med.cli import app
from aaclip_med.cohort import evaluate, run_cohort
from aaclip_med.config import ExportConfig, InferenceConfig, RunConfig
from aaclip_med.errors import ConfigError, GeometryError
from aaclip_med.io import read_volume
from aaclip_med.organ import read_organ_mask
from aaclip_med.pipeline import run_study
from aaclip_med.privacy import Naming
from tests.conftest import build_series
from tests.test_pipeline import BrightnessModel

AFFINE = np.diag([-1.0, -1.0, 2.5, 1.0])
ORGAN_SLICES = range(3, 9)  # slices 0-2 and 9-11 hold no organ
BLOB_SLICES = (5, 10)  # a bright blob outside the organ: on a slice with organ and on one without
LESION_SLICE = 6
TINY = ("--model", "aaclip-tiny", "--image-size", "64")  # random model; the CLI tests check files, not numbers


def _phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """32x32x12 CT: body (40 HU), an organ inside it, a bright blob (300 HU) outside the organ, a lesion inside."""
    data = np.full((32, 32, 12), -1000.0, np.float32)
    i, j = np.mgrid[:32, :32]
    body = ((i - 15) / 13.0) ** 2 + ((j - 15) / 13.0) ** 2 <= 1.0
    data[body] = 40.0
    organ = np.zeros(data.shape, bool)
    organ[8:18, 8:20, ORGAN_SLICES.start : ORGAN_SLICES.stop] = True
    blob = np.zeros(data.shape, bool)
    for k in BLOB_SLICES:
        blob[20:25, 18:23, k] = True
    data[blob] = 300.0
    lesion = np.zeros(data.shape, bool)
    lesion[11:15, 12:16, LESION_SLICE] = True
    data[lesion] = 200.0
    return data, organ, blob


@pytest.fixture
def case(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    data, organ, blob = _phantom()
    image, organ_path = tmp_path / "ct.nii.gz", tmp_path / "liver.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), image)
    nib.save(nib.Nifti1Image(organ.astype(np.uint8), AFFINE), organ_path)
    return image, organ_path, blob


def _cfg(**inference: object) -> RunConfig:
    inf = InferenceConfig(threshold=1.0, progress=False, **inference)  # type: ignore[arg-type]
    return RunConfig(preset="ct", inference=inf, export=ExportConfig(overlays=2))


def test_bright_blob_outside_the_organ_is_flagged_without_mask_and_not_with_it(case, tmp_path: Path) -> None:
    image, organ_path, blob = case
    model = BrightnessModel(32)
    plain = run_study(image, tmp_path / "plain", config=_cfg(), model=model).result
    assert plain.mask[blob].all()  # without an organ mask the blob is the hottest thing in the body
    assert plain.flagged[list(BLOB_SLICES)].all()

    out = run_study(image, tmp_path / "organ", config=_cfg(), model=model, organ_mask=organ_path)
    res = out.result
    organ = np.asarray(nib.load(organ_path).dataobj) > 0
    assert not res.mask[blob].any() and not res.mask[~organ].any()
    assert res.scored.tolist() == [k in ORGAN_SLICES for k in range(12)]  # slices without organ: not scored
    assert res.flagged.tolist() == [k == LESION_SLICE for k in range(12)]  # the lesion inside still is
    assert np.all(res.heatmap[~organ] == np.float32(res.unscored_value))
    assert res.heatmap[organ].min() > res.unscored_value
    assert np.all(res.slice_scores[~res.scored] == np.float32(res.unscored_value))
    assert res.score == pytest.approx(float(res.heatmap[organ].max()), abs=1e-6)  # volume score from inside
    assert res.score < plain.score  # the blob set the score before
    run = json.loads((out.out_dir / "run.json").read_text())
    assert run["organ_mask"]["voxels"] == int(organ.sum()) and run["organ_mask"]["reoriented"] is False
    assert [i["path"] for i in run["inputs"]] == [Naming().path(image), Naming().path(organ_path)]  # hashed names
    assert run["organ_mask"]["path"] == Naming().path(organ_path)
    assert json.loads((out.out_dir / "qa.json").read_text())["score_region"] == "organ"
    written = np.asarray(nib.load(out.out_dir / "organ_mask.nii.gz").dataobj)
    assert np.array_equal(written > 0, organ)


class _InputRecorder(BrightnessModel):
    def __init__(self, input_size: int) -> None:
        super().__init__(input_size)
        self.inputs: list[torch.Tensor] = []

    def score_slices(self, x: torch.Tensor, preset: object):  # type: ignore[no-untyped-def]
        self.inputs.append(x.clone())
        return super().score_slices(x, preset)


def test_mask_outside_organ_blanks_the_input_and_is_recorded(case, tmp_path: Path) -> None:
    image, organ_path, _ = case
    grey = (0.95 - 0.45) / 0.27  # model input of grey 0.95: the blob (1.0) lies above, the lesion (0.9) below
    for masked in (False, True):
        model = _InputRecorder(32)
        out = run_study(image, tmp_path / f"m{masked}", config=_cfg(mask_outside_organ=masked), model=model,
                        organ_mask=organ_path)  # fmt: skip
        brightest = float(torch.cat(model.inputs).mean(dim=1).max())
        assert (brightest < grey) is masked  # the blob on slice 5 reaches the model only without masking
        run = json.loads((out.out_dir / "run.json").read_text())
        assert run["config"]["inference"]["mask_outside_organ"] is masked
    with pytest.raises(ConfigError, match="needs an organ mask"):
        run_study(image, tmp_path / "none", config=_cfg(mask_outside_organ=True), model=BrightnessModel(32))
    assert not (tmp_path / "none").exists()


def test_mask_on_another_grid_is_refused_in_one_line_and_nothing_is_written(case, tmp_path: Path) -> None:
    image, organ_path, _ = case
    organ = np.asarray(nib.load(organ_path).dataobj)
    shifted, cropped = tmp_path / "shifted.nii.gz", tmp_path / "cropped.nii.gz"
    moved = AFFINE.copy()
    moved[0, 3] = 2.0
    nib.save(nib.Nifti1Image(organ, moved), shifted)
    nib.save(nib.Nifti1Image(organ[:, :, :10], AFFINE), cropped)
    for bad, words in ((shifted, "differ by up to 2 mm"), (cropped, "shape [32, 32, 10]")):
        out = tmp_path / f"out_{bad.name}"
        res = CliRunner().invoke(app, ["run", str(image), "-o", str(out), *TINY, "--organ-mask", str(bad),
                                       "--no-progress"])  # fmt: skip
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and str(bad) in lines[0] and str(image) in lines[0] and words in lines[0]
        assert "Traceback" not in res.output
        assert not out.exists() and not any(p.name.startswith(".out_") for p in tmp_path.iterdir())


def test_same_grid_in_another_axis_order_is_reoriented_without_interpolation(case, tmp_path: Path) -> None:
    image, organ_path, _ = case
    organ = np.asarray(nib.load(organ_path).dataobj)
    flipped_path = tmp_path / "flipped.nii.gz"
    flip = np.array([[1, -1], [0, 1], [2, 1]])  # i reversed: the voxel centres are those of the image
    from nibabel import orientations as ornt

    aff = AFFINE @ ornt.inv_ornt_aff(flip, organ.shape)
    nib.save(nib.Nifti1Image(ornt.apply_orientation(organ, flip), aff), flipped_path)
    got = read_organ_mask(flipped_path, read_volume(image))
    assert got.reoriented and np.array_equal(got.mask, organ > 0)


def test_label_map_with_organ_label(case, tmp_path: Path) -> None:
    image, organ_path, _ = case
    labels = np.asarray(nib.load(organ_path).dataobj).astype(np.int16) * 5  # TotalSegmentator --ml: liver = 5
    labels[0:4, 0:4, :] = 2
    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, AFFINE), path)
    vol = read_volume(image)
    assert np.array_equal(read_organ_mask(path, vol, label=5).mask, labels == 5)
    assert read_organ_mask(path, vol).mask.sum() == np.count_nonzero(labels)
    with pytest.raises(ConfigError, match="no voxel of label 7"):
        read_organ_mask(path, vol, label=7)


def test_structure_of_a_totalsegmentator_folder(case, tmp_path: Path) -> None:
    image, organ_path, _ = case
    seg = tmp_path / "seg"
    seg.mkdir()
    organ = np.asarray(nib.load(organ_path).dataobj)
    for name, arr in (("liver", organ), ("spleen", np.roll(organ, 5, axis=0))):
        nib.save(nib.Nifti1Image(arr, AFFINE), seg / f"{name}.nii.gz")
    vol = read_volume(image)
    assert np.array_equal(read_organ_mask(seg, vol, organ="liver").mask, organ > 0)
    with pytest.raises(ConfigError, match="found: liver, spleen"):
        read_organ_mask(seg, vol, organ="kidney")
    with pytest.raises(ConfigError, match="is one file"):
        read_organ_mask(seg / "liver.nii.gz", vol, organ="liver")


def test_dicom_mask_series_per_structure_folder_and_zip(tmp_path: Path) -> None:
    """The 3D-IRCADb layout: MASKS_DICOM/<structure>/ series on the CT grid, as a folder and as a zip."""
    geometry = {"n": 8, "rows": 7, "cols": 9}
    build_series(tmp_path / "ct", **geometry)
    build_series(tmp_path / "MASKS_DICOM" / "liver", **geometry, seed=1)  # HU > 0 on slices 6 and 7
    build_series(tmp_path / "MASKS_DICOM" / "bone", **geometry, seed=2)
    archive = tmp_path / "MASKS_DICOM.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((tmp_path / "MASKS_DICOM").rglob("*.dcm")):
            zf.write(f, f.relative_to(tmp_path).as_posix())
    ct = read_volume(tmp_path / "ct")
    for source in (tmp_path / "MASKS_DICOM", archive):
        got = read_organ_mask(source, ct, organ="liver")
        assert np.array_equal(got.mask, ct.data > 0) and got.mask.any()
        with pytest.raises(ConfigError, match="several mask series; choose one with --organ NAME"):
            read_organ_mask(source, ct)


def test_ircadb_liver_mask_series_read_from_the_zip(shared_dir: Path) -> None:
    root = shared_dir / "data" / "liver_3dircadb1_patient01"
    if not (root / "3Dircadb1.1" / "MASKS_DICOM.zip").is_file():
        pytest.skip(f"3D-IRCADb patient 1 is absent from {root}")
    ct = read_volume(root / "3Dircadb1.1" / "PATIENT_DICOM.zip")
    liver = read_organ_mask(root / "3Dircadb1.1" / "MASKS_DICOM.zip", ct, organ="liver")
    with (root / "slice_labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    per_slice = liver.mask.sum(axis=(0, 1))
    assert per_slice.tolist() == [int(r["liver_px"]) for r in sorted(rows, key=lambda r: int(r["index"]))]
    assert not liver.reoriented and liver.record(ct.spacing)["voxels"] == int(per_slice.sum())


def test_batch_manifest_organ_mask_column_and_eval_uses_the_runs_organ(case, tmp_path: Path) -> None:
    image, organ_path, blob = case
    lesion = np.zeros(blob.shape, np.uint8)
    lesion[11:15, 12:16, LESION_SLICE] = 1
    nib.save(nib.Nifti1Image(lesion, AFFINE), tmp_path / "lesion.nii.gz")
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(f"case_id,image,organ_mask\nwith,{image.name},{organ_path.name}\nwithout,{image.name},\n")
    res = run_cohort(manifest, tmp_path / "out", config=_cfg(), model=BrightnessModel(32), progress=False)
    assert res.n_done == 2 and not res.failures
    cases = tmp_path / "out" / "cases"
    assert json.loads((cases / "with" / "qa.json").read_text())["score_region"] == "organ"
    assert [(cases / c / "organ_mask.nii.gz").is_file() for c in ("with", "without")] == [True, False]
    flagged = {r["case_id"]: int(r["n_flagged"]) for r in res.cases}
    assert flagged == {"with": 1, "without": 3}  # the blob's two slices are flagged only without the organ mask

    labels = tmp_path / "labels.csv"
    labels.write_text(f"case_id,image,mask\nwith,{image},lesion.nii.gz\n")  # image: the run recorded a hash
    ev = evaluate(cases / "with", labels, tmp_path / "ev")
    regions = {(r["map"], r["region"]) for r in ev.sheets.summary}
    assert {("model", "organ"), ("intensity", "organ"), ("intensity_deviation", "organ")} <= regions
    organ_row = next(r for r in ev.sheets.summary if (r["map"], r["region"]) == ("model", "organ"))
    assert organ_row["pixel_auroc"] == pytest.approx(1.0)


def test_cli_batch_reads_the_organ_mask_column(case, tmp_path: Path) -> None:
    image, organ_path, _ = case
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(f"case_id,image,organ_mask\nct,{image.name},{organ_path.name}\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["batch", str(manifest), "-o", str(out), *TINY, "--preset", "ct",
                                   "--mask-outside-organ", "--no-progress"])  # fmt: skip
    assert res.exit_code == 0, res.output
    run = json.loads((out / "cases" / "ct" / "run.json").read_text())
    organ_record = run["organ_mask"]["path"]
    assert organ_record == run["inputs"][1]["path"] and "liver" not in organ_record  # names hashed by default
    assert run["config"]["inference"]["mask_outside_organ"]
    slices = list(csv.DictReader((out / "cases" / "ct" / "slices.csv").open()))
    assert [r["scored"] for r in slices] == [str(k in ORGAN_SLICES) for k in range(12)]


def test_geometry_error_from_score_volume_on_a_wrong_shape(case) -> None:
    from aaclip_med.inference import score_volume

    image, _, _ = case
    with pytest.raises(GeometryError, match="differs from the grid"):
        score_volume(BrightnessModel(32), read_volume(image), "ct", organ=np.ones((2, 2, 2), bool),
                     config=InferenceConfig(progress=False))  # fmt: skip


def test_training_manifest_organ_mask_keeps_organ_slices_only(case, tmp_path: Path) -> None:
    from aaclip_med.manifest import read_manifest
    from aaclip_med.training.data import load_items

    image, organ_path, _ = case
    manifest = tmp_path / "train.csv"
    manifest.write_text(f"case_id,image,organ_mask,split\nct,{image.name},{organ_path.name},train\n"
                        f"plain,{image.name},,train\n")  # fmt: skip
    items = load_items(read_manifest(manifest), "ct")
    kept = {cid: [i.slice_index for i in items if i.case_id == cid] for cid in ("ct", "plain")}
    assert kept["ct"] == list(ORGAN_SLICES) and len(kept["plain"]) == 12


def test_organ_without_organ_mask_is_refused(case, tmp_path: Path) -> None:
    image, _, _ = case
    res = CliRunner().invoke(app, ["run", str(image), "-o", str(tmp_path / "o"), *TINY, "--organ", "liver"])
    assert res.exit_code == 2 and "pass --organ-mask" in res.output and not (tmp_path / "o").exists()


def test_organ_mask_evidence_script_table_and_missing_data(tmp_path: Path) -> None:
    import argparse
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "organ_mask_evidence.py"
    spec = importlib.util.spec_from_file_location("organ_mask_evidence", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    record = {"runs": {"demo_liver": {"n_scored_slices": 98, "metrics": {
        "model/organ": {"pixel_auroc": 0.5, "pixel_ap": 0.25}}}}}  # fmt: skip
    row = bench._table(record).splitlines()[-1]
    assert row.startswith("| demo_liver | 98 |") and "0.500 / 0.250" in row and "–" in row
    args = argparse.Namespace(data=tmp_path, work=tmp_path / "w", image_size=224)
    with pytest.raises(SystemExit, match="3D-IRCADb patient 1 not found"):
        bench.run(args)
