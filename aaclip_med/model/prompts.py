"""Text prompts as data: state phrasings, templates and class names per prompt set (spec section 3).

A sentence is ``template.format(state.format(class_name))``; every (state, template) pair is used. The
``reference`` set is the reference code's exact lists with the class name "scan" (6 normal, 10 abnormal sentences).
The modality sets keep the reference templates (the adapters were trained with them) and name the anatomy and
the kind of finding. No torch here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aaclip_med.errors import ConfigError, did_you_mean
from aaclip_med.presets import PromptConfig

__all__ = ["PROMPT_SETS", "REFERENCE_TEMPLATES", "PromptSet", "build_prompts"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PromptSet:
    """One prompt set: the class name, the state phrasings (``{}`` = class name) and the templates."""

    class_name: str
    normal_states: tuple[str, ...]
    abnormal_states: tuple[str, ...]
    templates: tuple[str, ...]


REFERENCE_TEMPLATES: tuple[str, ...] = ("{}.", "a photo of {}.")

PROMPT_SETS: dict[str, PromptSet] = {
    "reference": PromptSet(
        class_name="scan",
        normal_states=("{}", "a {}", "the {}"),
        abnormal_states=("a damaged {}", "a broken {}", "a {} with flaw", "a {} with defect", "a {} with damage"),
        templates=REFERENCE_TEMPLATES,
    ),
    "brain_mri": PromptSet(
        class_name="brain MRI scan",
        normal_states=("{}", "a {}", "the {}", "a normal {}", "a healthy {}"),
        abnormal_states=(
            "a {} with a tumour",
            "a {} with a lesion",
            "a {} with a hyperintensity",
            "a {} with an abnormality",
            "a {} with a mass",
            "an abnormal {}",
        ),
        templates=REFERENCE_TEMPLATES,
    ),
    "liver_ct": PromptSet(
        class_name="liver CT scan",
        normal_states=("{}", "a {}", "the {}", "a normal {}", "a healthy {}"),
        abnormal_states=(
            "a {} with a tumour",
            "a {} with a lesion",
            "a {} with a hypodense lesion",
            "a {} with a mass",
            "an abnormal {}",
        ),
        templates=REFERENCE_TEMPLATES,
    ),
    "ct": PromptSet(
        class_name="CT scan",
        normal_states=("{}", "a {}", "the {}", "a normal {}"),
        abnormal_states=("a {} with a lesion", "a {} with a tumour", "a {} with a mass", "an abnormal {}"),
        templates=REFERENCE_TEMPLATES,
    ),
    "mri": PromptSet(
        class_name="MRI scan",
        normal_states=("{}", "an {}", "the {}", "a normal {}"),
        abnormal_states=(
            "an {} with a lesion",
            "an {} with a tumour",
            "an {} with an abnormality",
            "an abnormal {}",
        ),
        templates=REFERENCE_TEMPLATES,
    ),
}


def _sentences(class_name: str, states: tuple[str, ...], templates: tuple[str, ...]) -> list[str]:
    return [template.format(state.format(class_name)) for state in states for template in templates]


def build_prompts(config: PromptConfig | None = None) -> tuple[list[str], list[str]]:
    """Resolve a :class:`PromptConfig` into the normal and abnormal sentences.

    Fields of ``config`` that are not None override the named set's values.

    Args:
        config: Which set and overrides; None means the ``reference`` set.

    Returns:
        ``(normal_sentences, abnormal_sentences)``.

    Raises:
        ConfigError: unknown set name, or an empty state/template list.

    Example:
        >>> normal, abnormal = build_prompts(PromptConfig(set="reference"))
        >>> len(normal), len(abnormal), abnormal[1]
        (6, 10, 'a photo of a damaged scan.')
    """
    config = config or PromptConfig()
    base = PROMPT_SETS.get(config.set)
    if base is None:
        msg = (
            f"Unknown prompt set '{config.set}'; {did_you_mean(config.set, PROMPT_SETS)}"
            f"known: {', '.join(PROMPT_SETS)}. Set prompts.set to one of these."
        )
        raise ConfigError(msg)
    class_name = config.class_name if config.class_name is not None else base.class_name
    normal_states = config.normal_states if config.normal_states is not None else base.normal_states
    abnormal_states = config.abnormal_states if config.abnormal_states is not None else base.abnormal_states
    templates = config.templates if config.templates is not None else base.templates
    for field_name, values in (
        ("normal_states", normal_states),
        ("abnormal_states", abnormal_states),
        ("templates", templates),
    ):
        if not values:
            msg = f"Prompt set '{config.set}': {field_name} is empty; give at least one entry."
            raise ConfigError(msg)
    return _sentences(class_name, normal_states, templates), _sentences(class_name, abnormal_states, templates)
