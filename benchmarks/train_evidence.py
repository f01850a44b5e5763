"""Evidence that training works: pixel AUROC on an unseen BRATS case, trained vs untrained adapters.

Trains ``aaclip-tiny`` (random seed-0 backbone, so only the adapters can learn anything) on the BRATS 2015 cases
in ``brats2015TrainingData/validation/`` (FLAIR, whole tumour = ``OTMultiClass > 0``), with ``test/pat0002_1`` as
the validation split for epoch selection and calibration, for a few CPU minutes. It then scores the held-out case
``test/brats_2013_pat0001_1`` with the trained adapters and with fresh adapters on the same backbone, and prints
and writes the pixel and slice AUROC of both. Data are read from ``../shared/data`` (CC BY-NC-SA; never copied).

Usage:
    python benchmarks/train_evidence.py [--data ../shared/data] [--out benchmarks/results/train_evidence.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch

from aaclip_med.model.factory import create_model
from aaclip_med.training import train
from aaclip_med.training.calibrate import collect_validation
from aaclip_med.training.data import SliceDataset, load_items
from aaclip_med.training.layouts import read_manifest

ROOT = Path(__file__).resolve().parents[1]
BRATS = "brain_brats2015_deepmedic/brats2015TrainingData"
TRAIN_CASES = ("validation/brats_2013_pat0003_1", "validation/brats_2013_pat0004_1")
VAL_CASE = "test/brats_2013_pat0002_1"
TEST_CASE = "test/brats_2013_pat0001_1"
SETTINGS = {"model": "aaclip-tiny", "backbone_weights": "random", "seed": 0, "preset": "brain_mri",
            "image_size": 112, "text_epochs": 1, "image_epochs": 2, "text_batch_size": 16, "image_batch_size": 8,
            "precision": "fp32", "device": "cpu"}


def _manifest(data: Path, folder: Path) -> Path:
    rows = ["case_id,image,mask,split"]
    for case, split in [*((c, "train") for c in TRAIN_CASES), (VAL_CASE, "val"), (TEST_CASE, "test")]:
        base = (data / BRATS / case).resolve()
        rows.append(f"{base.name},{base / 'Flair_subtrMeanDivStd.nii.gz'},{base / 'OTMultiClass.nii.gz'},{split}")
    path = folder / "manifest.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _score(adapters: Path | None, test_ds: SliceDataset) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(SETTINGS["model"], backbone_weights="random", seed=SETTINGS["seed"], device="cpu",
                             image_size=SETTINGS["image_size"], precision="fp32", adapter_weights=adapters)
    loader = torch.utils.data.DataLoader(test_ds, batch_size=16)
    metrics = collect_validation(model, loader, model.device).metrics()
    return {"pixel_auroc": metrics["val_pixel_auroc"], "slice_auroc": metrics["val_image_auroc"]}


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the benchmark; returns the result dict (also written as JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_evidence.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = _manifest(args.data, Path(tmp))
        test_items = [it for it in load_items(read_manifest(manifest), "brain_mri") if it.split == "test"]
        test_ds = SliceDataset(test_items, SETTINGS["image_size"])
        t0 = time.perf_counter()
        adapters = train(manifest, Path(tmp) / "run", progress=False, **SETTINGS)
        train_s = time.perf_counter() - t0
        trained, untrained = _score(adapters, test_ds), _score(None, test_ds)
        log = (Path(tmp) / "run" / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    result = {"settings": SETTINGS, "train_cases": TRAIN_CASES, "val_case": VAL_CASE, "test_case": TEST_CASE,
              "test_slices": len(test_items), "test_anomalous_slices": sum(it.label for it in test_items),
              "train_seconds": round(train_s, 1), "trained": trained, "untrained": untrained,
              "train_log": [json.loads(line) for line in log]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"{TEST_CASE}: pixel AUROC trained {trained['pixel_auroc']:.4f} vs untrained "
          f"{untrained['pixel_auroc']:.4f}; slice AUROC {trained['slice_auroc']:.4f} vs "
          f"{untrained['slice_auroc']:.4f} ({train_s:.0f} s training)")
    return result


if __name__ == "__main__":
    main()
