"""The ``aaclip-med`` command line (typer). Thin: parse flags, call the library, map errors to exit codes.

Heavy packages (torch, open_clip, MONAI) are imported inside the commands, after the arguments and paths are
checked, so ``--help`` and refusals stay fast. Exit codes: 0 done; 2 an error the user can fix
(:class:`~aaclip_med.errors.AACLIPMedError`: one red line); 3 ``batch`` finished but some cases failed (see
failures.csv); 1 a bug (traceback); 130 Ctrl-C.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core
from typer.core import TyperGroup

from aaclip_med._logging import configure_logging
from aaclip_med.cli_options import (
    EXIT_CASES_FAILED,
    AdapterOpt,
    BackboneOpt,
    BackendOpt,
    BaseDirOpt,
    BatchOpt,
    ComponentOpt,
    ConfigOpt,
    DeviceOpt,
    FractionalSegOpt,
    FusionOpt,
    FusionWeightOpt,
    InputArg,
    KeepNamesOpt,
    MaskInputOpt,
    MemoryBlurOpt,
    ModelOpt,
    NoProgressOpt,
    NoReportOpt,
    NoSegOpt,
    OrganLabelOpt,
    OrganOpt,
    OverlaysOpt,
    OverwriteOpt,
    ParametricMapOpt,
    PhiOpt,
    PickleOpt,
    PrecisionOpt,
    PresetOpt,
    QuietOpt,
    ReferenceOpt,
    RegionOpt,
    SizeOpt,
    ThresholdOpt,
    VerboseOpt,
    check_paths,
    fail,
    heavy_imports,
    scoring_config,
    scoring_flags,
    user_errors,
)
from aaclip_med.cli_tools import reference_app, train, weights_app

if TYPE_CHECKING:
    from typer._click import Context

# recent typer vendors click as typer._click; older releases use click itself
_click: Any = getattr(typer.core, "_click", None) or getattr(typer.core, "click")  # noqa: B009


class _OneLineUsageErrors(TyperGroup):
    """Report a bad flag or argument of a command as one ``error:`` line (exit 2), not click's usage box."""

    def invoke(self, ctx: Context) -> object:
        try:
            return super().invoke(ctx)
        except _click.exceptions.NoArgsIsHelpError:
            raise
        except _click.exceptions.UsageError as err:
            where = f"`{err.ctx.command_path} --help`" if err.ctx is not None else "--help"
            typer.secho(f"error: {err.format_message().rstrip('.')} (see {where}).", fg=typer.colors.RED, err=True)
            raise typer.Exit(err.exit_code) from err


app = typer.Typer(
    cls=_OneLineUsageErrors,
    name="aaclip-med",
    help="AA-CLIP anomaly detection for medical volumes (DICOM, NIfTI, NRRD/MHA).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: rich's import and layout doubled `--help` time (> 0.5 s)
)


def _version(value: bool) -> None:
    if value:
        from aaclip_med._version import __version__

        typer.echo(f"aaclip-med {__version__}")
        raise typer.Exit


@app.callback()
def _main(
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    configure_logging(-1 if quiet else verbose)


@app.command()
@user_errors
def info(
    path: Annotated[Path, typer.Argument(help="DICOM file/folder/DICOMDIR/zip, NIfTI, NRRD or MHA.")],
    series: Annotated[str | None, typer.Option(help="Series UID, number or description.")] = None,
    volume_index: Annotated[int | None, typer.Option(help="Volume of a 4D NIfTI.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Read a volume and describe it.

    Shape, spacing, orientation, modality, series and value range.
    """
    check_paths(path)
    from aaclip_med.io import describe_volume, read_volume

    desc = describe_volume(read_volume(path, series=series, volume_index=volume_index))
    if as_json:
        typer.echo(json.dumps(desc, indent=2, default=str))
        return
    width = max(len(k) for k in desc)
    for key, value in desc.items():
        if isinstance(value, (list, tuple)) and (not value or isinstance(value[0], str)):
            value = "; ".join(value) or "none"
        typer.echo(f"{key:<{width}}  {value}")


@app.command()
@user_errors
def run(
    input_path: InputArg,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default reports/NAME).")] = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    adapter_weights: AdapterOpt = None,
    backbone_weights: BackboneOpt = None,
    preset: PresetOpt = None,
    threshold: ThresholdOpt = None,
    series: Annotated[str | None, typer.Option(help="DICOM series: UID, number or description.")] = None,
    volume_index: Annotated[int | None, typer.Option(min=0, help="Volume of a 4D NIfTI to score.")] = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    backend: BackendOpt = None,
    batch_size: BatchOpt = None,
    image_size: SizeOpt = None,
    min_component_mm3: ComponentOpt = None,
    no_seg: NoSegOpt = False,
    parametric_map: ParametricMapOpt = False,
    fractional_seg: FractionalSegOpt = False,
    overlays: OverlaysOpt = None,
    no_report: NoReportOpt = False,
    overwrite: OverwriteOpt = False,
    case_id: Annotated[
        str | None, typer.Option(help="Name of the case in sheets and report (default: a hash of the path).")
    ] = None,
    keep_names: KeepNamesOpt = False,
    base_dir: BaseDirOpt = None,
    trust_pickle: PickleOpt = False,
    include_phi: PhiOpt = False,
    no_progress: NoProgressOpt = False,
    score_region: RegionOpt = None,
    organ_mask: Annotated[
        Path | None, typer.Option(help="Organ mask on the image grid (NIfTI, DICOM series/zip, TotalSegmentator).")
    ] = None,
    organ: OrganOpt = None,
    organ_label: OrganLabelOpt = None,
    mask_outside_organ: MaskInputOpt = False,
    reference: ReferenceOpt = None,
    fusion: FusionOpt = None,
    fusion_weight: FusionWeightOpt = None,
    memory_blur: MemoryBlurOpt = None,
) -> None:
    """Score one study: heatmap, mask, DICOM SEG and report.

    Slice by slice; also overlays, slices.csv, qa.json and run.json.
    """
    from aaclip_med._files import check_output_folder, default_output_dir

    if organ_mask is None and (organ is not None or organ_label is not None):
        fail("--organ and --organ-label select inside an organ mask; pass --organ-mask MASK (or drop them).")
    cfg = scoring_config(config, progress=False if no_progress else None, **scoring_flags(locals()))
    check_paths(input_path, organ_mask, Path(reference) if reference else None)
    inputs = [input_path] if organ_mask is None else [input_path, organ_mask]
    check_output_folder(out or default_output_dir(input_path), inputs, overwrite=overwrite)
    heavy_imports("the scoring pipeline")
    from aaclip_med.pipeline import run_study

    outputs = run_study(input_path, out, config=cfg, series=series, volume_index=volume_index, case_id=case_id,
                        overwrite=overwrite, organ_mask=organ_mask)  # fmt: skip
    res = outputs.result
    if res.untrained_backbone:
        typer.secho(
            "note: untrained/demo model — outputs show the pipeline, not clinical accuracy",
            fg=typer.colors.YELLOW,
            err=True,
        )
    typer.echo(
        f"volume score {res.score:.4g} (threshold {res.threshold:.4g}); "
        f"{int(res.flagged.sum())}/{int(res.scored.sum())} scored slices flagged"
    )
    from aaclip_med.report import describe_precision

    run_json = json.loads(outputs.files["run"].read_text(encoding="utf-8"))
    typer.echo(f"precision: {describe_precision(run_json['model']['metadata'])}")
    n_warnings = len(res.qa.get("warnings", []))
    if n_warnings:
        typer.secho(f"{n_warnings} QA warning(s): see qa.json and the report", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"outputs: {outputs.out_dir}")
    if "report" in outputs.files:
        typer.echo(f"report:  {outputs.files['report']}")


@app.command()
@user_errors
def batch(
    source: Annotated[Path, typer.Argument(metavar="MANIFEST_OR_FOLDER", help="Manifest CSV or a data folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Cohort output folder.")],
    config: ConfigOpt = None,
    preset: Annotated[str | None, typer.Option(help="Preset for cases without one in the manifest.")] = None,
    model: ModelOpt = None,
    backbone_weights: BackboneOpt = None,
    adapter_weights: AdapterOpt = None,
    threshold: ThresholdOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    backend: BackendOpt = None,
    batch_size: BatchOpt = None,
    image_size: SizeOpt = None,
    min_component_mm3: ComponentOpt = None,
    no_seg: NoSegOpt = False,
    parametric_map: ParametricMapOpt = False,
    fractional_seg: FractionalSegOpt = False,
    overlays: OverlaysOpt = None,
    no_report: NoReportOpt = False,
    resume: Annotated[bool, typer.Option("--continue", help="Skip finished cases (with run.json).")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Recompute a finished cohort in OUT (files you added are kept).")
    ] = False,
    num_parts: Annotated[int, typer.Option(min=1, help="Split the cohort into N parts (sorted ids, i % N).")] = 1,
    part_id: Annotated[int, typer.Option(min=0, help="The part this call computes (0-based).")] = 0,
    workers: Annotated[int, typer.Option(min=0, help="Dask LocalCluster worker processes (0: in-process).")] = 0,
    scheduler: Annotated[str | None, typer.Option(help="'local' or a Dask scheduler tcp://HOST:PORT.")] = None,
    keep_names: KeepNamesOpt = False,
    base_dir: BaseDirOpt = None,
    trust_pickle: PickleOpt = False,
    include_phi: PhiOpt = False,
    no_progress: NoProgressOpt = False,
    score_region: RegionOpt = None,
    organ: OrganOpt = None,
    organ_label: OrganLabelOpt = None,
    mask_outside_organ: MaskInputOpt = False,
    reference: ReferenceOpt = None,
    fusion: FusionOpt = None,
    fusion_weight: FusionWeightOpt = None,
    memory_blur: MemoryBlurOpt = None,
) -> None:
    """Score a cohort (manifest or folder), resumably.

    A manifest's organ_mask column scores each case inside its organ.

    One OUT/cases/<case_id>/ per study plus cohort sheets and report. Exit code 3 when any case failed.
    """
    cfg = scoring_config(config, progress=False, **scoring_flags(locals()))  # cases have their own progress line
    from aaclip_med._files import check_cohort_folder

    if not source.exists():
        fail(f"{source}: no such manifest CSV or data folder; check the path.")
    check_paths(Path(reference) if reference else None)
    check_cohort_folder(out, [] if source.is_file() else [source], resume=resume, overwrite=overwrite,
                        num_parts=num_parts)  # fmt: skip
    heavy_imports("the scoring pipeline")
    from aaclip_med.cohort import run_cohort

    res = run_cohort(source, out, config=cfg, resume=resume, num_parts=num_parts, part_id=part_id,
                     workers=workers, scheduler=scheduler, progress=not no_progress,
                     overwrite=overwrite)  # fmt: skip
    typer.echo(f"{res.n_done} cases scored, {res.n_skipped} already finished, {res.n_failed} failed")
    if num_parts > 1:
        typer.echo(f"part {part_id} of {num_parts} done; assemble: a final `batch --continue` (no --num-parts)")
    typer.echo(f"outputs: {out}")
    if res.n_failed:
        n_cases = res.n_done + res.n_skipped + res.n_failed
        fail(f"{res.n_failed} of {n_cases} cases failed; see {res.files['failures']}", code=EXIT_CASES_FAILED)


@app.command("eval")
@user_errors
def eval_(
    predictions: Annotated[Path, typer.Argument(help="Output folder of `aaclip-med run` or `batch`.")],
    labels: Annotated[Path, typer.Option(help="A mask, a manifest CSV (case_id,mask,label) or a mask folder.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Sheets folder (PREDICTIONS/evaluation)")] = None,
    normalisation: Annotated[str, typer.Option(help="none (raw units), set (reference code) or volume.")] = "none",
    labels_threshold: Annotated[
        float | None, typer.Option(help="Binarise non-integer label maps at this value (else they are refused).")
    ] = None,
    xlsx: Annotated[bool, typer.Option("--xlsx", help="Also write evaluation.xlsx.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier evaluation in OUT (files you added are kept).")
    ] = False,
    organ: OrganOpt = None,
    organ_label: OrganLabelOpt = None,
) -> None:
    """Evaluate predictions against reference masks.

    Writes slice_metrics.csv, cases.csv, summary.csv, summary.json and report.html.
    """
    check_paths(predictions, labels)
    from aaclip_med.cohort import evaluate

    res = evaluate(predictions, labels, out, normalisation=normalisation, xlsx=xlsx,
                   labels_threshold=labels_threshold, overwrite=overwrite, organ=organ,
                   organ_label=organ_label)  # fmt: skip
    for row in res.sheets.summary:
        values = ", ".join(f"{k} {row[k]:.4f}" for k in ("pixel_auroc", "pixel_ap", "image_auroc", "image_ap")
                           if isinstance(row.get(k), float) and row[k] == row[k])  # fmt: skip
        typer.echo(f"{row.get('preset')} [{row.get('map', 'model')}, {row.get('region', 'all')}]: {values}")
    for line in res.sheets.verdicts:
        typer.echo(line)
    if res.sheets.untrained:
        typer.secho("note: untrained/demo model: these numbers are not accuracy", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"sheets: {res.out_dir}")


app.command()(train)
app.add_typer(weights_app, name="weights")
app.add_typer(reference_app, name="reference")


def main() -> None:  # pragma: no cover - console entry point used by ``python -m aaclip_med``
    """Run the command line and exit with its code (the ``python -m aaclip_med`` entry point)."""
    sys.exit(app())
