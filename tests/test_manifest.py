"""The one manifest module: one split table for every reader, write -> read round trip, no torch on import."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aaclip_med.discovery import load_cases
from aaclip_med.errors import ManifestError
from aaclip_med.manifest import MANIFEST_COLUMNS, SPLITS, Case, read_manifest, write_manifest
from tests.training.conftest import write_pair


def _manifest(tmp_path: Path, splits: list[str]) -> Path:
    rng = np.random.default_rng(0)
    rows = ["case_id,image,mask,label,split"]
    for i, split in enumerate(splits):
        image, mask = write_pair(tmp_path / "img", f"c{i}", i % 2 == 0, rng, size=32)
        rows.append(f"c{i},img/{image.name},img/{mask.name},{int(i % 2 == 0)},{split}")
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_split_aliases_read_as_one_vocabulary(tmp_path: Path) -> None:
    spellings = ["train", "Training", "val", "valid", "VALIDATION", "test", ""]
    cases = read_manifest(_manifest(tmp_path, spellings))
    assert [c.split for c in cases] == ["train", "train", "val", "val", "val", "test", None]
    assert set(SPLITS.values()) == {"train", "val", "test"}
    assert [c.split for c in load_cases(tmp_path / "manifest.csv")] == [c.split for c in cases]  # batch, eval


def test_unknown_split_is_refused_with_line_and_value(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"manifest.csv line 3: split 'vali' is not known; did you mean"):
        read_manifest(_manifest(tmp_path, ["train", "vali"]))


def test_valid_rows_are_the_validation_split_of_training(tmp_path: Path) -> None:
    """A manifest row with split "valid" and a BMAD ``valid/`` folder both feed training's validation split."""
    from aaclip_med.training.data import build_datasets
    from aaclip_med.training.layouts import discover_folder

    records = read_manifest(_manifest(tmp_path / "m", ["train", "", "valid", "validation"]))
    train, val = build_datasets(records, None)
    assert (len(train), len(val)) == (2, 2)  # a row without a split is training data
    rng = np.random.default_rng(1)
    for split in ("train", "valid"):
        for state, anomalous in (("good", False), ("Ungood", True)):
            image, mask = write_pair(tmp_path / "bmad" / split / state / "img", f"{split}{state}", anomalous, rng)
            if anomalous:
                (tmp_path / "bmad" / split / state / "label").mkdir()
                mask.rename(tmp_path / "bmad" / split / state / "label" / image.name)
            else:
                mask.unlink()
    assert sorted({c.split for c in discover_folder(tmp_path / "bmad")}) == ["train", "val"]


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    files = [tmp_path / "data" / n for n in ("a.nii.gz", "a_seg.nii.gz", "b", "liver.nii.gz")]
    for path in files:
        path.touch()
    cases = [
        Case("a", files[0], files[1], 1, "brain_mri", "valid"),
        Case("b", files[2], None, None, None, None, series="1.2.3", organ_mask=files[3]),
    ]
    path = write_manifest(cases, tmp_path / "out" / "m.csv")
    with path.open(newline="") as fh:
        assert tuple(next(csv.reader(fh))) == MANIFEST_COLUMNS
    back = read_manifest(path)
    assert [(c.case_id, c.image.resolve(), c.label, c.preset, c.split, c.series) for c in back] == [
        ("a", files[0].resolve(), 1, "brain_mri", "val", None),
        ("b", files[2].resolve(), None, None, None, "1.2.3"),
    ]
    assert back[0].mask.resolve() == files[1].resolve() and back[1].organ_mask.resolve() == files[3].resolve()
    plain = write_manifest(cases[:1], tmp_path / "plain.csv")  # series and organ_mask only when used
    assert plain.read_text().splitlines()[0] == "case_id,image,mask,label,preset,split"


@pytest.mark.parametrize(
    ("cases", "needle"),
    [
        ([Case("a", Path("x")), Case("a", Path("y"))], "case_id 'a' repeats"),
        ([Case("a", Path("x"), split="dev")], "case 'a': split 'dev' is not known"),
    ],
)
def test_write_refuses_what_read_would_refuse(tmp_path: Path, cases: list[Case], needle: str) -> None:
    with pytest.raises(ManifestError, match=needle):
        write_manifest(cases, tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()


def test_manifest_and_discovery_import_no_torch() -> None:
    code = "import sys, aaclip_med.manifest, aaclip_med.discovery; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
