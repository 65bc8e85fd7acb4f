"""Checkpoints: safetensors (no pickle) + a JSON sidecar, hash-checked, crash-consistent as a pair.

Layout for `ckpt = Path("run/best.safetensors")`:
    run/best.safetensors   the state dict (float32, or float16 for shipped weights) and, in the
                           safetensors header metadata, everything that changes a score:
                           {"format", "model", "model_kwargs", "preprocess", "dtype"} (strings,
                           kwargs/preprocess as canonical JSON)
    run/best.json          {"format", "model", "model_kwargs", "preprocess", "config", "data",
                            "metrics", "sha256", "dtype", "created", ...}

Verification (format metaiqa-checkpoint/2). The sidecar's `sha256` is mandatory and covers the
whole tensor file, header metadata included, so neither the weights nor the architecture
kwargs nor the scoring policy can change without the hash changing. On load, the sidecar's
copies of `model`, `model_kwargs` and `preprocess` must equal the tensor file's (an edited
sidecar is refused naming the field); the tensor file's values are the ones used. A sidecar
with `"sha256": null`, none, or a malformed field is refused with a `CorruptCheckpoint`
subclass that names the field (`MissingChecksum`, `SidecarFieldError`, `SidecarMismatch`).

Old checkpoints (format metaiqa-checkpoint/1, no metadata in the tensor file) still load when
their sidecar holds a real sha256, with a warning that kwargs/preprocess are unverified;
`upgrade_checkpoint` rewrites one in the new format with bit-identical tensors.

Write order (why a crash cannot leave an unusable pair). Two files cannot be replaced in one
atomic step, so `save_checkpoint` keeps the previous tensor file until the new sidecar is in
place, and the sidecar is the commit point:
    1. hard-link (or copy) the current NAME.safetensors to NAME.safetensors.prev
    2. atomically replace NAME.safetensors        (temp file + rename)
    3. atomically replace NAME.json                (the commit)
    4. delete NAME.safetensors.prev
A crash before 3 leaves the old sidecar with a tensor file that may already be new; the loader
then finds NAME.safetensors.prev, whose hash is the one the sidecar records, and uses it (read
only: a reader never renames files a writer may be working on). So a reader always gets the
last committed checkpoint, the old one until step 3 and the new one after, and `last` plus the
trainer state written after it still resume (the state recorded the committed model's hash).
The `.prev` file never matches `*.safetensors`, so model folders do not list it.
"""

import datetime as _dt
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from metaiqa import __version__
from metaiqa.errors import InvalidInput, MetaIQAError
from metaiqa.io import atomic_write_bytes, atomic_write_json, sha256_bytes, sha256_file
from metaiqa.models.registry import UnknownModel, create_model
from metaiqa.models.sidecar import (  # noqa: F401  (re-exported: the torch-free half of this module)
    DEFAULT_PREPROCESS,
    FORMAT,
    KNOWN_POLICIES,
    LEGACY_FORMATS,
    PREPROCESS_INTS,
    PREVIOUS_SUFFIX,
    SCORE_FIELDS,
    ChecksumMismatch,
    CorruptCheckpoint,
    MissingChecksum,
    SidecarFieldError,
    SidecarMismatch,
    _canon,
    _check_fields,
    _check_sha,
    check_preprocess,
    checkpoint_paths,
    read_sidecar,
)

log = logging.getLogger(__name__)

_MAX_HEADER = 100 * 2**20

__all__ = [
    "FORMAT", "DEFAULT_PREPROCESS", "CorruptCheckpoint", "ChecksumMismatch", "MissingChecksum",
    "SidecarFieldError", "SidecarMismatch", "LoadedCheckpoint", "atomic_write_bytes", "atomic_write_json",
    "sha256_file", "checkpoint_paths", "save_tensors", "load_tensors", "save_checkpoint", "read_sidecar",
    "load_checkpoint", "export_checkpoint", "upgrade_checkpoint",
]


# ---------------------------------------------------------------------------- paths and tensors


def _previous_path(tensor_path: Path) -> Path:
    return tensor_path.with_name(tensor_path.name + PREVIOUS_SUFFIX)


def _serialize(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=dict(metadata or {}) or None)


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> str:
    """Atomically write a safetensors file; returns its sha256."""
    blob = _serialize(tensors)
    atomic_write_bytes(path, blob)
    return sha256_bytes(blob)


def _read_verified(path: Path, sha256: str | None) -> bytes:
    """The file's bytes, checked against `sha256` (read once, so what is hashed is what is loaded).

    On a mismatch, the `.prev` copy a crashed save left behind is used if it is the one the
    sidecar vouches for (see the module docstring).
    """
    if not path.is_file():
        raise CorruptCheckpoint(f"checkpoint tensor file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorruptCheckpoint(f"{path}: cannot read the tensor file ({exc})") from exc
    if sha256 is None:
        return data
    actual = sha256_bytes(data)
    if actual == sha256:
        return data
    prev = _previous_path(path)
    if prev.is_file():
        try:
            older = prev.read_bytes()
        except OSError:
            older = b""
        if sha256_bytes(older) == sha256:
            log.warning("%s: a save was interrupted before its sidecar was written; using the committed "
                        "version %s (the next save replaces both)", path, prev.name)
            return older
    raise ChecksumMismatch(f"{path}: sha256 is {actual}, its sidecar expects {sha256}; file corrupt or replaced")


def _deserialize(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    try:
        return load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CorruptCheckpoint(f"{path}: not a readable safetensors file ({exc})") from exc


def _header_metadata(data: bytes, path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors blob ({} when it has none)."""
    if len(data) < 8:
        raise CorruptCheckpoint(f"{path}: not a readable safetensors file ({len(data)} bytes)")
    n = int.from_bytes(data[:8], "little")
    if n > min(len(data) - 8, _MAX_HEADER):
        raise CorruptCheckpoint(f"{path}: not a readable safetensors file (header length {n})")
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptCheckpoint(f"{path}: not a readable safetensors file (header: {exc})") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def load_tensors(path: Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, verified against `sha256` when given."""
    path = Path(path)
    return _deserialize(_read_verified(path, sha256), path)


# ---------------------------------------------------------------------------- sidecar fields


def _score_fields(meta: dict[str, Any], embedded: dict[str, str], path: Path) -> tuple[str, dict, dict]:
    """(model, model_kwargs, preprocess) from the hash-covered tensor file, checked against the sidecar."""
    if embedded.get("format") != FORMAT:
        if meta["format"] == FORMAT:
            raise SidecarFieldError(f"{path}: the sidecar says {FORMAT} but the tensor file carries no "
                                    "metaiqa metadata; the pair does not belong together", field="format")
        log.warning("%s: old checkpoint format (%s): the weights are hash-verified, but model_kwargs and preprocess "
                    "come from the sidecar unverified; re-save it with `metaiqa export` to cover them", path,
                    meta["format"])
        return meta["model"], meta["model_kwargs"], meta["preprocess"]
    for key in SCORE_FIELDS:
        stored = embedded.get(key)
        if stored is None:
            raise CorruptCheckpoint(f"{path}: tensor file metadata lacks {key!r}")
        mine = meta[key] if key == "model" else _canon(meta[key])
        if mine != stored:
            raise SidecarMismatch(f"{path}: sidecar field {key} = {mine[:200]} differs from the value the hash "
                                  f"covers, {stored[:200]}; the sidecar was edited", field=key)
    try:
        kwargs, pre = json.loads(embedded["model_kwargs"]), json.loads(embedded["preprocess"])
    except ValueError as exc:
        raise CorruptCheckpoint(f"{path}: tensor file metadata is not valid JSON ({exc})") from exc
    return embedded["model"], kwargs, check_preprocess(pre, str(path))


def _build_model(name: str, kwargs: dict[str, Any], state: dict[str, torch.Tensor], path: Path) -> torch.nn.Module:
    try:
        model = create_model(name, **kwargs)
    except UnknownModel as exc:
        raise SidecarFieldError(f"{path}: {exc}", field="model") from exc
    except (TypeError, ValueError, MetaIQAError) as exc:
        raise SidecarFieldError(f"{path}: model {name!r} rejects model_kwargs {_canon(kwargs)[:200]}: {exc}",
                                field="model_kwargs") from exc
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CorruptCheckpoint(f"{path}: weights do not fit model {name!r}: {exc}") from exc
    return model


# ---------------------------------------------------------------------------- save / load


def _keep_previous(tensor_path: Path) -> Path:
    """Step 1 of a save: keep the committed tensor file as NAME.safetensors.prev (see module doc)."""
    prev = _previous_path(tensor_path)
    prev.unlink(missing_ok=True)
    if tensor_path.exists():
        try:
            os.link(tensor_path, prev)
        except OSError:  # no hard links here (some network/FUSE file systems): copy
            shutil.copyfile(tensor_path, prev)
    return prev


def _write_pair(tensor_path: Path, sidecar_path: Path, blob: bytes, sidecar: dict[str, Any]) -> None:
    prev = _keep_previous(tensor_path)
    atomic_write_bytes(tensor_path, blob)
    atomic_write_json(sidecar_path, sidecar)  # the commit
    prev.unlink(missing_ok=True)


def _embedded(model_name: str, model_kwargs: Mapping[str, Any], preprocess: Mapping[str, Any], dtype: str) -> dict:
    return {"format": FORMAT, "model": model_name, "model_kwargs": _canon(dict(model_kwargs)),
            "preprocess": _canon(dict(preprocess)), "dtype": dtype}


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    *,
    model_name: str,
    model_kwargs: Mapping[str, Any] | None = None,
    preprocess: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    half: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save `model` as a checkpoint (crash-consistent pair, see module doc); returns the tensor path."""
    tensor_path, sidecar_path = checkpoint_paths(path)
    state = model.state_dict()
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    kwargs = json.loads(_canon(dict(model_kwargs or {})))
    try:
        pre = check_preprocess(json.loads(_canon(dict(preprocess or DEFAULT_PREPROCESS))))
    except SidecarFieldError as exc:
        raise InvalidInput(f"cannot save {tensor_path}: {exc}") from None
    dtype = "float16" if half else "float32"
    blob = _serialize(state, _embedded(model_name, kwargs, pre, dtype))
    sidecar = {
        "format": FORMAT,
        "model": model_name,
        "model_kwargs": kwargs,
        "preprocess": pre,
        "config": dict(config or {}),
        "data": dict(data or {}),
        "metrics": dict(metrics or {}),
        "sha256": sha256_bytes(blob),
        "dtype": dtype,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "metaiqa_version": __version__,
        **{k: v for k, v in dict(extra or {}).items() if k not in ("format", "sha256", *SCORE_FIELDS)},
    }
    _write_pair(tensor_path, sidecar_path, blob, sidecar)
    return tensor_path


@dataclass
class LoadedCheckpoint:
    model: torch.nn.Module
    meta: dict[str, Any]
    path: Path
    preprocess: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PREPROCESS))

    @property
    def name(self) -> str:
        return self.path.stem


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model a checkpoint names and load its verified weights (float32, eval mode).

    Raises CorruptCheckpoint (or a subclass naming the fault: ChecksumMismatch, MissingChecksum,
    SidecarFieldError, SidecarMismatch) for anything that cannot be verified or does not fit.
    """
    tensor_path, _ = checkpoint_paths(path)
    meta = read_sidecar(tensor_path)
    data = _read_verified(tensor_path, meta["sha256"])
    name, kwargs, pre = _score_fields(meta, _header_metadata(data, tensor_path), tensor_path)
    model = _build_model(name, kwargs, _deserialize(data, tensor_path), tensor_path)
    model.to(device).eval()
    return LoadedCheckpoint(model, meta, tensor_path, dict(pre))


_KNOWN_KEYS = {"format", "model", "model_kwargs", "preprocess", "config", "data", "metrics", "sha256",
               "dtype", "created", "metaiqa_version"}


def export_checkpoint(src: str | Path, dst: str | Path, *, half: bool = True, note: str | None = None) -> Path:
    """Copy a checkpoint for shipping: verified on load, optionally float16 (half the size).

    The sidecar keeps everything the source recorded (config, data, metrics) and names the
    source file and its sha256, so a shipped model can be traced to the run that made it.
    """
    loaded = load_checkpoint(src)
    meta = loaded.meta
    extra = {k: v for k, v in meta.items() if k not in _KNOWN_KEYS}
    extra["exported_from"] = {"path": str(loaded.path), "sha256": meta["sha256"], "created": meta.get("created")}
    if note:
        extra["note"] = note
    return save_checkpoint(
        dst, loaded.model, model_name=meta["model"], model_kwargs=meta.get("model_kwargs"),
        preprocess=loaded.preprocess, config=meta.get("config"), data=meta.get("data"),
        metrics=meta.get("metrics"), half=half, extra=extra,
    )


def upgrade_checkpoint(path: str | Path) -> Path:
    """Rewrite an old-format (metaiqa-checkpoint/1) checkpoint in place in the current format.

    The tensors are written back bit for bit (same names, dtypes and bytes); the sidecar keeps
    every field and records the old hash under "upgraded_from". The old sidecar's sha256 must
    verify first, so an unverifiable file is never blessed. A current-format checkpoint is
    verified and left alone. Returns the tensor path.
    """
    tensor_path, sidecar_path = checkpoint_paths(path)
    meta = read_sidecar(tensor_path)
    data = _read_verified(tensor_path, meta["sha256"])
    if meta["format"] == FORMAT:
        load_checkpoint(tensor_path)
        return tensor_path
    if _header_metadata(data, tensor_path).get("format") == FORMAT:
        raise SidecarFieldError(f"{sidecar_path}: says {meta['format']} but its tensor file is {FORMAT}", field="format")
    state = _deserialize(data, tensor_path)
    _build_model(meta["model"], meta["model_kwargs"], state, tensor_path)  # the pair must load as it is
    dtype = meta.get("dtype") if isinstance(meta.get("dtype"), str) else "float32"
    blob = _serialize(state, _embedded(meta["model"], meta["model_kwargs"], meta["preprocess"], dtype))
    rewritten = load(blob)
    if rewritten.keys() != state.keys() or not all(
        rewritten[k].dtype == v.dtype and torch.equal(rewritten[k], v) for k, v in state.items()
    ):
        raise CorruptCheckpoint(f"{tensor_path}: the upgraded tensors would differ from the original; nothing written")
    sidecar = {**meta, "format": FORMAT, "sha256": sha256_bytes(blob),
               "upgraded_from": {"format": meta["format"], "sha256": meta["sha256"]}}
    _write_pair(tensor_path, sidecar_path, blob, sidecar)
    return tensor_path
