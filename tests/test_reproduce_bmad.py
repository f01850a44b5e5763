"""pipelines/reproduce_bmad.py end to end on a synthetic BMAD-layout folder, with metric values known in advance.

A stub model whose map is the image's brightness turns the folder's design into exact numbers: the lesions (grey
250) outrank every normal pixel except one bright 4x4 spot (grey 255) in one normal image, so

- pixel AUROC = 1 - 16/9240 (the spot's 16 pixels beat all 360 lesion pixels; 9240 normal pixels in all),
- pixel AP = 360/376 (the spot comes first, then every lesion pixel at once),
- image AUROC = 6/9 (the spotted normal image outscores the 3 anomalous ones), image AP = 3/4.
"""

from __future__ import annotations

import csv
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines"))

import reproduce_bmad  # noqa: E402

from aaclip_med.model import factory  # noqa: E402
from aaclip_med.model.aaclip import SliceOutput  # noqa: E402
from tests.model.conftest import build_tiny  # noqa: E402

SIZE = 40
N_LESION, N_NORMAL, N_SPOT = 3 * 10 * 12, 6 * SIZE * SIZE - 3 * 10 * 12, 16
EXPECTED = {  # in %, as main() reports them
    "pixel_auroc": 100 * (1 - N_SPOT / N_NORMAL),
    "pixel_ap": 100 * N_LESION / (N_LESION + N_SPOT),
    "image_auroc": 100 * 6 / 9,
    "image_ap": 75.0,
}


def _bmad(root: Path, mask_folder: str, n: int = 3) -> None:
    rng = np.random.default_rng(0)
    for state in ("good", "Ungood"):
        for i in range(n):
            img = (rng.random((SIZE, SIZE, 3)) * 60 + 40).astype(np.uint8)  # 40..100: normal tissue
            path = root / "test" / state / "img" / f"{i:05d}_{60 + i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if state == "good" and i == 1:
                img[30:34, 4:8] = 255  # a bright normal spot: a false positive of known size
            if state == "Ungood":
                img[10:20, 12:24] = 250
                mask = np.zeros((SIZE, SIZE), np.uint8)
                mask[10:20, 12:24] = 255
                (root / "test" / state / mask_folder).mkdir(exist_ok=True)
                Image.fromarray(mask).save(root / "test" / state / mask_folder / path.name)
            Image.fromarray(img).save(path)


class BrightnessScorer:
    """The map is the grey level of the (CLIP-normalised) input: a monotone function of the pixel brightness."""

    input_size = SIZE
    untrained_backbone = True
    layout = SimpleNamespace(taps=(1, 2, 3, 4))

    def score_slices(self, x: torch.Tensor, preset: object, return_levels: bool = True) -> SliceOutput:
        maps = x.float().mean(dim=1)
        return SliceOutput(maps.flatten(1).amax(1), maps, torch.zeros(len(x)), None)


@pytest.fixture
def bmad(tmp_path: Path) -> Path:
    _bmad(tmp_path / "bmad" / "Brain_AD", "label")
    _bmad(tmp_path / "bmad" / "Liver_AD", "anomaly_mask")
    return tmp_path / "bmad"


@pytest.mark.parametrize("exact", [False, True], ids=["binned", "exact"])
def test_known_metrics_through_main(bmad: Path, tmp_path: Path, capsys, monkeypatch, exact: bool) -> None:
    monkeypatch.setattr(factory, "create_model", lambda *a, **k: BrightnessScorer())
    out = tmp_path / "table.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = reproduce_bmad.main([str(bmad), "--out", str(out), "--batch-size", "4", *(["--exact"] * exact)])
    assert [r["subset"] for r in rows] == ["Brain", "Liver"]  # Retina absent: skipped
    for r in rows:
        for key, value in EXPECTED.items():
            assert r[key] == pytest.approx(value, abs=1e-6), (r["subset"], key)
        assert r["n_images"] == 6 and r["pixel_mode"] == ("exact" if exact else "binned")
        assert r["paper_pixel_auroc"] == reproduce_bmad.REFERENCE[r["subset"]][0]
    printed = capsys.readouterr().out
    assert f"{EXPECTED['image_auroc']:13.2f} (paper 79.26)" in printed and "(paper 12.87)" in printed
    with out.open() as fh:
        table = list(csv.DictReader(fh))
    assert [float(t["image_ap"]) for t in table] == pytest.approx([75.0, 75.0])


def test_tiny_model_metrics_equal_sklearn_on_its_own_maps(bmad: Path) -> None:
    """The real AA-CLIP forward (tiny random backbone): exact pixel metrics are sklearn's on the same maps."""
    model = build_tiny(image_size=64)
    root = bmad / "Brain_AD"
    res = reproduce_bmad.evaluate_subset(model, root, batch_size=4, exact=True)
    cases = reproduce_bmad.bmad_cases(root, ("test",), "reference")
    out = model.score_slices(reproduce_bmad._load([c.image for c in cases], 64), "reference")
    maps = out.maps.numpy()
    masks = np.stack([reproduce_bmad._mask(c.mask, 64) for c in cases])
    assert res["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-6)
    assert res["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-6)
    labels = [c.label for c in cases]
    assert res["image_auroc"] == pytest.approx(roc_auc_score(labels, out.score.numpy()), abs=1e-6)
    assert (res["set_min"], res["set_max"]) == pytest.approx((maps.min(), maps.max()), abs=1e-5)
