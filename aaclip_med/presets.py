"""Modality presets: what depends on the modality is a table (:data:`MODALITY_PRESETS`), not ``if`` chains.

A preset bundles the intensity window, the foreground rule used to skip empty slices, the prompt set and the map
blur. :func:`get_preset` looks one up by name; :func:`preset_for_modality` maps a DICOM Modality to its default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aaclip_med.errors import UnknownModalityError, did_you_mean

__all__ = [
    "MODALITY_PRESETS",
    "ForegroundRule",
    "ModalityPreset",
    "PromptConfig",
    "WindowConfig",
    "get_preset",
    "preset_for_modality",
]

WindowMode = Literal["hu", "percentile", "zscore"]
WindowScope = Literal["volume", "image"]


@dataclass(frozen=True, slots=True)
class WindowConfig:
    """How a slice's intensities are mapped to [0, 1] before the CLIP normalisation.

    ``hu``: clip to [lower, upper] in stored units (HU for CT) and scale. ``percentile``: clip to the
    [lower, upper] percentiles of the foreground. ``zscore``: z-score within the foreground, then clip to
    [lower, upper] standard deviations and scale.

    ``scope`` says over which voxels percentiles and z-scores are taken (DESIGN §0 "Window per volume"):
    ``volume`` (default) derives the bounds once from the foreground of the whole volume and applies them to every
    slice, so the same tissue gets the same input value on every slice; ``image`` derives them slice by slice, as
    BMAD renders each slice min-max (the ``reference`` preset, for paper reproduction only: a lesion then darkens
    the normal tissue of its own slice).
    """

    mode: WindowMode = "percentile"
    lower: float = 0.5  # percentiles: ignore the darkest 0.5 % (noise) but keep the whole dynamic range
    upper: float = 99.5  # bright outliers (vessels, flow artefacts) should not squash the contrast
    scope: WindowScope = "volume"  # one window per volume; "image" only reproduces the reference's rendering


@dataclass(frozen=True, slots=True)
class ForegroundRule:
    """Which voxels count as body/brain; slices with too little foreground are not scored.

    ``absolute``: value > threshold (stored units, e.g. HU > -500 is tissue in CT). ``relative``: value >
    vmin + threshold * (p99.5 - vmin) over the whole volume (MRI has no absolute scale). ``body``: keep only the
    largest 3D connected component (after an in-plane opening that cuts thin bridges to the CT table and
    blankets) and fill its holes slice by slice (lungs, bowel gas), so the foreground is the patient's body.
    """

    mode: Literal["absolute", "relative"] = "relative"
    threshold: float = 0.05  # 5 % of the robust range separates air/skull-stripped zeros from tissue
    min_fraction: float = 0.01  # under 1 % foreground the slice is air or the edge of the field of view
    body: bool = False  # largest component, holes filled (CT: the body, not the table)


@dataclass(frozen=True, slots=True)
class PromptConfig:
    """Which prompt set builds the text anchors; any field set here overrides the set's own value."""

    set: str = "reference"  # a key of aaclip_med.model.prompts.PROMPT_SETS
    class_name: str | None = None  # the reference code uses "scan" for every medical set
    normal_states: tuple[str, ...] | None = None
    abnormal_states: tuple[str, ...] | None = None
    templates: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ModalityPreset:
    """Everything that depends on the modality: window, foreground rule, prompts and map smoothing."""

    name: str
    description: str
    window: WindowConfig
    foreground: ForegroundRule
    prompts: PromptConfig
    blur_kernel: int = 9  # spec section 6: medical domain blurs the 37x37 maps with a 9x9 Gaussian ...
    blur_sigma: float = 1.5  # ... of sigma 1.5 (industrial: 7 and 1.0)


_CT_FOREGROUND = ForegroundRule(mode="absolute", threshold=-500.0, min_fraction=0.01, body=True)
_MR_FOREGROUND = ForegroundRule()

MODALITY_PRESETS: dict[str, ModalityPreset] = {
    "brain_mri": ModalityPreset(
        name="brain_mri",
        description="Brain MRI (FLAIR/T2): 0.5-99.5 percentile window of the volume's brain, brain-MRI prompts",
        window=WindowConfig("percentile", 0.5, 99.5),
        foreground=_MR_FOREGROUND,
        prompts=PromptConfig(set="brain_mri"),
    ),
    "liver_ct": ModalityPreset(
        name="liver_ct",
        description="Liver CT: HU window [-200, 250] (BMAD LiTS rendering, W450/L25), liver-CT prompts",
        window=WindowConfig("hu", -200.0, 250.0),
        foreground=_CT_FOREGROUND,
        prompts=PromptConfig(set="liver_ct"),
    ),
    "ct": ModalityPreset(
        name="ct",
        description="Generic CT: soft-tissue HU window [-160, 240] (W400/L40), generic CT prompts",
        window=WindowConfig("hu", -160.0, 240.0),
        foreground=_CT_FOREGROUND,
        prompts=PromptConfig(set="ct"),
    ),
    "mri": ModalityPreset(
        name="mri",
        description="Generic MRI: 1-99 percentile window of the volume's foreground, generic MRI prompts",
        window=WindowConfig("percentile", 1.0, 99.0),
        foreground=_MR_FOREGROUND,
        prompts=PromptConfig(set="mri"),
    ),
    "reference": ModalityPreset(
        name="reference",
        description="Reference AA-CLIP: per-slice min-max, the reference prompts with class name 'scan'",
        window=WindowConfig("percentile", 0.0, 100.0, scope="image"),
        foreground=_MR_FOREGROUND,
        prompts=PromptConfig(set="reference"),
    ),
}

_MODALITY_TO_PRESET = {"CT": "ct", "MR": "mri"}


def get_preset(preset: str | ModalityPreset) -> ModalityPreset:
    """Look up a modality preset by name (a preset object is returned unchanged).

    Raises:
        UnknownModalityError: ``preset`` is not a key of :data:`MODALITY_PRESETS`.

    Example:
        >>> get_preset("liver_ct").window.upper
        250.0
    """
    if isinstance(preset, ModalityPreset):
        return preset
    try:
        return MODALITY_PRESETS[preset]
    except KeyError:
        known = ", ".join(MODALITY_PRESETS)
        msg = (
            f"Unknown modality preset '{preset}'; {did_you_mean(preset, MODALITY_PRESETS)}Known: {known}. "
            "Pass --preset with one of these or add a preset in a run-config TOML."
        )
        raise UnknownModalityError(msg) from None


def preset_for_modality(modality: str | None) -> str:
    """Default preset name for a DICOM Modality value (``CT`` -> ``ct``, ``MR`` -> ``mri``).

    Raises:
        UnknownModalityError: the modality has no default preset.
    """
    if modality in _MODALITY_TO_PRESET:
        return _MODALITY_TO_PRESET[modality]
    msg = (
        f"No default preset for modality '{modality}'; only CT and MR are mapped. "
        f"Pass --preset (one of {', '.join(MODALITY_PRESETS)})."
    )
    raise UnknownModalityError(msg)
