"""precision="auto" on CPUs without AMX: int8 behind an accuracy guard (aaclip_med.model.guard, issue 16).

The CPU is faked (its /proc/cpuinfo flags), so every test runs the same on AVX2, AVX-512 and AMX machines.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from aaclip_med.errors import ConfigError
from aaclip_med.model import AACLIP, backends, factory, guard
from aaclip_med.model.aaclip import CPU_CHUNK

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
FLAGS = {
    "avx2": {"avx2", "fma"},
    "avx512": {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"},  # this development machine's class
    "amx": {"avx2", "avx512f", "avx512_bf16", "amx_bf16"},
}


@pytest.fixture()
def cpu(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Fake the CPU class; precision/attention env overrides and ISA caps unset (the suite pins backend eager)."""
    for var in (factory.PRECISION_ENV, "AACLIP_MED_ATTENTION", *backends.ISA_CAP_ENVS):
        monkeypatch.delenv(var, raising=False)

    def fake(isa: str) -> None:
        monkeypatch.setattr(backends, "_cpu_flags", lambda: FLAGS[isa])

    fake("avx512")
    return fake


def _phantom_slices(n: int = 3, size: int = 224) -> torch.Tensor:
    """Real-looking CLIP-normalised slices: a textured ellipse on black, a bright lesion, slight noise."""
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")  # fmt: skip
    out = []
    for k in range(n):
        head = ((yy - size / 2) / (0.42 * size)) ** 2 + ((xx - size / 2) / (0.35 * size)) ** 2 < 1
        img = 0.5 + 0.15 * torch.sin((yy + 7 * k) / 11) * torch.cos(xx / 13) + 0.02 * torch.randn(size, size,
                                                                                                  generator=gen)
        lesion = ((yy - 0.4 * size - 5 * k) ** 2 + (xx - 0.6 * size) ** 2) < (0.08 * size) ** 2
        img = torch.where(lesion, torch.full_like(img, 0.95), img) * head
        out.append(img)
    gray = torch.stack(out)[:, None].expand(-1, 3, -1, -1)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    return (gray - mean) / std


def _quantised(model: AACLIP) -> int:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return sum(isinstance(m, DynamicLinear) for m in model.modules())


def _r(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1])


def test_auto_resolution_per_cpu_engine_and_env(
    cpu: Callable[[str], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    for isa, want in (("avx2", "int8"), ("avx512", "int8"), ("amx", "bf16")):
        cpu(isa)
        assert factory.resolve_precision("auto", CPU) == want, isa
        assert factory.resolve_precision("auto", CUDA) == "fp16", isa  # CUDA untouched (no GPU needed to resolve)
    cpu("avx512")
    assert factory.int8_guarded("auto", "int8")
    assert not factory.int8_guarded("int8", "int8")  # asked for: no guard
    assert not factory.int8_guarded("auto", "bf16") and not factory.int8_guarded("auto", "fp16")
    for backend in ("openvino", "cast", "compile"):  # another engine than eager: auto is fp32, unguarded
        assert factory.resolve_precision("auto", CPU, backend=backend) == "fp32", backend
    assert factory.resolve_precision("auto", CPU, backend="eager") == "int8"
    assert factory.resolve_precision("auto", CPU, attention="matmul") == "fp32"  # int8 blocks run SDPA only
    monkeypatch.setenv(backends.BACKEND_ENV, "openvino")
    assert factory.resolve_precision("auto", CPU) == "fp32"
    assert factory.resolve_precision("auto", CPU, backend="eager") == "int8"  # the explicit backend wins
    monkeypatch.setenv(factory.PRECISION_ENV, "int8")  # the variable is a choice too: int8 without the guard
    assert factory.resolve_precision("auto", CPU) == "int8" and not factory.int8_guarded("auto", "int8")
    monkeypatch.setenv(factory.PRECISION_ENV, "fp32")
    assert factory.resolve_precision("auto", CPU) == "fp32"
    with pytest.raises(ConfigError, match="int8.*CPU only"):
        factory.resolve_precision("int8", CUDA)


def test_guard_passes_on_realistic_slices_and_is_recorded(
    cpu: Callable[[str], None], make_tiny: Callable[..., AACLIP], tiny: AACLIP, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_tiny(precision="auto")
    assert (model.precision, model.backend, model.int8_guard) == ("fp32", "eager", guard.PENDING)
    assert _quantised(model) == 0 and model.metadata()["int8_guard"] == "not run"  # quantisation deferred
    runs = []
    monkeypatch.setattr("aaclip_med.model.aaclip.run_int8_guard",
                        lambda *a: runs.append(1) or guard.run_int8_guard(*a))  # fmt: skip
    x = _phantom_slices(CPU_CHUNK + 1)
    out = model.score_slices(x, "mri").maps
    meta = model.metadata()
    assert meta["precision"] == "int8" and _quantised(model) == 4 * len(model.clip.visual.transformer.resblocks)
    verdict = meta["int8_guard"]
    assert verdict["passed"] is True and verdict["r"] >= 0.999 and verdict["slices"] == CPU_CHUNK
    assert verdict["threshold"] == guard.INT8_GUARD_R and 0 < verdict["max_abs_diff"] < 0.1
    json.dumps(meta)  # run.json-ready
    explicit = make_tiny(precision="int8")  # the same weights quantised at build, never guarded
    assert explicit.int8_guard == guard.NOT_APPLICABLE and explicit.metadata()["int8_guard"] == "not applicable"
    torch.testing.assert_close(out, explicit.score_slices(x, "mri").maps)  # guard chunk too: one precision
    assert _r(out, tiny.score_slices(x, "mri").maps) >= 0.999
    model.score_slices(x, "mri")
    assert runs == [1] and model.int8_guard == verdict  # once per model instance


def test_failed_guard_scores_fp32_and_warns_once(
    cpu: Callable[[str], None],
    make_tiny: Callable[..., AACLIP],
    tiny: AACLIP,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(guard, "INT8_GUARD_R", 1.01)  # no map reaches it
    model = make_tiny(precision="auto")
    x = _phantom_slices(CPU_CHUNK + 1)
    with caplog.at_level(logging.WARNING, logger="aaclip_med"):
        out = model.score_slices(x, "mri").maps
        again = model.score_slices(x, "mri").maps
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "scoring in fp32" in warned[0] and "--precision fp32" in warned[0], warned
    assert "1.01" in warned[0] and "r 0.99" in warned[0]
    assert model.precision == "fp32" and _quantised(model) == 0  # the fp32 modules are back
    verdict = model.metadata()["int8_guard"]
    assert verdict["passed"] is False and verdict["threshold"] == 1.01
    ref = tiny.score_slices(x, "mri").maps
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(again, ref, atol=1e-5, rtol=0)


def test_degenerate_maps() -> None:
    """A constant map leaves r undefined: the maps must then agree within INT8_GUARD_FLAT_TOL; NaN fails."""
    flat = torch.full((2, 8, 8), 0.7)
    same = guard.compare_maps(flat, flat + guard.INT8_GUARD_FLAT_TOL / 2)
    assert same["r"] is None and same["passed"] is True and same["slices"] == 2
    assert guard.compare_maps(flat, flat + 10 * guard.INT8_GUARD_FLAT_TOL)["passed"] is False
    varied = torch.linspace(0, 1, 128).reshape(2, 8, 8)
    assert guard.compare_maps(flat, varied)["passed"] is False  # r undefined (reference constant), far apart
    nan = varied.clone()
    nan[0, 0, 0] = float("nan")
    assert guard.compare_maps(varied, nan) == {"r": None, "max_abs_diff": None, "slices": 2,
                                               "threshold": guard.INT8_GUARD_R, "passed": False}  # fmt: skip
    assert guard.compare_maps(varied, varied)["r"] == pytest.approx(1.0)


def test_training_with_auto_never_gets_int8(
    cpu: Callable[[str], None], make_tiny: Callable[..., AACLIP], tiny: AACLIP
) -> None:
    model = make_tiny(precision="auto", backend="eager")  # what train() builds
    assert model.int8_guard == guard.PENDING
    assert model.trainable_parameters(2)  # training starts: the guard is off for good
    assert (model.precision, model.int8_guard) == ("fp32", guard.NOT_APPLICABLE)
    x = _phantom_slices(2)
    torch.testing.assert_close(model.score_slices(x, "mri").maps, tiny.score_slices(x, "mri").maps)
    assert _quantised(model) == 0
    cpu("amx")
    assert make_tiny(precision="auto", backend="eager").precision == "bf16"  # AMX: bf16 training as before


def test_auto_int8_is_inference_only_once_decided(
    cpu: Callable[[str], None], make_tiny: Callable[..., AACLIP]
) -> None:
    model = make_tiny(precision="auto")
    model.score_slices(_phantom_slices(1), "mri")
    assert model.precision == "int8"
    with pytest.raises(ConfigError, match="int8.*inference only"):
        model.trainable_parameters(2)


def test_explicit_backends_and_precisions_are_unguarded(
    cpu: Callable[[str], None], make_tiny: Callable[..., AACLIP]
) -> None:
    cast = make_tiny(precision="auto", backend="cast")
    assert (cast.precision, cast.backend, cast.int8_guard) == ("fp32", "cast", guard.NOT_APPLICABLE)
    fp32 = make_tiny(precision="fp32")
    assert fp32.int8_guard == guard.NOT_APPLICABLE
    fp32.score_slices(_phantom_slices(1), "mri")
    assert fp32.int8_guard == guard.NOT_APPLICABLE and _quantised(fp32) == 0


@pytest.mark.skipif(not backends.openvino_available(), reason="openvino not installed (extra)")
def test_openvino_with_auto_precision_is_fp32(
    cpu: Callable[[str], None], make_tiny: Callable[..., AACLIP], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(backends.CACHE_ENV, str(tmp_path))
    model = make_tiny(precision="auto", backend="openvino")
    assert (model.precision, model.backend, model.int8_guard) == ("fp32", "openvino", guard.NOT_APPLICABLE)


def _nifti(path: Path) -> Path:
    yy, xx = np.mgrid[:64, :64].astype(np.float32)
    head = ((yy - 32) / 26) ** 2 + ((xx - 32) / 22) ** 2 < 1
    vol = np.stack([np.where(head, 100 + 20 * np.sin((yy + k) / 9.0), 0) for k in range(4)], -1)
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.eye(4)), path)
    return path


def test_reference_build_and_scoring_go_through_the_guard(
    cpu: Callable[[str], None], make_tiny: Callable[..., AACLIP], tmp_path: Path
) -> None:
    from aaclip_med.reference import ReferenceScorer
    from aaclip_med.reference.build import build_reference

    volume = _nifti(tmp_path / "normal.nii.gz")
    builder = make_tiny(precision="auto")
    memory = build_reference(volume, tmp_path / "ref.safetensors", model=builder, preset="mri", max_patches=50)
    assert isinstance(builder.int8_guard, dict) and memory.metadata["precision"] == builder.precision
    scorer = ReferenceScorer(make_tiny(precision="auto"), memory)
    assert scorer.model.int8_guard == guard.PENDING
    scorer.score_slices(_phantom_slices(1, scorer.input_size), "mri")
    assert isinstance(scorer.model.int8_guard, dict)
    assert scorer.metadata()["int8_guard"] == scorer.model.int8_guard


def test_run_json_report_and_cli_record_the_precision_used(cpu: Callable[[str], None], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from aaclip_med.cli import app

    volume = _nifti(tmp_path / "study.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        args = ["run", str(volume), "--model", "demo", "--device", "cpu", "--preset", "mri", "--no-progress"]
        result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "out" / "run.json").read_text())["model"]["metadata"]  # written after scoring
    assert meta["precision"] in ("int8", "fp32") and meta["int8_guard"]["passed"] is (meta["precision"] == "int8")
    assert meta["int8_guard"]["slices"] >= 1 and meta["int8_guard"]["threshold"] == guard.INT8_GUARD_R
    said = f"{meta['precision']} (auto; guard {'passed' if meta['int8_guard']['passed'] else 'failed'}: maps r"
    assert f"precision: {said}" in result.output and said in (tmp_path / "out" / "report.html").read_text()
