"""Normal-reference mode: memory file round trip, refusals, the planted-anomaly oracle and the CLI (issue 17)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from aaclip_med.cli import app
from aaclip_med.config import InferenceConfig
from aaclip_med.errors import ConfigError, WeightsError
from aaclip_med.inference import score_volume
from aaclip_med.io import read_volume
from aaclip_med.model import create_model
from aaclip_med.reference import load_memory, nearest_distance
from aaclip_med.reference.build import build_reference, memory_preset

runner = CliRunner()


def _phantom(shift: int, plant: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A smooth head-like ellipse (4 slices); ``plant``: a checkerboard of the same intensity range in 2 slices."""
    yy, xx = np.mgrid[:64, :64].astype(np.float32)
    head = ((yy - 32) / 26) ** 2 + ((xx - 32) / 22) ** 2 < 1
    vol, lab = np.zeros((64, 64, 4), np.float32), np.zeros((64, 64, 4), np.uint8)
    for k in range(4):
        img = 100 + 20 * np.sin((yy + shift + k) / 9.0)
        img[~head] = 0
        if plant and k in (1, 2):
            sq = (slice(24, 40), slice(24, 40))
            img[sq] = np.where((xx[sq] // 2 + yy[sq] // 2) % 2 == 0, 85.0, 115.0)
            lab[sq[0], sq[1], k] = 1
        vol[..., k] = img
    return vol, lab


def _model(name: str = "demo", **kwargs: object):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_model(name, backbone_weights="random", device="cpu", precision="fp32", **kwargs)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two normal phantoms, a planted test phantom with its label, and a memory built with ``demo`` / ``mri``."""
    tmp = tmp_path_factory.mktemp("reference")
    paths = {f"normal{i}": tmp / f"normal{i}.nii.gz" for i in range(2)}
    for i, path in enumerate(paths.values()):
        nib.save(nib.Nifti1Image(_phantom(3 * i)[0], np.eye(4)), path)
    vol, lab = _phantom(1, plant=True)
    paths["test"], paths["label"] = tmp / "test.nii.gz", tmp / "label.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), paths["test"])
    nib.save(nib.Nifti1Image(lab, np.eye(4)), paths["label"])
    paths["ref"] = tmp / "ref.safetensors"
    normals = [paths["normal0"], paths["normal1"]]
    build_reference(normals, paths["ref"], model=_model(), preset="mri", max_patches=500)
    paths["ref_tiny"] = tmp / "ref_tiny.safetensors"  # random adapters: the model also builds at another size/seed
    build_reference(paths["normal0"], paths["ref_tiny"], model=_model("aaclip-tiny"), preset="mri", max_patches=50)
    return paths


def test_memory_file_round_trip(study: dict[str, Path]) -> None:
    mem = load_memory(study["ref"])
    meta = mem.metadata
    assert mem.sha256 is not None and len(mem.sha256) == 64
    assert len(mem.levels) == 4 and all(t.shape == (500, 64) for t in mem.levels)
    assert torch.allclose(mem.levels[0].norm(dim=1), torch.ones(500), atol=2e-3)  # unit rows, stored in fp16
    assert meta["n_patches"] == 500 < meta["n_patches_collected"]
    assert meta["preset"] == "mri" and meta["input_size"] == 224 and meta["identity"]["model"] == "demo"
    assert meta["identity"]["adapter_sha256"] and meta["identity"]["backbone"]["fingerprint"]
    assert meta["window"]["scope"] == "volume" and meta["subsample"]["method"].startswith("uniform random")
    assert [s["sha256"] for s in meta["sources"]] and all(len(s["sha256"]) == 64 for s in meta["sources"])
    assert sum(s["n_patches"] for s in meta["sources"]) == meta["n_patches_collected"]
    assert set(mem.group.tolist()) == {0, 1} and meta["calibration"]["held_out"] == "volume"
    assert meta["calibration"]["memory"]["std"] > 0


def test_nearest_distance_is_exact_and_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    import aaclip_med.reference.memory as memory_module

    q = torch.nn.functional.normalize(torch.randn(50, 8, dtype=torch.float64), dim=1).float()
    m = torch.nn.functional.normalize(torch.randn(333, 8, dtype=torch.float64), dim=1).float()
    want = 1 - (q @ m.T).amax(1)
    monkeypatch.setattr(memory_module, "SEARCH_BLOCK", 50 * 7)  # 7 memory rows per block: 48 blocks
    torch.testing.assert_close(nearest_distance(q, m), want.clamp_min(0), rtol=0, atol=1e-6)


def test_memory_map_finds_what_the_text_map_cannot(study: dict[str, Path]) -> None:
    """Oracle: the planted checkerboard has the normal intensity range; only the memory has never seen it."""
    model, vol = _model(), read_volume(study["test"])
    lab = read_volume(study["label"]).data > 0
    auroc = {}
    for fusion in ("text", "memory", "fused"):
        cfg = InferenceConfig(reference=str(study["ref"]), fusion=fusion, progress=False)
        res = score_volume(model, vol, "mri", config=cfg)
        inside = res.scored_voxels
        assert inside is not None
        auroc[fusion] = roc_auc_score(lab[inside], res.heatmap[inside])
        assert res.qa["reference"]["sha256"] == load_memory(study["ref"]).sha256
        if fusion == "memory":
            assert res.threshold == 3.0 and res.mask[lab].mean() > 0.9 and res.mask[~lab & inside].mean() < 0.1
    assert auroc["memory"] > 0.98 and auroc["fused"] > 0.95, auroc
    assert auroc["text"] < 0.3, auroc  # the random text anchors miss it (rank it below normal tissue)


def test_memory_window_rule() -> None:
    """A memory never clips the bright end: percentile windows become the foreground's whole range; HU stays."""
    full = memory_preset("brain_mri")
    assert (full.window.lower, full.window.upper, full.window.scope) == (0.0, 100.0, "volume")
    assert full.name == "brain_mri" and full.prompts == memory_preset("brain_mri", "preset").prompts
    assert memory_preset("brain_mri", "preset").window.upper == 99.5
    assert memory_preset("reference").window.scope == "volume"  # one window per volume, also for the paper preset
    assert memory_preset("liver_ct").window.upper == 250.0
    with pytest.raises(ConfigError, match="window='clip'"):
        memory_preset("mri", "clip")


def test_scoring_uses_the_memory_window(study: dict[str, Path]) -> None:
    """Query tokens are rendered as the memory's were: the whole foreground range (bright lesions not clipped)."""
    vol = read_volume(study["test"])
    fg = vol.data[vol.data != 0]  # the phantom's background fill is 0
    assert load_memory(study["ref"]).metadata["window"]["upper"] == 100.0
    for fusion, upper, hi in (("memory", 100.0, fg.max()), ("text", 99.0, np.percentile(fg, 99.0))):
        res = score_volume(_model(), vol, "mri", config=InferenceConfig(reference=str(study["ref"]), fusion=fusion,
                                                                        progress=False))  # fmt: skip
        assert res.qa["window"]["upper"] == upper and res.window is not None
        assert res.window[1] == pytest.approx(float(hi), rel=1e-5)


def test_brats_tumour_scores_above_normal_brain(shared_dir: Path, tmp_path: Path) -> None:
    """Regression (inverted memory map): the hyperintense FLAIR tumour must rank above normal brain, memory map.

    A memory built and scored with the ``brain_mri`` window (0.5-99.5th percentile) ranked tumour below normal
    brain (AUROC < 0.5 inside the brain); the default full-range window does not. The planted checkerboard above
    could not show it: it is texture novelty inside the normal intensity range of a phantom, where the window
    changes nothing; the inversion depends on where the window puts real normal brain on the grey scale.
    """
    root = shared_dir / "data/brain_brats2015_deepmedic/brats2015TrainingData"
    query, normal = root / "test/brats_2013_pat0002_1", root / "validation/brats_2013_pat0003_1"
    if not (query.is_dir() and normal.is_dir()):
        pytest.skip(f"BRATS cases under {root} are absent")
    arrays = {}
    for name in ("Flair_subtrMeanDivStd", "OTMultiClass", "brainmask"):
        img = nib.load(query / f"{name}.nii.gz")
        arrays[name] = np.asarray(img.dataobj, dtype=np.float32)[:, :, 50:110:10]  # 6 slices through the tumour
    nib.save(nib.Nifti1Image(arrays["Flair_subtrMeanDivStd"], img.affine), tmp_path / "q.nii.gz")
    manifest = tmp_path / "normals.csv"
    image, mask = normal / "Flair_subtrMeanDivStd.nii.gz", normal / "OTMultiClass.nii.gz"
    manifest.write_text(f"case_id,image,mask\nn,{image},{mask}\n")
    lesion, brain = arrays["OTMultiClass"] > 0, arrays["brainmask"] > 0
    model, vol, auroc = _model(), read_volume(tmp_path / "q.nii.gz"), {}
    for window in ("full", "preset"):
        ref = tmp_path / f"{window}.safetensors"
        build_reference(manifest, ref, model=model, preset="brain_mri", max_slices=12, window=window)
        res = score_volume(model, vol, "brain_mri", config=InferenceConfig(reference=str(ref), fusion="memory",
                                                                          progress=False))  # fmt: skip
        auroc[window] = roc_auc_score(lesion[brain], res.heatmap[brain])
    assert auroc["full"] > 0.9 and auroc["preset"] < 0.5, auroc  # the clipped window inverts the map


def test_text_fusion_is_the_plain_model(study: dict[str, Path]) -> None:
    model, vol = _model(), read_volume(study["test"])
    plain = score_volume(model, vol, "mri", config=InferenceConfig(progress=False))
    text = score_volume(model, vol, "mri", config=InferenceConfig(reference=str(study["ref"]), fusion="text",
                                                                  progress=False))  # fmt: skip
    np.testing.assert_allclose(text.heatmap, plain.heatmap, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("ref", "kwargs", "preset", "needle"),
    [
        ("ref", {"name": "aaclip-tiny"}, "mri", "model demo, this run uses aaclip-tiny"),
        ("ref", {}, "brain_mri", "preset mri"),
        ("ref_tiny", {"name": "aaclip-tiny", "image_size": 160}, "mri", "input size 224"),
        ("ref_tiny", {"name": "aaclip-tiny", "seed": 1}, "mri", "backbone weights"),
        ("ref_tiny", {"name": "aaclip-tiny", "adapter_weights": "DEMO"}, "mri", "adapter sha256"),
    ],
)
def test_mismatched_memory_is_refused(study: dict[str, Path], ref: str, kwargs: dict, preset: str,
                                      needle: str) -> None:  # fmt: skip
    if kwargs.get("adapter_weights") == "DEMO":
        from aaclip_med.model.factory import DATA_DIR

        kwargs = {**kwargs, "adapter_weights": str(DATA_DIR / "demo_adapters.safetensors")}
    model = _model(**kwargs)
    cfg = InferenceConfig(reference=str(study[ref]), progress=False)
    with pytest.raises(WeightsError, match=needle) as err:
        score_volume(model, read_volume(study["test"]), preset, config=cfg)
    assert "\n" not in str(err.value) and "rebuild" in str(err.value)


def test_bad_fusion_settings_are_refused() -> None:
    for kwargs in ({"fusion": "both"}, {"fusion_weight": 1.5}, {"memory_blur": -1.0}):
        with pytest.raises(ConfigError):
            InferenceConfig(**kwargs)  # type: ignore[arg-type]


def test_manifest_sources_drop_lesion_slices(study: dict[str, Path], tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        f"case_id,image,mask,label\na,{study['test']},{study['label']},\nb,{study['normal0']},,1\n"
    )
    mem = build_reference(manifest, tmp_path / "r.safetensors", model=_model(), preset="mri")
    assert mem.metadata["n_slices"] == 2 and len(mem.metadata["sources"]) == 1  # 4 slices, 2 with the lesion
    patches = build_reference(manifest, tmp_path / "p.safetensors", model=_model(), preset="mri",
                              mask_rule="patches")  # fmt: skip
    assert patches.metadata["n_slices"] == 4 and patches.metadata["n_patches_collected"] < 4 * 196


def test_cli_build_run_and_refusal(study: dict[str, Path], tmp_path: Path) -> None:
    ref = tmp_path / "ref.safetensors"
    res = runner.invoke(app, ["-q", "reference", "build", str(study["normal0"]), str(study["normal1"]), "-o",
                              str(ref), "--model", "demo", "--backbone-weights", "random", "--preset", "mri",
                              "--max-patches", "300", "--precision", "fp32"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "300 of" in res.output and ref.is_file()
    out = tmp_path / "run"
    base = ["-q", "run", str(study["test"]), "--model", "demo", "--backbone-weights", "random", "--preset", "mri",
            "--reference", str(ref), "--no-progress", "--precision", "fp32"]  # fmt: skip
    res = runner.invoke(app, [*base, "-o", str(out), "--fusion", "memory", "--memory-blur", "1.5"])
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    reference = run["reference"] if "reference" in run else run["extra"]["reference"]
    assert reference["sha256"] == load_memory(ref).sha256 and reference["fusion"] == "memory"
    assert reference["memory_blur_sigma"] == 1.5
    bad = [arg if arg != "mri" else "brain_mri" for arg in base]
    res = runner.invoke(app, [*bad, "-o", str(tmp_path / "bad")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "preset mri" in res.output
    assert not (tmp_path / "bad").exists()


def test_cli_build_refuses_bad_inputs_before_the_model(tmp_path: Path) -> None:
    base = ["-q", "reference", "build", "-o", str(tmp_path / "r.safetensors"), "--preset", "mri"]
    res = runner.invoke(app, [*base, str(tmp_path), "--mask-rule", "voxels"])
    assert res.exit_code == 2 and "--mask-rule 'voxels' is not valid" in res.output
    res = runner.invoke(app, [*base, str(tmp_path), "--window", "clip"])
    assert res.exit_code == 2 and "--window 'clip' is not valid" in res.output
    res = runner.invoke(app, [*base, str(tmp_path / "missing.nii.gz")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and not (tmp_path / "r.safetensors").exists()
