"""`eval` reads each case's inputs once: one read of the image, the reference mask and the organ mask per case.

The sheets are compared with golden CSVs written by the evaluation before it shared one read between the
metrics, the baselines and the case page (tests/golden/eval_cohort/; regenerate with
``AACLIP_WRITE_GOLDEN=1 python -m pytest tests/test_eval_reads.py`` only for an intended change of the numbers).
"""

from __future__ import annotations

import collections
import csv
import gc
import math
import os
import shutil
import weakref
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from aaclip_med import io
from aaclip_med.cohort import evaluate, run_cohort
from aaclip_med.cohort.case_volumes import CaseVolumes
from aaclip_med.volume import Volume
from tests.test_cohort import make_cohort
from tests.test_csv_schemas import CONFIG
from tests.test_pipeline import BrightnessModel

GOLDEN = Path(__file__).parent / "golden" / "eval_cohort"
SHEETS = ("cases.csv", "summary.csv", "slice_metrics.csv")
VARIABLE = {"seconds"}  # the cases' run times: read from run.json, different at every run


def _cohort(root: Path) -> tuple[Path, Path]:
    """A batch folder of 4 cases (2 with a lesion, 1 faint; case_2 has a label, no mask) and an eval labels CSV.

    The labels give the images (the run recorded them as hashes), the masks and an organ mask per case, so the
    baselines (``intensity`` and ``intensity_deviation``) and the case pages are computed.
    """
    manifest = make_cohort(root / "data", n=4, corrupt=None)
    faint = nib.load(root / "data" / "img" / "case_3.nii.gz")  # a faint lesion: neither map separates it fully
    image = np.asarray(faint.dataobj)
    image[10:18, 12:20, 2:6] = np.random.default_rng(7).normal(104, 5, (8, 8, 4))
    nib.save(nib.Nifti1Image(image, faint.affine), root / "data" / "img" / "case_3.nii.gz")
    run_cohort(manifest, root / "batch", config=CONFIG, model=BrightnessModel(32), progress=False)
    organ = np.zeros((32, 32, 8), np.uint8)
    organ[4:28, 6:26, 1:7] = 1
    nib.save(nib.Nifti1Image(organ, np.diag([1.0, 1.0, 2.0, 1.0])), root / "data" / "organ.nii.gz")
    data = root / "data"
    rows = [f"case_{i},{data}/img/case_{i}.nii.gz,{'' if i == 2 else f'{data}/lbl/case_{i}.nii.gz'},"
            f"{'0' if i == 2 else ''},{data}/organ.nii.gz" for i in range(4)]  # fmt: skip
    labels = root / "labels.csv"
    labels.write_text("case_id,image,mask,label,organ_mask\n" + "\n".join(rows) + "\n")
    return root / "batch", labels


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _same(value: str, expected: str) -> bool:
    try:
        a, b = float(value), float(expected)
    except ValueError:
        return value == expected
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)  # fp32 sheets


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _cohort(tmp_path_factory.mktemp("eval_reads"))


def test_eval_reads_each_case_input_once(
    cohort: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counts the reader's calls per path: a second read of an image or a mask (~50 s for DICOM) fails here."""
    batch, labels = cohort
    calls: collections.Counter[str] = collections.Counter()
    read_volume = io.read_volume

    def counting(path: Path, *args: object, **kwargs: object) -> Volume:
        calls[str(path)] += 1
        return read_volume(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(io, "read_volume", counting)
    res = evaluate(batch, labels, tmp_path / "eval", normalisation="set")
    data = labels.parent / "data"
    once = [str(data / sub / f"case_{i}.nii.gz") for sub in ("img", "lbl") for i in (0, 1, 3)]
    assert {p: calls[p] for p in once} == dict.fromkeys(once, 1), calls
    assert calls[str(data / "img" / "case_2.nii.gz")] == 0  # no mask: nothing to evaluate against, no page
    assert calls[str(data / "organ.nii.gz")] == 3  # one organ mask file, read once for each case with a mask
    # pages: the cases with a lesion (case_0 has none: its metrics carry reasons, it links to its run's report)
    assert sorted(p.name for p in (res.out_dir / "cases").iterdir()) == ["case_1.html", "case_3.html"]


def test_eval_labels_each_case_region_once(
    cohort: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AUPRO regions: one labelling per case and evaluated region (all, foreground, organ), shared by every map.

    Per case the model's map (pooled and per case) and the baselines are evaluated against the same reference
    mask: 8 labellings per case before they were shared (~0.5 s each on a 512x512x129 CT).
    """
    from aaclip_med.cohort import case_pages
    from aaclip_med.metrics import pixel

    batch, labels = cohort
    calls: list[tuple[str, int]] = []  # (region rule, slice axis) of each labelling
    per_case: dict[str, list[tuple[str, int]]] = {}
    region_weights, write = pixel.region_weights, case_pages.write_eval_case_page

    def counting(
        mask: np.ndarray, regions: pixel.Regions = "slice", slice_axis: int = -1
    ) -> tuple[np.ndarray, int]:
        calls.append((regions, slice_axis))
        return region_weights(mask, regions, slice_axis)

    def page(volumes: CaseVolumes, *args: object) -> Path | None:  # called as each case is done
        per_case[volumes.case.case_id] = calls[:]
        calls.clear()
        return write(volumes, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(pixel, "region_weights", counting)
    monkeypatch.setattr(case_pages, "write_eval_case_page", page)
    evaluate(batch, labels, tmp_path / "eval")
    three = [("slice", 2)] * 3  # the regions all, foreground and organ of one rule
    assert per_case == {"case_0": three, "case_1": three, "case_2": [], "case_3": three}


@pytest.mark.parametrize("normalisation", ["none", "set"])
def test_eval_sheets_match_the_golden_sheets(
    cohort: tuple[Path, Path], tmp_path: Path, normalisation: str
) -> None:
    batch, labels = cohort
    res = evaluate(batch, labels, tmp_path / "eval", normalisation=normalisation)
    golden = GOLDEN / normalisation
    if os.environ.get("AACLIP_WRITE_GOLDEN"):
        golden.mkdir(parents=True, exist_ok=True)
        for name in SHEETS:
            shutil.copyfile(res.out_dir / name, golden / name)
    for name in SHEETS:
        got, want = _read(res.out_dir / name), _read(golden / name)
        assert len(got) == len(want) and all(list(g) == list(w) for g, w in zip(got, want, strict=True)), name
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            diff = {k: (g[k], w[k]) for k in w if k not in VARIABLE and not _same(g[k], w[k])}
            assert not diff, f"{name} row {i}: {diff}"


def test_eval_holds_one_case_volumes_at_a_time(
    cohort: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory stays flat in the cohort's size: when a case's page is written, no earlier case's volumes live."""
    from aaclip_med.cohort import case_pages

    batch, labels = cohort
    seen: list[weakref.ref[CaseVolumes]] = []
    write = case_pages.write_eval_case_page

    def checking(volumes: CaseVolumes, *args: object) -> Path | None:
        gc.collect()
        assert [r() for r in seen] == [None] * len(seen), "an earlier case's volumes are still held"
        seen.append(weakref.ref(volumes))
        return write(volumes, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(case_pages, "write_eval_case_page", checking)
    evaluate(batch, labels, tmp_path / "eval")
    assert len(seen) == 4
