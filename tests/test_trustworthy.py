"""Trustworthy volume results: the "not scored" rule, foreground-only scores and heat, one window per volume."""

from __future__ import annotations

import csv
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from aaclip_med.cohort import evaluate
from aaclip_med.config import ExportConfig, InferenceConfig, RunConfig
from aaclip_med.inference import score_volume
from aaclip_med.intensity import body_mask, foreground_mask, volume_window
from aaclip_med.io import read_volume
from aaclip_med.pipeline import run_study
from aaclip_med.presets import ForegroundRule, get_preset
from aaclip_med.report.overlays import _heat_rgba, volume_overlay_slices
from aaclip_med.transforms import slice_transform
from tests.conftest import build_series
from tests.test_pipeline import BrightnessModel

EMPTY = (0, 1, 10, 11)  # all-air slices: skipped, never scored
LESION = (5, 6)


def _ct_phantom() -> tuple[np.ndarray, np.ndarray]:
    """32x32x12 CT: air, a body with a lung hole, a bright table under it (joined by a thin bridge), a lesion."""
    rng = np.random.default_rng(0)
    data = np.full((32, 32, 12), -1000.0, np.float32)
    i, j = np.mgrid[:32, :32]
    body = ((i - 15) / 11.0) ** 2 + ((j - 13) / 9.0) ** 2 <= 1.0
    lung = ((i - 15) / 3.0) ** 2 + ((j - 13) / 3.0) ** 2 <= 1.0
    lesion = np.zeros(data.shape, bool)
    for k in range(2, 10):
        sl = np.where(body, 40.0 + rng.normal(0, 3, body.shape), -1000.0)
        sl[lung] = -800.0
        sl[:, 26:30] = 300.0  # the table: brighter than anything in the body
        sl[15, 22:26] = 40.0  # a 1-voxel bridge from the body to the table
        data[..., k] = sl
    lesion[17:21, 10:14, LESION[0] : LESION[-1] + 1] = True
    data[lesion] = 200.0
    return data, lesion


@pytest.fixture
def ct_case(tmp_path: Path) -> tuple[Path, Path]:
    data, lesion = _ct_phantom()
    affine = np.diag([-1.0, -1.0, 2.5, 1.0])
    image, mask = tmp_path / "phantom.nii.gz", tmp_path / "phantom_mask.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), image)
    nib.save(nib.Nifti1Image(lesion.astype(np.uint8), affine), mask)
    return image, mask


def _cfg(threshold: float, region: str = "foreground", **export: object) -> RunConfig:
    inference = InferenceConfig(threshold=threshold, progress=False, score_region=region)  # type: ignore[arg-type]
    return RunConfig(preset="ct", inference=inference, export=ExportConfig(**export))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_unscored_voxels_never_outrank_scored_ones_with_negative_maps(ct_case, tmp_path: Path) -> None:
    image, mask = ct_case
    model = BrightnessModel(16, offset=-10.0)  # every raw map value is negative
    out = run_study(image, tmp_path / "run", config=_cfg(-9.0, overlays=2), model=model)
    res = out.result
    assert res.scored_voxels is not None and res.heatmap[res.scored_voxels].max() < 0
    assert res.scored.tolist() == [k not in EMPTY for k in range(12)]
    stored = nib.load(out.out_dir / "heatmap.nii.gz")
    heat = np.asarray(stored.dataobj)
    unscored = ~res.scored_voxels
    assert heat[unscored].max() < heat[res.scored_voxels].min()  # the rule, on disk
    step = float(stored.dataobj.slope)  # int16 storage: one quantisation step (reports/README.md)
    assert np.allclose(heat[unscored], res.unscored_value, rtol=0, atol=step)
    rows = _rows(out.out_dir / "slices.csv")
    scores = np.array([float(r["score"]) for r in rows])
    assert scores[list(EMPTY)].max() < scores[[k for k in range(12) if k not in EMPTY]].min()
    ev = evaluate(out.out_dir, mask, tmp_path / "eval").sheets
    assert ev.cases[0]["pixel_auroc"] > 0.99  # empty slices at 0 (the old rule) rank above the lesion
    assert ev.summary[0]["image_auroc"] == pytest.approx(1.0)


def test_scores_mask_and_flags_live_inside_the_body(ct_case, tmp_path: Path) -> None:
    image, _ = ct_case
    model = BrightnessModel(16, offset=-10.0)
    res = run_study(image, tmp_path / "run", config=_cfg(-9.0), model=model).result
    flagged = np.flatnonzero(res.flagged).tolist()
    assert flagged == list(LESION)  # the table is brighter than the lesion, but outside the body
    assert res.mask[:, 26:30].sum() == 0
    rows = _rows(tmp_path / "run" / "slices.csv")
    assert [int(r["slice"]) for r in rows if r["flagged"] == "True"] == flagged
    assert all((r["flagged"] == "True") == (int(r["mask_voxels"]) > 0) for r in rows)
    # the reference's whole-image max (named option): the table now scores every body slice, and the mask agrees
    ref = run_study(image, tmp_path / "ref", config=_cfg(-9.0, "image"), model=model).result
    assert np.flatnonzero(ref.flagged).tolist() == list(range(2, 10))
    assert ref.mask[:, 26:30, 2:10].all()


def test_air_is_never_hot_in_overlays(ct_case, tmp_path: Path) -> None:
    image, _ = ct_case
    volume = read_volume(image)
    res = score_volume(BrightnessModel(16, offset=-10.0, sign=-1.0), volume, "ct",  # dark = hot: air is hottest
                       config=InferenceConfig(threshold=-11.0, progress=False))  # fmt: skip
    (item,) = volume_overlay_slices(volume, res, [5])
    body = body_mask(volume.get_slice(5) > -500)
    assert item.heat is not None and np.isnan(item.heat[~body]).all() and np.isfinite(item.heat[body]).all()
    assert (_heat_rgba(item.heat, (-12.0, -10.0), "inferno")[..., 3][~body] == 0).all()  # no colour in the air
    assert res.slice_scores[5] <= float(np.nanmax(item.heat)) + 1e-6


def test_ct_foreground_is_the_body_not_the_table() -> None:
    data, _ = _ct_phantom()
    fg = foreground_mask(data, get_preset("ct").foreground, slice_axis=2)
    sl = fg[..., 5]
    assert sl[15, 13]  # the lung (air inside the body) is body
    assert not sl[:, 26:30].any()  # the table is not, though a bridge touches it
    assert not fg[..., list(EMPTY)].any()
    tissue = foreground_mask(data, ForegroundRule("absolute", -500.0), slice_axis=2)  # without the body rule
    assert tissue[:, 26:30, 5].all()


def _two_slices() -> tuple[np.ndarray, np.ndarray]:
    """Two identical brain-like slices; the second has a bright lesion covering 6 % of the brain."""
    rng = np.random.default_rng(1)
    brain = rng.normal(100.0, 10.0, (40, 40)).astype(np.float32)
    vol = np.zeros((48, 48, 2), np.float32)  # zero background, like skull-stripped MRI
    vol[4:44, 4:44, 0] = brain
    vol[4:44, 4:44, 1] = brain
    lesion = np.zeros(vol.shape, bool)
    lesion[10:20, 10:20, 1] = True
    vol[lesion] = 400.0
    return vol, lesion


def test_one_window_per_volume_a_lesion_does_not_change_normal_tissue() -> None:
    vol, lesion = _two_slices()
    preset = get_preset("brain_mri")
    fg = foreground_mask(vol, preset.foreground)
    bounds = volume_window(vol, fg, preset.window)
    assert bounds is not None
    t = slice_transform(preset, 48)
    same, with_lesion = (t(vol[..., k], bounds).numpy() for k in (0, 1))
    normal = np.ones((48, 48), bool)
    normal[8:22, 8:22] = False  # away from the lesion and its resize halo
    np.testing.assert_array_equal(same[:, normal], with_lesion[:, normal])
    # the reference's per-image window (named preset) does change them: why it is for paper reproduction only
    r = slice_transform("reference", 48)
    assert np.abs(r(vol[..., 0]).numpy()[:, normal] - r(vol[..., 1]).numpy()[:, normal]).max() > 0.1


def test_window_bounds_are_recorded(tmp_path: Path) -> None:
    vol, _ = _two_slices()
    path = tmp_path / "brain.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    cfg = RunConfig(preset="brain_mri", inference=InferenceConfig(threshold=1.0, progress=False))
    out = run_study(path, tmp_path / "out", config=cfg, model=BrightnessModel(16))
    window = out.result.qa["window"]
    assert window["scope"] == "volume" and out.result.window == pytest.approx(tuple(window["bounds"]))
    lo, hi = np.percentile(vol[vol != 0], [0.5, 99.5])
    assert window["bounds"] == pytest.approx([lo, hi], rel=1e-6)
    import json

    run = json.loads((out.out_dir / "run.json").read_text())
    assert run["window"]["bounds"] == pytest.approx([lo, hi], rel=1e-6)


def test_dicom_map_exports_follow_the_rule(tmp_path: Path) -> None:
    spec = build_series(tmp_path / "series", n=5, rows=12, cols=10)
    config = RunConfig(preset="ct", inference=InferenceConfig(threshold=-9.0, progress=False),
                       export=ExportConfig(fractional_seg=True, parametric_map=True))  # fmt: skip
    out = run_study(spec.folder, tmp_path / "out", config=config, model=BrightnessModel(16, offset=-10.0))
    res = out.result
    assert res.scored_voxels is not None and not res.scored_voxels.all()  # air around the synthetic body
    pm = pydicom.dcmread(out.out_dir / "heatmap_pm.dcm")
    frames = pm.pixel_array  # the float map as it is, unscored voxels included (frame order: the SEG's below)
    np.testing.assert_array_equal(np.sort(frames.ravel()), np.sort(res.heatmap.ravel()))
    assert frames.min() == pytest.approx(res.unscored_value)
    seg = hd.seg.segread(out.out_dir / "heatmap_seg.dcm")
    uids = [pydicom.dcmread(f).SOPInstanceUID for f in spec.files]
    prob = seg.get_pixels_by_source_instance(uids, segment_numbers=[1], ignore_spatial_locations=True)[..., 0]
    unscored = np.transpose(~res.scored_voxels, (2, 1, 0))
    assert prob[unscored].max() <= prob[~unscored].min()  # unscored never above a scored voxel


def test_eval_applies_the_rule_to_older_run_folders(ct_case, tmp_path: Path) -> None:
    """Folders written before the rule (0 on skipped slices, no unscored_value in qa.json) are evaluated alike."""
    import json

    image, mask = ct_case
    out = run_study(image, tmp_path / "run", config=_cfg(-9.0), model=BrightnessModel(16, offset=-10.0)).out_dir
    new = evaluate(out, mask, tmp_path / "new").sheets.cases[0]["pixel_auroc"]
    heat_img = nib.load(out / "heatmap.nii.gz")
    heat = np.asarray(heat_img.dataobj).copy()
    heat[..., list(EMPTY)] = 0.0  # the old rule
    nib.save(nib.Nifti1Image(heat, heat_img.affine), out / "heatmap.nii.gz")
    qa = json.loads((out / "qa.json").read_text())
    del qa["unscored_value"]
    (out / "qa.json").write_text(json.dumps(qa))
    old = evaluate(out, mask, tmp_path / "old").sheets.cases[0]["pixel_auroc"]
    assert old == pytest.approx(new, abs=1e-3)


def test_score_region_flag(ct_case, tmp_path: Path) -> None:
    """`--score-region image` reaches the config; a bad value is one line and exit 2, nothing written."""
    import json

    from typer.testing import CliRunner

    from aaclip_med.cli import app

    image, _ = ct_case
    tiny = ["--model", "aaclip-tiny", "--backbone-weights", "random", "--image-size", "32", "--no-progress"]
    args = ["-q", "run", str(image), *tiny, "--score-region", "air", "-o", str(tmp_path / "x")]
    bad = CliRunner().invoke(app, args)
    assert bad.exit_code == 2 and "score_region='air'" in bad.output and len(bad.output.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    ok = CliRunner().invoke(app, ["-q", "run", str(image), *tiny, "--preset", "ct", "--score-region", "image",
                                  "-o", str(tmp_path / "y")])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "y" / "qa.json").read_text())["score_region"] == "image"


def test_training_slices_carry_their_volume_window(tmp_path: Path) -> None:
    """Training sees what inference sees: every slice of a volume gets the volume's one window."""
    from aaclip_med.manifest import Case
    from aaclip_med.training.data import load_items

    vol, lesion = _two_slices()
    image, mask = tmp_path / "brain.nii.gz", tmp_path / "brain_mask.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), image)
    nib.save(nib.Nifti1Image(lesion.astype(np.uint8), np.eye(4)), mask)
    items = load_items([Case("b", image, mask, split="train")], "brain_mri")
    preset = get_preset("brain_mri")
    expected = volume_window(vol, foreground_mask(vol, preset.foreground), preset.window)
    assert len(items) == 2 and all(it.window == pytest.approx(expected) for it in items)
