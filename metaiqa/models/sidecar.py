"""Checkpoint sidecars and their errors, without torch (see metaiqa.models.checkpoint for the format).

Reading and checking a sidecar, locating a checkpoint's files and the exception types live here
so the light ONNX scoring path (`metaiqa.inference.lite`) can verify a checkpoint's identity
without importing torch; `metaiqa.models.checkpoint` re-exports every name.
"""

import json
import re
from pathlib import Path
from typing import Any

from metaiqa.errors import MetaIQAError
from metaiqa.io import read_json_file

FORMAT = "metaiqa-checkpoint/2"
LEGACY_FORMATS = ("metaiqa-checkpoint/1",)
DEFAULT_PREPROCESS = {"policy": "center_crop", "size": 224}
KNOWN_POLICIES = ("views", "center_crop", "resize", "native")
#: integer preprocess keys and their allowed range (beyond these a policy would be nonsense or huge)
PREPROCESS_INTS = {"size": (8, 4096), "scale": (8, 8192), "max_views": (1, 256)}
SCORE_FIELDS = ("model", "model_kwargs", "preprocess")
PREVIOUS_SUFFIX = ".prev"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

class CorruptCheckpoint(MetaIQAError):
    """A checkpoint file is missing, unreadable or does not fit its model."""


class ChecksumMismatch(CorruptCheckpoint):
    """The tensor file's sha256 differs from the one its sidecar recorded."""


class SidecarFieldError(CorruptCheckpoint):
    """A sidecar field is missing or malformed; `field` names it (e.g. "preprocess.size")."""

    def __init__(self, message: str, *, field: str):
        super().__init__(message)
        self.field = field


class MissingChecksum(ChecksumMismatch, SidecarFieldError):
    """The sidecar records no usable sha256 (null, absent, not 64 hex digits): nothing to verify."""

    def __init__(self, message: str):
        super().__init__(message, field="sha256")


class SidecarMismatch(SidecarFieldError):
    """The sidecar's copy of a score-relevant field differs from the one inside the tensor file."""


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """(tensor file, sidecar) for a .safetensors path, a .json sidecar path or a folder."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    if p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    if p.suffix != ".safetensors":
        p = p.with_name(p.name + ".safetensors")
    return p, p.with_suffix(".json")


def _canon(obj: Any) -> str:
    """Canonical JSON text (what the tensor file stores; equal values give equal text)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def check_preprocess(pre: Any, where: str = "checkpoint") -> dict[str, Any]:
    """A scoring policy as the scorer understands it, or SidecarFieldError naming the bad key."""
    if not isinstance(pre, dict):
        raise SidecarFieldError(f"{where}: preprocess must be an object like {DEFAULT_PREPROCESS}, got {pre!r:.80}",
                                field="preprocess")
    policy = pre.get("policy", "center_crop")
    if policy not in KNOWN_POLICIES:
        raise SidecarFieldError(f"{where}: preprocess.policy {policy!r:.80} is not one of {', '.join(KNOWN_POLICIES)}",
                                field="preprocess.policy")
    for key, (lo, hi) in PREPROCESS_INTS.items():
        if key not in pre:
            continue
        value = pre[key]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise SidecarFieldError(f"{where}: preprocess.{key} must be an integer in [{lo}, {hi}], got {value!r:.80}",
                                    field=f"preprocess.{key}")
    return dict(pre)


def _check_sha(meta: dict[str, Any], where: Path) -> None:
    sha = meta.get("sha256")
    if sha is None:
        raise MissingChecksum(
            f"{where}: the sidecar records no sha256 ({'null' if 'sha256' in meta else 'missing'}), so the weights "
            "cannot be verified; refusing to load. Use a checkpoint saved by metaiqa (meta-train, fine-tune, export)"
        )
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise MissingChecksum(f"{where}: sha256 must be 64 lower-case hex digits, got {sha!r:.80}")


def _check_fields(meta: dict[str, Any], where: Path) -> dict[str, Any]:
    """Validate the fields loading depends on; old-format gaps get their old defaults."""
    legacy = meta.get("format") in LEGACY_FORMATS
    _check_sha(meta, where)
    if not isinstance(meta.get("model"), str) or not meta["model"]:
        raise SidecarFieldError(f"{where}: model must be a registered architecture name, got {meta.get('model')!r:.80}",
                                field="model")
    if legacy:
        meta.setdefault("model_kwargs", {})
        meta.setdefault("preprocess", dict(DEFAULT_PREPROCESS))
    for key in ("model_kwargs", "preprocess"):
        if key not in meta:
            raise SidecarFieldError(f"{where}: field {key} is missing", field=key)
    kwargs = meta["model_kwargs"]
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise SidecarFieldError(f"{where}: model_kwargs must be an object of keyword arguments, got {kwargs!r:.80}",
                                field="model_kwargs")
    meta["preprocess"] = check_preprocess(meta["preprocess"], str(where))
    return meta


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The checkpoint's sidecar, its loading fields checked (CorruptCheckpoint subclasses name them)."""
    _, sidecar_path = checkpoint_paths(path)
    meta = read_json_file(sidecar_path, (FORMAT, *LEGACY_FORMATS), error=CorruptCheckpoint,
                          what="metaiqa checkpoint sidecar")
    return _check_fields(meta, sidecar_path)
