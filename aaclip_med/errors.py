"""Exception hierarchy of aaclip-med.

Every error the library raises on bad input is an :class:`AACLIPMedError` subclass whose message states the
offending value, the rule it breaks and the remedy, on one line. The CLI prints that line and exits with code 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "AACLIPMedError",
    "ConfigError",
    "DicomSeriesError",
    "GeometryError",
    "ManifestError",
    "OutputError",
    "UnknownModalityError",
    "UnknownModelError",
    "UnsupportedFormatError",
    "WeightsError",
    "did_you_mean",
]


class AACLIPMedError(Exception):
    """Base class of every error raised by aaclip-med on bad input or configuration."""


class ConfigError(AACLIPMedError):
    """A configuration value (TOML field, CLI flag, argument) is invalid."""


class UnsupportedFormatError(AACLIPMedError):
    """An input file is missing, unreadable, corrupt or of a kind aaclip-med does not read."""


class DicomSeriesError(AACLIPMedError):
    """A DICOM input holds no usable image series, or several series and no selector."""


class GeometryError(AACLIPMedError):
    """Arrays and volumes do not share a grid, or a geometry cannot be represented."""


class WeightsError(AACLIPMedError):
    """Backbone or adapter weights are missing, corrupt or do not fit the model."""


class UnknownModelError(AACLIPMedError):
    """A model name is not in the registry."""


class UnknownModalityError(AACLIPMedError):
    """A modality preset name is not known."""


class ManifestError(AACLIPMedError):
    """A cohort or training manifest is malformed or points at missing files."""


class OutputError(AACLIPMedError):
    """An output location is not writable, or would overwrite or sit inside the input."""


def did_you_mean(value: str, options: Iterable[str]) -> str:
    """Return ``"did you mean 'x'? "`` for the closest option to ``value``, or ``""`` when none is close.

    Args:
        value: The unknown name the user gave.
        options: The valid names.

    Returns:
        A short suggestion fragment to put in an error message.

    Example:
        >>> did_you_mean("liver-ct", ["liver_ct", "brain_mri"])
        "did you mean 'liver_ct'? "
    """
    close = difflib.get_close_matches(value, list(options), n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'? " if close else ""
