"""Normal-reference mode: score a study against a patch memory of a site's own normal studies (training-free).

- :mod:`~aaclip_med.reference.memory`: :class:`PatchMemory`, its safetensors file, the nearest-neighbour search and
  the refusal of a memory built for another model, adapters, input size or preset.
- :mod:`~aaclip_med.reference.scorer`: the memory map, its fusion with the text map, :func:`attach_reference`.
- :mod:`~aaclip_med.reference.build`: :func:`build_reference` (imported on its own: it reads manifests and
  folders, a cohort-level concern).

Example:
    >>> from aaclip_med.reference.build import build_reference  # doctest: +SKIP
    >>> build_reference(["normals/"], "ref.safetensors", model=model, preset="brain_mri")  # doctest: +SKIP
    >>> cfg = InferenceConfig(reference="ref.safetensors", fusion="fused")
    >>> score_volume(model, vol, "brain_mri", config=cfg)  # doctest: +SKIP
"""

from __future__ import annotations

from aaclip_med.reference.memory import PatchMemory, check_memory, load_memory, nearest_distance, save_memory
from aaclip_med.reference.scorer import REFERENCE_THRESHOLD, ReferenceScorer, attach_reference

__all__ = [
    "REFERENCE_THRESHOLD",
    "PatchMemory",
    "ReferenceScorer",
    "attach_reference",
    "check_memory",
    "load_memory",
    "nearest_distance",
    "save_memory",
]
