"""Weight files: backbone weights (:mod:`.backbone`) and adapter checkpoints (:mod:`.adapter_checkpoint`).

The names are re-exported here, where the rest of the package imports them from.
"""

from __future__ import annotations

from aaclip_med._files import sha256_file
from aaclip_med.model.weights.adapter_checkpoint import (
    METADATA_KEY,
    AdapterCheckpoint,
    AdapterSource,
    check_adapter_state,
    read_adapters,
    write_adapters,
)
from aaclip_med.model.weights.backbone import (
    WEIGHTS_DIR_ENV,
    apply_backbone_state,
    as_fp32,
    fingerprint,
    import_backbone_file,
    load_backbone_state,
    native_image_size,
    resolve_backbone_file,
    weights_dir,
)

__all__ = [
    "METADATA_KEY",
    "WEIGHTS_DIR_ENV",
    "AdapterCheckpoint",
    "AdapterSource",
    "apply_backbone_state",
    "as_fp32",
    "check_adapter_state",
    "fingerprint",
    "import_backbone_file",
    "load_backbone_state",
    "native_image_size",
    "read_adapters",
    "resolve_backbone_file",
    "sha256_file",
    "weights_dir",
    "write_adapters",
]
