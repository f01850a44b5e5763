"""Model fixtures: the tiny random model (built once per session) and the shared parity folder."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from aaclip_med.model import AACLIP, create_model

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
PARITY = SHARED / "parity"


def build_tiny(precision: str = "fp32", **kwargs: object) -> AACLIP:
    """Tiny random model with the expected untrained-backbone/no-adapter warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return create_model("aaclip-tiny", device="cpu", precision=precision, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def make_tiny() -> Callable[..., AACLIP]:
    """Factory of tiny random models (keyword arguments go to create_model)."""
    return build_tiny


@pytest.fixture(scope="session")
def tiny() -> AACLIP:
    return build_tiny()


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    if not (PARITY / "reference_outputs.npz").is_file():
        pytest.skip(f"parity data not found at {PARITY} (the shared/ folder beside the project is absent)")
    return PARITY
