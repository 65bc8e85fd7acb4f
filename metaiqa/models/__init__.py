"""Model registry, architectures and checkpoints."""

from metaiqa.models import resnet_iqa as _resnet_iqa  # noqa: F401  (registers the models)
from metaiqa.models.checkpoint import (
    ChecksumMismatch,
    CorruptCheckpoint,
    LoadedCheckpoint,
    MissingChecksum,
    SidecarFieldError,
    SidecarMismatch,
    load_checkpoint,
    read_sidecar,
    save_checkpoint,
    upgrade_checkpoint,
)
from metaiqa.models.registry import UnknownModel, create_model, list_models, register_model

__all__ = [
    "ChecksumMismatch",
    "CorruptCheckpoint",
    "LoadedCheckpoint",
    "MissingChecksum",
    "SidecarFieldError",
    "SidecarMismatch",
    "UnknownModel",
    "create_model",
    "list_models",
    "load_checkpoint",
    "read_sidecar",
    "register_model",
    "save_checkpoint",
    "upgrade_checkpoint",
]
