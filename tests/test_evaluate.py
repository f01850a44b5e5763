"""`evaluate` / `aaclip-med eval`: sheets from run folders against masks, normalisation, errors."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from aaclip_med import create_model
from aaclip_med.cohort import evaluate
from aaclip_med.errors import ManifestError
from aaclip_med.metrics import SLICE_METRIC_COLUMNS
from aaclip_med.pipeline import run_study
from tests.test_pipeline import BrightnessModel, _config


@pytest.fixture
def scored(nifti_path: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A run folder of the bright-block volume and the block's reference mask."""
    out = run_study(nifti_path, tmp_path / "run", config=_config(1.0), model=BrightnessModel(32))
    img = nib.load(nifti_path)
    ref = np.zeros(img.shape, np.uint8)
    ref[12:18, 14:20, 6:10] = 1
    mask = tmp_path / "lesion_mask.nii.gz"
    nib.save(nib.Nifti1Image(ref, img.affine), mask)
    return out.out_dir, mask


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_perfect_prediction_scores_one(scored: tuple[Path, Path]) -> None:
    run_dir, mask = scored
    res = evaluate(run_dir, mask)
    assert res.out_dir == run_dir / "evaluation"
    for name in ("slice_metrics.csv", "cases.csv", "summary.csv", "summary.json", "report.html"):
        assert (res.out_dir / name).is_file(), name
    (case,) = _rows(res.out_dir / "cases.csv")
    assert float(case["pixel_auroc"]) == pytest.approx(1.0)
    assert float(case["dice"]) == pytest.approx(1.0) and case["lesions_detected"] == "1"
    summary = _rows(res.out_dir / "summary.csv")
    head = ["preset", "map", "region", "pixel_auroc", "pixel_ap", "image_auroc", "image_ap"]
    assert list(summary[0])[:7] == head
    assert (summary[0]["map"], summary[0]["region"]) == ("model", "all")  # the peer-paper row comes first
    assert float(summary[0]["image_auroc"]) == pytest.approx(1.0)  # slices 6-9 outscore the others
    slices = _rows(res.out_dir / "slice_metrics.csv")
    assert tuple(slices[0]) == SLICE_METRIC_COLUMNS and len(slices) == 16
    assert [int(r["slice"]) for r in slices if r["label"] == "1.0"] == [6, 7, 8, 9]
    assert json.loads((res.out_dir / "summary.json").read_text())["normalisation"] == "none"


def test_set_normalisation_keeps_ranking_metrics(scored: tuple[Path, Path]) -> None:
    run_dir, mask = scored
    raw = evaluate(run_dir, mask, run_dir.parent / "raw").sheets
    norm = evaluate(run_dir, mask, run_dir.parent / "set", normalisation="set").sheets
    for key in ("pixel_auroc", "pixel_ap", "image_auroc"):
        assert norm.summary[0][key] == pytest.approx(raw.summary[0][key])
    assert norm.summary[0]["normalisation"] == "set"
    assert 0.0 <= norm.cases[0]["threshold_oracle"] <= 1.0  # thresholds move into [0, 1]


def test_manifest_labels_and_missing_mask_message(scored: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, mask = scored
    manifest = tmp_path / "labels.csv"
    manifest.write_text(f"case_id,mask,label\n{run_dir.name},{mask},1\n")  # a labels-only sheet
    assert evaluate(run_dir, manifest, tmp_path / "m").sheets.cases[0]["label"] == 1
    with pytest.raises(ManifestError, match="no such file"):
        evaluate(run_dir, tmp_path / "absent.nii.gz")
    with pytest.raises(ManifestError, match="no finished predictions"):
        evaluate(tmp_path / "labels.csv", mask)


def test_baselines_and_in_region_metrics_side_by_side(nifti_path: Path, tmp_path: Path) -> None:
    """A model that ranks the lesion last: the intensity baseline beats it, and the report says so in words."""
    run = run_study(nifti_path, tmp_path / "run", config=_config(-1.0), model=BrightnessModel(32, sign=-1.0))
    img = nib.load(nifti_path)
    ref, organ = np.zeros(img.shape, np.uint8), np.zeros(img.shape, np.uint8)
    ref[12:18, 14:20, 6:10] = 1
    organ[8:24, 8:24, 4:12] = 1
    for name, arr in (("mask", ref), ("organ", organ)):
        nib.save(nib.Nifti1Image(arr, img.affine), tmp_path / f"{name}.nii.gz")
    labels = tmp_path / "labels.csv"
    labels.write_text(f"case_id,mask,organ_mask\nrun,{tmp_path / 'mask.nii.gz'},{tmp_path / 'organ.nii.gz'}\n")
    hashed = evaluate(run.out_dir, labels, tmp_path / "hashed")  # run.json holds a hash of the input path
    assert {r["map"] for r in hashed.sheets.summary} == {"model"}
    assert "'image' column of the labels CSV" in hashed.sheets.cases[0]["baseline_reasons"]
    labels.write_text(
        f"case_id,image,mask,organ_mask\nrun,{nifti_path},{tmp_path / 'mask.nii.gz'},{tmp_path / 'organ.nii.gz'}\n"
    )
    res = evaluate(run.out_dir, labels, tmp_path / "eval")
    rows = {(r["map"], r["region"]): r for r in res.sheets.summary if r["preset"] == "ct"}
    assert set(rows) == {("model", "all"), ("model", "foreground"), ("model", "organ"), ("intensity", "all"),
                         ("intensity", "foreground"), ("intensity", "organ"), ("intensity_deviation", "organ")}
    assert rows[("intensity", "all")]["pixel_auroc"] == pytest.approx(1.0)
    assert rows[("model", "organ")]["pixel_auroc"] < 0.1  # inverted: the lesion ranks last inside the organ
    assert rows[("intensity_deviation", "organ")]["pixel_auroc"] == pytest.approx(1.0)
    case = res.sheets.cases[0]
    assert case["baseline_pixel_auroc"] == pytest.approx(1.0) and case["pixel_auroc_organ"] < 0.1
    beats = [v for v in res.sheets.verdicts if "BEATS the model" in v]
    assert len(beats) == 4 and any("inside the organ mask" in v for v in beats)
    summary = json.loads((res.out_dir / "summary.json").read_text())
    assert summary["verdicts"] == res.sheets.verdicts
    html = (res.out_dir / "report.html").read_text()
    assert "BEATS the model" in html and "intensity_deviation" in html


@pytest.mark.slow
def test_real_brats_case_full_report(shared_dir: Path, tmp_path: Path) -> None:
    """A real BRATS case with its expert mask, scored by the demo model: the sheet's numbers recomputed by hand.

    The oracles are independent of aaclip-med's metric code: scikit-learn's AUROC/AP on the written heatmap,
    numpy's Dice on the written mask, scipy's 26-connected components of the expert whole-tumour mask.
    """
    case = shared_dir / "data/brain_brats2015_deepmedic/brats2015TrainingData/test/brats_2013_pat0001_1"
    if not case.is_dir():
        pytest.skip(f"{case} is absent")
    model = create_model("demo")
    out = run_study(case / "Flair_subtrMeanDivStd.nii.gz", tmp_path / "run", config=_config(None, "brain_mri"),
                    model=model)  # fmt: skip
    res = evaluate(out.out_dir, case / "OTMultiClass.nii.gz")
    row = res.sheets.cases[0]
    ref = np.asarray(nib.load(case / "OTMultiClass.nii.gz").dataobj) > 0
    heat = np.asarray(nib.load(out.out_dir / "heatmap.nii.gz").dataobj, dtype=np.float64)
    pred = np.asarray(nib.load(out.out_dir / "mask.nii.gz").dataobj) > 0
    # the sheet bins maps into 10,000 levels: AUROC/AP agree with the exact values to about 1e-3
    assert row["pixel_auroc"] == pytest.approx(roc_auc_score(ref.ravel(), heat.ravel()), abs=2e-3)
    assert row["pixel_ap"] == pytest.approx(average_precision_score(ref.ravel(), heat.ravel()), abs=2e-3)
    dice = 2 * (ref & pred).sum() / (ref.sum() + pred.sum())
    assert row["dice"] == pytest.approx(dice, abs=1e-9)
    assert row["lesions_ref"] == ndimage.label(ref, structure=np.ones((3, 3, 3)))[1] >= 1
    html = (res.out_dir / "report.html").read_text()
    assert "untrained" in html.lower()  # the demo model is labelled as such


def test_mask_with_same_shape_but_other_grid_is_refused(scored: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, mask = scored
    img = nib.load(mask)
    shifted = tmp_path / "shifted.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine @ np.diag([2.0, 2.0, 2.0, 1.0])), shifted)
    with pytest.raises(ManifestError, match="affine"):
        evaluate(run_dir, shifted, tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_eval_command_imports_no_torch_monai_or_open_clip(scored: tuple[Path, Path], tmp_path: Path) -> None:
    """`aaclip-med eval` is numpy/scikit-learn work: it runs (in a fresh interpreter) without the scoring stack."""
    run_dir, mask = scored
    code = (
        "import sys\nfrom aaclip_med.cli import app\n"
        "app(sys.argv[1:], standalone_mode=False)\n"
        "print('heavy:', [m for m in ('torch', 'monai', 'open_clip') if m in sys.modules])"
    )
    args = ["eval", str(run_dir), "--labels", str(mask), "-o", str(tmp_path / "ev")]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "pixel_auroc 1.0000" in done.stdout and done.stdout.strip().endswith("heavy: []"), done.stdout
    assert (tmp_path / "ev" / "summary.csv").is_file()


def test_verdicts_say_when_neither_beats_chance() -> None:
    from aaclip_med.cohort.baselines import verdicts

    rows = [{"preset": "ct", "map": "model", "region": "organ", "pixel_auroc": 0.344},
            {"preset": "ct", "map": "intensity", "region": "organ", "pixel_auroc": 0.163}]  # fmt: skip
    (sentence,) = verdicts(rows)
    assert "neither the model nor" in sentence and "above chance" in sentence and "beats" not in sentence
    rows[0]["pixel_auroc"] = 0.7
    assert "the model beats" in verdicts(rows)[0]


def test_eval_pages_link_to_case_pages_with_the_reference_mask(
    scored: tuple[Path, Path], nifti_path: Path, tmp_path: Path
) -> None:
    """Links are relative and resolve on disk wherever -o puts the evaluation; the case page shows the mask."""
    from urllib.parse import unquote

    run_dir, mask = scored
    no_image = evaluate(run_dir, mask, tmp_path / "no_image")  # run.json holds a hash of the input: no page
    assert not (no_image.out_dir / "cases").exists()
    labels = tmp_path / "labels.csv"
    labels.write_text(f"case_id,image,mask\nrun,{nifti_path},{mask}\n")
    for out in (run_dir / "evaluation", tmp_path / "elsewhere" / "eval"):
        res = evaluate(run_dir, labels, out)
        html = (res.out_dir / "report.html").read_text()
        hrefs = [unquote(h) for h in re.findall(r'href="([^"]+)"', html)]
        assert hrefs == ["cases/run.html"]
        assert all(not h.startswith(("/", "file:")) and (res.out_dir / h).is_file() for h in hrefs)
        page = (res.out_dir / "cases" / "run.html").read_text()
        assert 'id="v-ref"' in page and 'id="viewer-data"' in page and "pixel_auroc" in page
