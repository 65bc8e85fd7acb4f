"""Model registry, architectures and checkpoints.

Names load lazily (PEP 562), so `metaiqa.models.sidecar` and `metaiqa.models.pretrained` can be
used without importing torch (the light ONNX scoring path); an architecture is built, and torch
imported, on first use of `create_model` or a checkpoint function.
"""

from typing import TYPE_CHECKING, Any

_LAZY = {
    "ChecksumMismatch": "sidecar",
    "CorruptCheckpoint": "sidecar",
    "MissingChecksum": "sidecar",
    "SidecarFieldError": "sidecar",
    "SidecarMismatch": "sidecar",
    "read_sidecar": "sidecar",
    "LoadedCheckpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "upgrade_checkpoint": "checkpoint",
    "UnknownModel": "registry",
    "create_model": "registry",
    "list_models": "registry",
    "register_model": "registry",
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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'metaiqa.models' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"metaiqa.models.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
