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


def main() -> None:  # pragma: no cover - console entry point used by ``python -m aaclip_med``
    sys.exit(app())
