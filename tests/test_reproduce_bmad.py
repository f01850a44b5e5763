"""pipelines/reproduce_bmad.py end to end: the tiny random model on a synthetic BMAD-layout folder."""

from __future__ import annotations

import csv
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines"))

import reproduce_bmad  # noqa: E402


def _bmad(root: Path, mask_folder: str, n: int = 3) -> None:
    rng = np.random.default_rng(0)
    for state in ("good", "Ungood"):
        for i in range(n):
            img = (rng.random((40, 40, 3)) * 60 + 40).astype(np.uint8)
            path = root / "test" / state / "img" / f"{i:05d}_{60 + i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if state == "Ungood":
                img[10:20, 12:24] = 250
                mask = np.zeros((40, 40), np.uint8)
                mask[10:20, 12:24] = 255
                (root / "test" / state / mask_folder).mkdir(exist_ok=True)
                Image.fromarray(mask).save(root / "test" / state / mask_folder / path.name)
            Image.fromarray(img).save(path)


def test_reproduce_bmad_tiny(tmp_path: Path, capsys) -> None:
    _bmad(tmp_path / "bmad" / "Brain_AD", "label")
    _bmad(tmp_path / "bmad" / "Liver_AD", "anomaly_mask")
    out = tmp_path / "table.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = reproduce_bmad.main([str(tmp_path / "bmad"), "--model", "aaclip-tiny", "--backbone-weights",
                                    "random", "--image-size", "96", "--device", "cpu", "--batch-size", "4",
                                    "--out", str(out)])
    assert [r["subset"] for r in rows] == ["Brain", "Liver"]  # Retina absent: skipped
    for r in rows:
        for col in reproduce_bmad.COLUMNS:
            assert 0.0 <= r[col] <= 100.0
        assert r["n_images"] == 6 and r["paper_pixel_auroc"] == reproduce_bmad.REFERENCE[r["subset"]][0]
    printed = capsys.readouterr().out
    assert "(paper 95.72)" in printed and "(paper 12.87)" in printed
    with out.open() as fh:
        assert len(list(csv.DictReader(fh))) == 2
