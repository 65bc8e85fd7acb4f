"""Checkpoints: safetensors (no pickle) + a JSON sidecar, written atomically, hash-checked.

Layout for `ckpt = Path("run/best.safetensors")`:
    run/best.safetensors   the state dict (float32, or float16 for shipped weights)
    run/best.json          {"format", "model", "model_kwargs", "preprocess", "config",
                            "data", "metrics", "sha256", "dtype", "created", ...}
The sidecar is written last, so a crash mid-save leaves the previous checkpoint intact.
"""

import datetime as _dt
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from metaiqa import __version__
from metaiqa.errors import MetaIQAError
from metaiqa.models.registry import UnknownModel, create_model

FORMAT = "metaiqa-checkpoint/1"
DEFAULT_PREPROCESS = {"policy": "center_crop", "size": 224}
_UMASK = os.umask(0)
os.umask(_UMASK)


class CorruptCheckpoint(MetaIQAError):
    """A checkpoint file is missing, unreadable or does not fit its model."""


class ChecksumMismatch(CorruptCheckpoint):
    """The tensor file's sha256 differs from the one its sidecar recorded."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder + rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600: others (a service user) could not read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> str:
    """Atomically write a safetensors file; returns its sha256."""
    blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    atomic_write_bytes(path, blob)
    return hashlib.sha256(blob).hexdigest()


def load_tensors(path: Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CorruptCheckpoint(f"checkpoint tensor file not found: {path}")
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            raise ChecksumMismatch(f"{path}: sha256 is {actual}, its sidecar expects {sha256}; file corrupt or replaced")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptCheckpoint(f"{path}: not a readable safetensors file ({exc})") from exc


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
    """Save `model` as a checkpoint; returns the tensor file's path."""
    tensor_path, sidecar_path = checkpoint_paths(path)
    state = model.state_dict()
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    digest = save_tensors(tensor_path, state)
    sidecar = {
        "format": FORMAT,
        "model": model_name,
        "model_kwargs": dict(model_kwargs or {}),
        "preprocess": dict(preprocess or DEFAULT_PREPROCESS),
        "config": dict(config or {}),
        "data": dict(data or {}),
        "metrics": dict(metrics or {}),
        "sha256": digest,
        "dtype": "float16" if half else "float32",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "metaiqa_version": __version__,
        **dict(extra or {}),
    }
    atomic_write_json(sidecar_path, sidecar)
    return tensor_path


def read_sidecar(path: str | Path) -> dict[str, Any]:
    _, sidecar_path = checkpoint_paths(path)
    if not sidecar_path.is_file():
        raise CorruptCheckpoint(f"checkpoint sidecar not found: {sidecar_path}")
    try:
        meta = json.loads(sidecar_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptCheckpoint(f"{sidecar_path}: sidecar is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "model" not in meta or "sha256" not in meta:
        raise CorruptCheckpoint(f"{sidecar_path}: not a metaiqa checkpoint sidecar (format {FORMAT} expected)")
    return meta


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
    """Rebuild the model named in the sidecar and load its verified weights (float32, eval mode)."""
    tensor_path, _ = checkpoint_paths(path)
    meta = read_sidecar(tensor_path)
    state = load_tensors(tensor_path, meta["sha256"])
    try:
        model = create_model(meta["model"], **meta.get("model_kwargs", {}))
    except UnknownModel as exc:
        raise CorruptCheckpoint(f"{tensor_path}: {exc}") from exc
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CorruptCheckpoint(f"{tensor_path}: weights do not fit model {meta['model']!r}: {exc}") from exc
    model.to(device).eval()
    return LoadedCheckpoint(model, meta, tensor_path, dict(meta.get("preprocess") or DEFAULT_PREPROCESS))


def export_checkpoint(src: str | Path, dst: str | Path, *, half: bool = True, note: str | None = None) -> Path:
    """Copy a checkpoint for shipping: verified on load, optionally float16 (half the size).

    The sidecar keeps everything the source recorded (config, data, metrics) and names the
    source file and its sha256, so a shipped model can be traced to the run that made it.
    """
    loaded = load_checkpoint(src)
    meta = loaded.meta
    known = {"format", "model", "model_kwargs", "preprocess", "config", "data", "metrics", "sha256",
             "dtype", "created", "metaiqa_version"}
    extra = {k: v for k, v in meta.items() if k not in known}
    extra["exported_from"] = {"path": str(loaded.path), "sha256": meta["sha256"], "created": meta.get("created")}
    if note:
        extra["note"] = note
    return save_checkpoint(
        dst, loaded.model, model_name=meta["model"], model_kwargs=meta.get("model_kwargs"),
        preprocess=loaded.preprocess, config=meta.get("config"), data=meta.get("data"),
        metrics=meta.get("metrics"), half=half, extra=extra,
    )
