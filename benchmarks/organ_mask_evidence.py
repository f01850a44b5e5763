"""Scoring inside the liver: 3D-IRCADb patient 1 with and without ``--organ-mask``, with only the command line.

For the ``demo`` and ``aaclip-tiny`` models (both on a **random** backbone: these numbers show what the pipeline
does with the organ mask, not what AA-CLIP can detect), scores the 129-slice contrast CT of 3D-IRCADb-01 patient 1
(``../shared/data/liver_3dircadb1_patient01``, read in place from its zips) three ways:

- ``body``: as before, inside the body (the CT foreground);
- ``liver``: ``--organ-mask MASKS_DICOM.zip --organ liver`` (slices without liver are not scored);
- ``liver_masked``: also ``--mask-outside-organ`` (BMAD's liver input: the image outside the liver is black;
  ``demo`` only, to keep the whole benchmark within about 45 minutes on 2 shared cores).

The reference is the union of the ``livertumor01..07`` masks (``datasets/prepare_lits.py`` writes it to the work
folder; CC BY-NC-ND: never into the project). ``eval --organ liver`` gets the liver mask as ``organ_mask``, so
every run is reported over all voxels, inside the body and inside the liver, beside the raw-intensity baseline
and the |HU - liver median| baseline.

Usage:
    python benchmarks/organ_mask_evidence.py [--image-size 224] [--work DIR]
        [--out benchmarks/results/organ_mask_evidence.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
IRCADB = "liver_3dircadb1_patient01"
MODELS = {"demo": ["--model", "demo"], "tiny": ["--model", "aaclip-tiny"]}
VARIANTS = {"body": [], "liver": ["--organ-mask", "{masks}", "--organ", "liver"],
            "liver_masked": ["--organ-mask", "{masks}", "--organ", "liver", "--mask-outside-organ"]}  # fmt: skip
RUNS = [("demo", "body"), ("demo", "liver"), ("demo", "liver_masked"), ("tiny", "body"), ("tiny", "liver")]
# no DICOM SEG: the IRCADb series has no FrameOfReferenceUID, which a SEG needs; NIfTI maps are what eval reads
CONFIG = 'preset = "liver_ct"\n[inference]\ndevice = "cpu"\nprecision = "fp32"\n[export]\ndicom_seg = false\n'
ROWS = [("model", "all"), ("model", "foreground"), ("model", "organ"), ("intensity", "all"),
        ("intensity", "foreground"), ("intensity", "organ"), ("intensity_deviation", "organ")]  # fmt: skip


def _cli(*args: str, log: Path, tool: list[str] | None = None) -> float:
    """Run ``aaclip-med ARGS`` (or ``tool``) as a subprocess; returns the wall seconds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = tool or [sys.executable, "-m", "aaclip_med"]
    t0 = time.perf_counter()
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"$ {' '.join([*cmd[1:], *args])}\n")
        fh.flush()
        done = subprocess.run([*cmd, *args], stdout=fh, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode:
        sys.exit(f"{' '.join(cmd[1:2] + list(args[:1]))} failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Score, evaluate and collect; returns the result record."""
    patient = (args.data / IRCADB / "3Dircadb1.1").resolve()
    if not (patient / "PATIENT_DICOM.zip").is_file():
        sys.exit(f"3D-IRCADb patient 1 not found in {patient}; pass --data (the folder holding {IRCADB}).")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "cli.log"
    manifest = work / "ircadb.csv"
    if not manifest.is_file():  # the tumour union on the CT grid, as a user prepares IRCADb labels
        prepare = [sys.executable, str(ROOT / "datasets" / "prepare_lits.py")]
        _cli(str(patient), "-o", str(manifest), log=log, tool=prepare)
    tumour = work / "masks" / "ircadb_1.nii.gz"
    config = work / "run.toml"
    config.write_text(CONFIG, encoding="utf-8")
    masks = str(patient / "MASKS_DICOM.zip")
    results: dict[str, Any] = {}
    for model, variant in RUNS:  # reruns skip finished runs and evaluations (delete the work folder to redo)
        name = f"{model}_{variant}"
        out = work / name
        if not (out / "run.json").is_file():
            flags = [a.format(masks=masks) for a in VARIANTS[variant]]
            _cli("run", str(patient / "PATIENT_DICOM.zip"), "-o", str(out), "--config", str(config),
                           *MODELS[model], "--image-size", str(args.image_size), "--no-progress", *flags,
                           log=log)  # fmt: skip
        labels = work / f"labels_{name}.csv"
        labels.write_text(f"case_id,mask,organ_mask\n{name},{tumour},{masks}\n", encoding="utf-8")
        if not (work / f"eval_{name}" / "summary.json").is_file():
            _cli("eval", str(out), "--labels", str(labels), "--organ", "liver", "-o", str(work / f"eval_{name}"),
                 log=log)  # fmt: skip
        summary = json.loads((work / f"eval_{name}" / "summary.json").read_text(encoding="utf-8"))
        rows = {(r["map"], r["region"]): r for r in summary["summary"] if r.get("preset") == "liver_ct"}
        qa = json.loads((out / "qa.json").read_text(encoding="utf-8"))
        results[name] = {
            "n_scored_slices": qa["n_scored"],
            "score_s": round(json.loads((out / "run.json").read_text(encoding="utf-8"))["timings"]["score_s"], 1),
            "metrics": {f"{m}/{reg}": {"pixel_auroc": rows[(m, reg)]["pixel_auroc"],
                                       "pixel_ap": rows[(m, reg)]["pixel_ap"]}
                        for m, reg in ROWS if (m, reg) in rows},  # fmt: skip
            "verdicts": summary["verdicts"],
        }
    return {"settings": {"image_size": args.image_size, "data": f"{IRCADB} (129 slices, 512x512)",
                         "backbone": "random (seed 0)", "threads": os.environ.get("OMP_NUM_THREADS", "default")},
            "runs": results}  # fmt: skip


def _table(record: dict[str, Any]) -> str:
    head = "| run | scored slices | " + " | ".join(f"{m} {r}" for m, r in ROWS) + " |"
    lines = [head, "|" + "---|" * (len(ROWS) + 2)]
    for name, res in record["runs"].items():
        cells = []
        for m, r in ROWS:
            v = res["metrics"].get(f"{m}/{r}")
            cells.append("–" if v is None else f"{v['pixel_auroc']:.3f} / {v['pixel_ap']:.3f}")
        lines.append(f"| {name} | {res['n_scored_slices']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line entry; prints the table (pixel AUROC / AP) and writes the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/aaclip_organ_evidence"))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "organ_mask_evidence.json")
    args = parser.parse_args(argv)
    record = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(_table(record))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
