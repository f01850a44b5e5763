"""Learning a user can verify: `aaclip-med train` -> `batch` -> `eval` on BRATS, with only the command line.

Trains ``aaclip-tiny`` on a **random** backbone (seed 0: only the adapters can learn) on BRATS 2015 FLAIR
(whole tumour = ``OTMultiClass > 0``) from ``../shared/data/brain_brats2015_deepmedic``: two cases for training,
one for validation (epoch selection and the calibrated threshold), and scores a held-out case the training never
saw, plus the validation case (to compare the training-time validation AUROC with the CLI's), plus the TCGA-LGG
FLAIR DU-7294 (another scanner, raw intensities; its mask is an algorithm fusion, not an expert's). ``eval`` gets
the BRATS brain masks as ``organ_mask``, so it reports the pixel AUROC over all voxels, inside the foreground and
inside the brain, next to the raw-intensity baseline.

Every step is a subprocess of the CLI a user has; the training's CPU time (user + system, all threads) and wall
time are measured. The data are read in place (CC BY-NC-SA / CC BY; never copied into the project).

Usage:
    python benchmarks/learning_evidence.py [--image-size 224] [--text-epochs 1] [--image-epochs 2]
        [--test pat0001 --val pat0002] [--work DIR] [--out benchmarks/results/learning_evidence.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BRATS = "brain_brats2015_deepmedic/brats2015TrainingData"
CASES = {  # BRATS case -> folder
    "pat0001": "test/brats_2013_pat0001_1",
    "pat0002": "test/brats_2013_pat0002_1",
    "pat0003": "validation/brats_2013_pat0003_1",
    "pat0004": "validation/brats_2013_pat0004_1",
}
TCGA = "brain_tcga_lgg_brainles_pseudo_gt/TCGA-DU-7294/TCGA-DU-7294_brainles"
MODEL = ["--model", "aaclip-tiny", "--backbone-weights", "random", "--preset", "brain_mri", "--device", "cpu",
         "--precision", "fp32", "--no-progress"]  # fmt: skip


def _cli(*args: str, log: Path) -> tuple[float, float]:
    """Run ``aaclip-med ARGS``; returns (wall seconds, CPU seconds of the child: user + system, all threads)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"$ aaclip-med {' '.join(args)}\n")
        fh.flush()
        done = subprocess.run([sys.executable, "-m", "aaclip_med", *args], stdout=fh, stderr=subprocess.STDOUT,
                              env=env, check=False)  # fmt: skip
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"aaclip-med {args[0]} failed (exit {done.returncode}); see {log}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _brats(data: Path, case: str) -> tuple[Path, Path, Path]:
    base = (data / BRATS / CASES[case]).resolve()
    return base / "Flair_subtrMeanDivStd.nii.gz", base / "OTMultiClass.nii.gz", base / "brainmask.nii.gz"


def _write(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train, score and evaluate; returns the result record."""
    data, work = args.data.resolve(), args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "cli.log"
    train_ids = [c for c in CASES if c not in (args.test, args.val)]
    rows = ["case_id,image,mask,split"]
    for case, split in [*((c, "train") for c in train_ids), (args.val, "val")]:
        image, mask, _ = _brats(data, case)
        rows.append(f"{case},{image},{mask},{split}")
    train_csv = _write(work / "train.csv", rows)
    size = ["--image-size", str(args.image_size)]
    adapters = work / "train" / "adapters.safetensors"
    timing = work / "train_timing.json"  # kept, so a rerun that reuses the training still reports its cost
    if not adapters.is_file():
        epochs = ["--text-epochs", str(args.text_epochs), "--image-epochs", str(args.image_epochs)]
        train_wall, train_cpu = _cli("train", str(train_csv), "-o", str(work / "train"), *MODEL, *size, *epochs,
                                     "--image-batch-size", str(args.image_batch_size), "--seed", "0",
                                     "--image-lr", str(args.image_lr), log=log)  # fmt: skip
        timing.write_text(json.dumps({"wall_s": train_wall, "cpu_s": train_cpu}), encoding="utf-8")
    spent = json.loads(timing.read_text(encoding="utf-8")) if timing.is_file() else {}
    train_wall, train_cpu = spent.get("wall_s", float("nan")), spent.get("cpu_s", float("nan"))
    tcga = (data / TCGA).resolve()
    tcga_image = next((tcga / "raw_bet").glob("*fla_bet.nii.gz"), None)
    test_rows, label_rows = ["case_id,image"], ["case_id,mask,organ_mask"]
    for case in (args.test, args.val):
        image, mask, brain = _brats(data, case)
        test_rows.append(f"{case},{image}")
        label_rows.append(f"{case},{mask},{brain}")
    if tcga_image is not None:
        test_rows.append(f"tcga_du7294,{tcga_image}")
        label_rows.append(f"tcga_du7294,{tcga / 'fusion' / 'mav.nii.gz'},")
    test_csv, labels_csv = _write(work / "test.csv", test_rows), _write(work / "labels.csv", label_rows)
    score_wall, _ = _cli("batch", str(test_csv), "-o", str(work / "batch"), *MODEL, *size,
                         "--adapter-weights", str(adapters), "--continue", log=log)  # fmt: skip
    _cli("eval", str(work / "batch"), "--labels", str(labels_csv), "-o", str(work / "eval"), log=log)
    summary = json.loads((work / "eval" / "summary.json").read_text(encoding="utf-8"))
    train_log = [json.loads(line) for line in (work / "train" / "train_log.jsonl").read_text().splitlines()]
    keys = ("pixel_auroc", "pixel_auroc_foreground", "pixel_auroc_organ", "baseline_pixel_auroc",
            "baseline_pixel_auroc_foreground", "baseline_pixel_auroc_organ", "pixel_ap", "dice", "threshold")
    cases = {c["case_id"]: {k: c.get(k) for k in keys} for c in summary["cases"]}
    val_epochs = [r for r in train_log if r.get("val_pixel_auroc") is not None]
    return {
        "settings": {"image_size": args.image_size, "text_epochs": args.text_epochs,
                     "image_epochs": args.image_epochs, "image_batch_size": args.image_batch_size,
                     "image_lr": args.image_lr, "model": "aaclip-tiny", "backbone": "random (seed 0)",
                     "train": train_ids, "val": args.val, "test": args.test},  # fmt: skip
        "train_wall_s": round(train_wall, 1),
        "train_cpu_s": round(train_cpu, 1),
        "score_wall_s": round(score_wall, 1),
        "load_average_after": os.getloadavg(),
        "val_pixel_auroc_training": [r["val_pixel_auroc"] for r in val_epochs],
        "cases": cases,
        "verdicts": summary.get("verdicts", []),
        "work": str(work),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the flags, run, print a summary line per case and write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/aaclip_learning_evidence"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "learning_evidence.json")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--text-epochs", type=int, default=1)
    parser.add_argument("--image-epochs", type=int, default=2)
    parser.add_argument("--image-batch-size", type=int, default=8)
    parser.add_argument("--image-lr", type=float, default=5e-4)
    parser.add_argument("--test", default="pat0001", choices=sorted(CASES))
    parser.add_argument("--val", default="pat0002", choices=sorted(CASES))
    args = parser.parse_args(argv)
    if args.test == args.val:
        parser.error("--test and --val must be different cases")
    if not (args.data / BRATS).is_dir():
        sys.exit(f"{args.data / BRATS} is absent: this benchmark needs the shared BRATS data")
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"training: {result['train_cpu_s']:.0f} CPU-s, {result['train_wall_s']:.0f} s wall; "
          f"validation AUROC during training {result['val_pixel_auroc_training']}")  # fmt: skip
    for case, m in result["cases"].items():
        print(f"{case}: pixel AUROC all {m['pixel_auroc']:.3f} | foreground {m['pixel_auroc_foreground']:.3f} | "
              f"brain {m['pixel_auroc_organ'] or float('nan'):.3f}; intensity baseline all "
              f"{m['baseline_pixel_auroc']:.3f} | foreground {m['baseline_pixel_auroc_foreground']:.3f} | brain "
              f"{m['baseline_pixel_auroc_organ'] or float('nan'):.3f}")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
