"""Model registry, architectures and checkpoints.

Names load lazily (PEP 562), so `metaiqa.models.sidecar` and `metaiqa.models.pretrained` can be
used without importing torch (the light ONNX scoring path); an architecture is built, and torch
imported, on first use of `create_model` or a checkpoint function.
"""

from typing import TYPE_CHECKING

from metaiqa._lazy import lazy_exports

_LAZY = {
    "ChecksumMismatch": "metaiqa.models.sidecar",
    "CorruptCheckpoint": "metaiqa.models.sidecar",
    "MissingChecksum": "metaiqa.models.sidecar",
    "SidecarFieldError": "metaiqa.models.sidecar",
    "SidecarMismatch": "metaiqa.models.sidecar",
    "read_sidecar": "metaiqa.models.sidecar",
    "LoadedCheckpoint": "metaiqa.models.checkpoint",
    "load_checkpoint": "metaiqa.models.checkpoint",
    "save_checkpoint": "metaiqa.models.checkpoint",
    "upgrade_checkpoint": "metaiqa.models.checkpoint",
    "UnknownModel": "metaiqa.models.registry",
    "create_model": "metaiqa.models.registry",
    "list_models": "metaiqa.models.registry",
    "register_model": "metaiqa.models.registry",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:
    from metaiqa.models.checkpoint import (  # noqa: F401
        LoadedCheckpoint,
        load_checkpoint,
        save_checkpoint,
        upgrade_checkpoint,
    )
    from metaiqa.models.registry import UnknownModel, create_model, list_models, register_model  # noqa: F401
    from metaiqa.models.sidecar import (  # noqa: F401
        ChecksumMismatch,
        CorruptCheckpoint,
        MissingChecksum,
        SidecarFieldError,
        SidecarMismatch,
        read_sidecar,
    )


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
