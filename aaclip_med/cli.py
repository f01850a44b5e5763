"""The ``aaclip-med`` command line (typer). Thin: parse flags, call the library, map errors to exit codes.

Heavy packages (torch, open_clip, MONAI) are imported inside the commands, so ``aaclip-med --help`` stays fast.
Errors the user can fix (:class:`~aaclip_med.errors.AACLIPMedError`) print one red line and exit with code 2;
anything else is a bug and shows a traceback (exit 1); Ctrl-C exits with 130.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from aaclip_med._logging import configure_logging
from aaclip_med.errors import AACLIPMedError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="aaclip-med",
    help="AA-CLIP anomaly detection for medical volumes (DICOM, NIfTI, NRRD/MHA).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _user_errors(func: F) -> F:
    """Turn library errors into one line + exit 2, and Ctrl-C into exit 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AACLIPMedError as err:
            _fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
        except KeyboardInterrupt:
            _fail("interrupted; no partial outputs were left behind", code=130)

    return wrapper  # type: ignore[return-value]


@app.callback()
def _main(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv: debug).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.")] = False,
) -> None:
    configure_logging(-1 if quiet else verbose)


@app.command()
@_user_errors
def info(
    path: Annotated[Path, typer.Argument(help="DICOM file/folder/DICOMDIR/zip, NIfTI, NRRD or MHA.")],
    series: Annotated[str | None, typer.Option(help="Series UID, number or description.")] = None,
    volume_index: Annotated[int | None, typer.Option(help="Volume of a 4D NIfTI.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Read a volume and describe it: shape, spacing, orientation, modality, series and value range."""
    from aaclip_med.io import describe_volume, read_volume

    desc = describe_volume(read_volume(path, series=series, volume_index=volume_index))
    if as_json:
        typer.echo(json.dumps(desc, indent=2, default=str))
        return
    width = max(len(k) for k in desc)
    for key, value in desc.items():
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
            value = "; ".join(value)
        typer.echo(f"{key:<{width}}  {value}")


def _run_config(config: Path | None, overrides: dict[str, Any]) -> Any:
    """A RunConfig from an optional TOML file, with the flags that were given laid over it."""
    import dataclasses

    from aaclip_med.config import RunConfig, load_run_config

    cfg = load_run_config(config) if config is not None else RunConfig()
    sections = {"inference": cfg.inference, "export": cfg.export}
    top: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, name = key.rpartition(".")
        if section:
            sections[section] = dataclasses.replace(sections[section], **{name: value})
        else:
            top[name] = value
    return dataclasses.replace(cfg, **top, **sections)


@app.command()
@_user_errors
def run(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="DICOM file/folder/DICOMDIR/zip, NIfTI, NRRD, MHA.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder [default: reports/<input name>].")] = None,
    config: Annotated[Path | None, typer.Option(help="Run config TOML (e.g. pipelines/liver_ct.toml).")] = None,
    model: Annotated[str | None, typer.Option(help="Model name (aaclip-med weights list).")] = None,
    adapter_weights: Annotated[str | None, typer.Option(help="Adapters: .safetensors or a reference checkpoint dir.")] = None,
    backbone_weights: Annotated[str | None, typer.Option(help="'openai', a CLIP file, or 'random' (untrained).")] = None,
    preset: Annotated[str | None, typer.Option(help="brain_mri, liver_ct, ct, mri or reference [default: from modality].")] = None,
    threshold: Annotated[float | None, typer.Option(help="Mask threshold in raw map units [default: checkpoint's].")] = None,
    series: Annotated[str | None, typer.Option(help="DICOM series: UID, number or description.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
    precision: Annotated[str | None, typer.Option(help="auto, fp32, bf16, fp16.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Slices per forward pass.")] = None,
    image_size: Annotated[int | None, typer.Option(min=32, help="Model input size override.")] = None,
    min_component_mm3: Annotated[float | None, typer.Option(min=0, help="Drop mask components below this size.")] = None,
    include_phi: Annotated[bool, typer.Option("--include-phi", help="Keep patient name/ID/birth date in outputs.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Hide the progress bar.")] = False,
) -> None:
    """Score a study slice by slice and write the heatmap, mask, DICOM SEG, overlays, sheets and report."""
    from aaclip_med.pipeline import run_study

    cfg = _run_config(config, {
        "preset": preset, "inference.model": model, "inference.adapter_weights": adapter_weights,
        "inference.backbone_weights": backbone_weights, "inference.threshold": threshold,
        "inference.device": device, "inference.precision": precision, "inference.batch_size": batch_size,
        "inference.image_size": image_size, "inference.min_component_mm3": min_component_mm3,
        "inference.progress": False if no_progress else None,
        "export.include_phi": True if include_phi else None,
    })
    outputs = run_study(input_path, out, config=cfg, series=series)
    res = outputs.result
    if res.untrained_backbone:
        typer.secho("note: untrained/demo model — outputs show the pipeline, not clinical accuracy",
                    fg=typer.colors.YELLOW, err=True)
    typer.echo(f"volume score {res.score:.4g} (threshold {res.threshold:.4g}); "
               f"{int(res.flagged.sum())}/{int(res.scored.sum())} scored slices flagged")
    typer.echo(f"outputs: {outputs.out_dir}")
    if "report" in outputs.files:
        typer.echo(f"report:  {outputs.files['report']}")


def main() -> None:  # pragma: no cover - console entry point used by ``python -m aaclip_med``
    sys.exit(app())
