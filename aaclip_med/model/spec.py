"""Registry entries and the checks shared by the factory and the model (a leaf: no torch, no open_clip).

:mod:`~aaclip_med.model.factory` builds models from :class:`ModelSpec` entries and
:class:`~aaclip_med.model.aaclip.AACLIP` checks checkpoints and training precision with the functions here, so
imports run one way: ``spec`` <- ``aaclip`` <- ``factory``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from aaclip_med.errors import ConfigError, WeightsError

__all__ = ["ModelSpec", "check_backbone_match", "check_trainable_precision"]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A registry entry: which backbone, at which size, with which adapter settings."""

    name: str
    arch: str  # open_clip model config name
    description: str
    image_size: int  # default input size (the paper runs ViT-L-14-336 at 518 -> 37x37 grid)
    default_backbone: str  # backbone_weights used when None is passed: a tag ("openai") or "random"
    quick_gelu: bool = False  # exact GELU as the reference code (spec 8.3); True is the weights' own activation
    lam_text: float = 0.1  # adaptation strength of the text adapters (spec 2.2)
    lam_image: float = 0.1  # adaptation strength of the vision adapters
    relu: bool = False  # LeakyReLU after seg/det projections (reference --relu, default off)
    default_adapters: str | None = None  # file in aaclip_med/data used when adapter_weights is None
    local_names: tuple[str, ...] = ()  # hand-downloaded file names looked for in $AACLIP_MED_WEIGHTS_DIR


def check_trainable_precision(precision: str) -> None:
    """Refuse ``int8`` for training (called before any work by ``train`` and again by the model).

    Raises:
        ConfigError: ``precision`` is ``int8``.
    """
    if precision == "int8":
        msg = "precision='int8' is inference only (quantised layers have no gradient); train with fp32/bf16/auto."
        raise ConfigError(msg)


def check_backbone_match(meta: dict[str, Any], backbone: dict[str, Any], source: str) -> None:
    """Refuse adapters trained on another backbone: architecture name and weight fingerprint must agree.

    Without a ``fingerprint`` in ``backbone`` (before the backbone is built) only the name is checked.

    Raises:
        WeightsError: the checkpoint records a different backbone.
    """
    trained = meta.get("backbone") or {}
    if trained.get("name") not in (None, backbone["name"]):
        msg = (
            f"{source}: adapters were trained for model '{meta.get('model')}' (backbone {trained.get('name')}), "
            f"this model uses backbone {backbone['name']}. Pass --model {meta.get('model')} or adapters trained "
            "for this model."
        )
        raise WeightsError(msg)
    want, have = trained.get("fingerprint"), backbone.get("fingerprint")
    if want is not None and have is not None and (
        len(want) != len(have)
        or not all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-4) for a, b in zip(want, have, strict=True))
    ):
        how = (
            f"random seed {trained.get('seed')}"
            if trained.get("source") == "random"
            else (f"weights sha256 {str(trained.get('sha256'))[:12]}...")
        )
        msg = (
            f"{source}: adapters were trained on a different {backbone['name']} backbone "
            f"({how}). Build the model with those backbone weights/seed."
        )
        raise WeightsError(msg)
