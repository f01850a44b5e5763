"""Prompt sets as data and their resolution from PromptConfig."""

from __future__ import annotations

import pytest

from aaclip_med.errors import ConfigError
from aaclip_med.model.prompts import PROMPT_SETS, build_prompts
from aaclip_med.presets import MODALITY_PRESETS, PromptConfig


def test_reference_set_matches_spec() -> None:
    normal, abnormal = build_prompts(PromptConfig(set="reference"))
    assert len(normal) == 6 and len(abnormal) == 10
    assert "the scan." in normal and "a photo of a damaged scan." in abnormal
    assert "a scan with defect." in abnormal


def test_every_preset_resolves() -> None:
    for preset in MODALITY_PRESETS.values():
        normal, abnormal = build_prompts(preset.prompts)
        assert normal and abnormal and not set(normal) & set(abnormal)


def test_modality_phrasing() -> None:
    _, abnormal = build_prompts(PromptConfig(set="brain_mri"))
    assert "a photo of a brain MRI scan with a tumour." in abnormal
    _, abnormal = build_prompts(PromptConfig(set="liver_ct"))
    assert "a liver CT scan with a hypodense lesion." in abnormal


def test_overrides() -> None:
    cfg = PromptConfig(set="reference", class_name="liver", templates=("{}",))
    normal, abnormal = build_prompts(cfg)
    assert normal == ["liver", "a liver", "the liver"] and len(abnormal) == 5


def test_unknown_set_and_empty() -> None:
    with pytest.raises(ConfigError, match="did you mean 'brain_mri'"):
        build_prompts(PromptConfig(set="brain-mri"))
    with pytest.raises(ConfigError, match="templates is empty"):
        build_prompts(PromptConfig(templates=()))
    assert set(PROMPT_SETS) >= {"reference", "brain_mri", "liver_ct", "ct", "mri"}
