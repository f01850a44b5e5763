"""Cohorts: manifests, folder discovery, sharding, failures, resume after SIGKILL, and the cohort sheets."""

from __future__ import annotations

import csv
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from aaclip_med.cohort import run_cohort, shard
from aaclip_med.config import ExportConfig, InferenceConfig, RunConfig
from aaclip_med.discovery import discover
from aaclip_med.errors import ManifestError, OutputError
from aaclip_med.manifest import Case, read_manifest
from tests.conftest import build_series

SIZE = 96  # aaclip-tiny's smallest size whose patch grid (6x6) takes the 9x9 map blur
CONFIG = RunConfig(
    preset="mri",
    inference=InferenceConfig(model="aaclip-tiny", backbone_weights="random", image_size=SIZE, device="cpu",
                              precision="fp32", progress=False),
    export=ExportConfig(overlays=0, html=True),
)


def _write_nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0])), path)
    return path


def make_cohort(root: Path, n: int = 6, corrupt: str | None = "case_3") -> Path:
    """``n`` 32x32x8 MR-like volumes with masks (odd cases have a bright lesion) and a manifest; one corrupt."""
    (root / "img").mkdir(parents=True)
    (root / "lbl").mkdir()
    rows = []
    for i in range(n):
        cid = f"case_{i}"
        rng = np.random.default_rng(i)
        data = rng.normal(100, 5, (32, 32, 8)).astype(np.float32)
        mask = np.zeros(data.shape, np.uint8)
        if i % 2:
            data[10:18, 12:20, 2:6] = 400
            mask[10:18, 12:20, 2:6] = 1
        image = root / "img" / f"{cid}.nii.gz"
        if cid == corrupt:
            image.write_bytes(b"not a nifti file at all")
        else:
            _write_nifti(image, data)
        _write_nifti(root / "lbl" / f"{cid}.nii.gz", mask)
        rows.append(f"{cid},img/{cid}.nii.gz,lbl/{cid}.nii.gz,,,test")
    manifest = root / "manifest.csv"
    manifest.write_text("case_id,image,mask,label,preset,split\n" + "\n".join(rows) + "\n")
    return manifest


@pytest.fixture(scope="module")
def model():
    from aaclip_med.pipeline import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(CONFIG)


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    return make_cohort(tmp_path / "data")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# --- manifests ---------------------------------------------------------------------------------------------


def test_read_manifest_resolves_paths_and_alias(tmp_path: Path) -> None:
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "m.csv").write_text("case_id,path,label,preset,split\nA,a.nii.gz,1,brain_mri,test\n\n")
    (case,) = read_manifest(tmp_path / "m.csv")
    assert case == Case("A", tmp_path / "a.nii.gz", None, 1, "brain_mri", "test", None, "m.csv line 2")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("case_id,image\nA,a.nii.gz\nA,a.nii.gz\n", "repeats m.csv line 2"),
        ("case_id,image,label\nA,a.nii.gz,2\n", "label '2' is not 0 or 1"),
        ("case_id,image,modality\nA,a.nii.gz\n", "unknown column 'modality'"),
        ("case_id,image\nA,missing.nii.gz\n", "image .*missing.nii.gz' does not exist"),
        ("case_id,image,preset\nA,a.nii.gz,liver-ct\n", "did you mean 'liver_ct'"),
        ("case_id,image\n../x,a.nii.gz\n", "cannot name a folder"),
        ("case_id,image,path\nA,a.nii.gz,a.nii.gz\n", "exactly one of the columns"),
        ("case_id,image\n", "no rows"),
        ("", "is empty"),
    ],
)
def test_manifest_errors(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(ManifestError, match=match) as info:
        read_manifest(tmp_path / "m.csv")
    assert "\n" not in str(info.value)


def test_discover_nested_nifti_masks_and_dicom_series(tmp_path: Path) -> None:
    root = tmp_path / "data"
    vol = np.zeros((4, 4, 3), np.float32)
    for rel in ("sub-01/anat/sub-01_FLAIR.nii.gz", "sub-01/anat/sub-01_FLAIR_mask.nii.gz",
                "pat2/pat2_flair.nii.gz", "pat2/pat2_t1.nii.gz", "pat2/pat2_seg.nii.gz",
                "nn/imagesTr/liver_001_0000.nii.gz", "nn/labelsTr/liver_001.nii.gz",
                "other/lonely_label.nii.gz", ".hidden/x.nii.gz"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        _write_nifti(root / rel, vol)
    (root / "notes.txt").write_text("not an image")
    series = build_series(root / "ct" / "a", n=3)
    (root / "ct" / "b").mkdir()
    for f in series.files[1:]:  # one series spread over two sub-folders
        f.rename(root / "ct" / "b" / f.name)
    build_series(root / "mr", n=2, modality="MR", series_number=5, seed=1)
    build_series(root / "mr", n=2, modality="MR", series_number=6, seed=2)
    cases = {c.case_id: c for c in discover(root)}
    assert sorted(cases) == ["ct", "liver_001_0000", "mr_s5", "mr_s6", "pat2_flair", "pat2_t1", "sub-01_FLAIR"]
    assert cases["sub-01_FLAIR"].mask == root / "sub-01/anat/sub-01_FLAIR_mask.nii.gz"
    assert cases["pat2_flair"].mask == cases["pat2_t1"].mask == root / "pat2/pat2_seg.nii.gz"
    assert cases["liver_001_0000"].mask == root / "nn/labelsTr/liver_001.nii.gz"
    assert cases["ct"].image == root / "ct" and cases["ct"].series is None
    assert cases["mr_s5"].image == root / "mr" and cases["mr_s5"].series is not None


def test_discover_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="holds no NIfTI"):
        discover(tmp_path)


def test_shard_covers_every_case_once() -> None:
    cases = [Case(f"c{i:02d}", Path("x")) for i in (5, 3, 9, 0, 1, 7, 2)]
    parts = [shard(cases, 3, k) for k in range(3)]
    ids = [c.case_id for part in parts for c in part]
    assert sorted(ids) == sorted(c.case_id for c in cases) and len(set(ids)) == len(cases)
    assert [c.case_id for c in parts[0]] == ["c00", "c03", "c09"]
    with pytest.raises(ManifestError, match="part_id"):
        shard(cases, 2, 2)


# --- running -----------------------------------------------------------------------------------------------


def test_cohort_failure_row_and_sheets(cohort: Path, tmp_path: Path, model) -> None:
    out = tmp_path / "out"
    res = run_cohort(cohort, out, config=CONFIG, model=model, progress=False)
    assert (res.n_done, res.n_failed, res.n_skipped) == (5, 1, 0)
    (fail,) = _read_csv(out / "failures.csv")
    assert fail["case_id"] == "case_3" and fail["error"] == "UnsupportedFormatError" and fail["message"]
    rows = {r["case_id"]: r for r in _read_csv(out / "cases.csv")}
    assert rows["case_3"]["status"] == "failed" and rows["case_1"]["status"] == "done"
    assert float(rows["case_1"]["label"]) == 1.0 and float(rows["case_0"]["label"]) == 0.0
    assert 0.0 <= float(rows["case_1"]["pixel_auroc"]) <= 1.0 and rows["case_1"]["n_flagged"] != ""
    summary = _read_csv(out / "summary.csv")
    assert [(r["preset"], r["map"], r["region"]) for r in summary] == [
        ("mri", "model", "all"), ("mri", "model", "foreground"),
        ("mri", "intensity", "all"), ("mri", "intensity", "foreground"), ("Average", "model", "all"),
    ]  # fmt: skip
    assert float(summary[0]["n_cases"]) == 5 and summary[0]["pixel_auroc"] and summary[0]["volume_auroc"]
    for name in ("report.html", "run.json"):
        assert (out / name).is_file()
    for cid in ("case_0", "case_1", "case_2", "case_4", "case_5"):
        assert (out / "cases" / cid / "run.json").is_file() and (out / "cases" / cid / "heatmap.nii.gz").is_file()
    assert not (out / "cases" / "case_3").exists()
    assert not [p for p in (out / "cases").iterdir() if p.name.startswith(".")]


def test_refuses_foreign_output_folder(cohort: Path, tmp_path: Path, model) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.docx").write_text("x")
    with pytest.raises(OutputError, match="not an aaclip-med output folder"):
        run_cohort(cohort, out, config=CONFIG, model=model, progress=False)


def test_refuses_output_inside_or_over_the_data(cohort: Path, tmp_path: Path, model) -> None:
    before = sorted(p.name for p in cohort.parent.iterdir())
    with pytest.raises(OutputError, match="never go inside or over the input"):
        run_cohort(cohort.parent, cohort.parent / "reports", config=CONFIG, model=model, progress=False)
    assert sorted(p.name for p in cohort.parent.iterdir()) == before


def test_sharded_parts_then_assemble(cohort: Path, tmp_path: Path, model) -> None:
    out = tmp_path / "out"
    seen = []
    for k in range(2):
        part = run_cohort(cohort, out, config=CONFIG, model=model, num_parts=2, part_id=k, progress=False)
        seen += [r["case_id"] for r in part.cases]
        assert (out / "parts" / f"cases.part{k}of2.csv").is_file() and not (out / "cases.csv").exists()
    assert sorted(seen) == [f"case_{i}" for i in range(6)]
    final = run_cohort(cohort, out, config=CONFIG, model=model, resume=True, progress=False)
    assert (final.n_skipped, final.n_done, final.n_failed) == (5, 0, 1)
    assert len(_read_csv(out / "cases.csv")) == 6


@pytest.mark.slow  # ~25 s: a fresh interpreter imports torch before the first case
def test_resume_after_sigkill(cohort: Path, tmp_path: Path, model) -> None:
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import warnings; warnings.simplefilter("ignore")
        from aaclip_med.cohort import run_cohort
        from aaclip_med.config import ExportConfig, InferenceConfig, RunConfig
        cfg = RunConfig(preset="mri", inference=InferenceConfig(model="aaclip-tiny", backbone_weights="random",
                        image_size={SIZE}, device="cpu", precision="fp32"), export=ExportConfig(overlays=2))
        run_cohort({str(cohort)!r}, {str(out)!r}, config=cfg, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        done = "[!.]*/run.json"  # finished case folders, not a hidden staging folder about to be renamed
        while not list((out / "cases").glob(done)) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in (out / "cases").glob("[!.]*/run.json")}
    assert finished, "the subprocess wrote no case before it was killed"
    assert not (out / "cases.csv").exists()
    if len(finished) < 5:  # the kill landed mid-cohort: make sure a stale partial folder is cleaned up too
        (out / "cases" / ".case_5.x1y2.partial").mkdir(exist_ok=True)
    res = run_cohort(cohort, out, config=CONFIG, model=model, resume=True, progress=False)
    assert res.n_skipped == len(finished) and res.n_done == 5 - len(finished) and res.n_failed == 1
    after = {p.parent.name: p.stat().st_mtime_ns for p in (out / "cases").glob("[!.]*/run.json")}
    assert {k: after[k] for k in finished} == finished
    assert len(after) == 5 and not [p for p in (out / "cases").iterdir() if p.name.startswith(".")]


def test_folder_source_and_reproducible(tmp_path: Path, model) -> None:
    make_cohort(tmp_path / "data", n=3, corrupt=None)
    a = run_cohort(tmp_path / "data" / "img", tmp_path / "a", config=CONFIG, model=model, progress=False)
    named = dataclasses.replace(CONFIG, export=dataclasses.replace(CONFIG.export, keep_names=True))
    b = run_cohort(tmp_path / "data" / "img", tmp_path / "b", config=named, progress=False)
    assert [r["case_id"] for r in b.cases] == ["case_0", "case_1", "case_2"]  # --keep-names: the file names
    ids = {r["case_id"] for r in a.cases}  # by default: hashes of the names, never the names
    assert len(ids) == 3 and all(i.startswith("case-") and len(i) == 15 for i in ids)
    by_name = {r["case_id"]: r["score"] for r in b.cases}
    assert sorted(r["score"] for r in a.cases) == sorted(by_name.values())
