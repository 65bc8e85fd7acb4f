"""ONNX exports of checkpoints, under the same hash rules as the checkpoints themselves.

    metaiqa export --onnx MODEL OUT.onnx     ->  OUT.onnx + OUT.onnx.json

`OUT.onnx` is the float32 model (input "views": (N, 3, H, W) floats in [0, 1], N/H/W dynamic;
output "score": (N,)). Inside the file, hash-covered, its metadata_props carry what changes a
score: `metaiqa_format`, `model`, `model_kwargs`, `preprocess` (canonical JSON) and
`source_sha256`, the sha256 of the checkpoint it was exported from. The sidecar
`OUT.onnx.json` (format metaiqa-onnx/1) records the file's `sha256`, the same fields and
`source` (name, path, sha256 of the checkpoint). On load (`load_onnx`):
- the file's sha256 must equal the sidecar's (`ChecksumMismatch`; a missing or malformed one
  is `MissingChecksum`), read once so what is hashed is what runs;
- the sidecar's model, model_kwargs, preprocess and source sha256 must equal the embedded ones
  (`SidecarMismatch`: the sidecar was edited);
- when it is used for a checkpoint, it must have been exported from exactly that checkpoint
  (`StaleExport`: re-export it).

`onnx_backend_for(checkpoint)` finds the export a `--backend onnx` scorer uses: an explicit
path, else NAME.onnx beside NAME.safetensors, else one exported once into the cache
($METAIQA_CACHE_DIR, else $XDG_CACHE_HOME/metaiqa, else ~/.cache/metaiqa; folder onnx/), named
by the checkpoint's hash so a changed checkpoint never meets an old export.
"""

import datetime as _dt
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from metaiqa import __version__
from metaiqa.errors import InvalidInput
from metaiqa.inference.backends import ONNX_INPUT, ONNX_OUTPUT, BackendUnavailable, OnnxBackend
from metaiqa.io import atomic_write_bytes, atomic_write_json, read_json_file, sha256_bytes
from metaiqa.models.checkpoint import (
    ChecksumMismatch,
    CorruptCheckpoint,
    LoadedCheckpoint,
    MissingChecksum,
    SidecarMismatch,
    load_checkpoint,
)

log = logging.getLogger(__name__)

FORMAT = "metaiqa-onnx/1"
OPSET = 17
_SCORE_FIELDS = ("model", "model_kwargs", "preprocess")


class StaleExport(CorruptCheckpoint):
    """An ONNX export made from a different checkpoint than the one it is used for."""


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    """OUT.onnx -> OUT.onnx.json (NAME.json stays the checkpoint's own sidecar)."""
    p = Path(onnx_path)
    return p.with_name(p.name + ".json")


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _embedded(meta: dict[str, Any], preprocess: dict[str, Any]) -> dict[str, str]:
    return {"metaiqa_format": FORMAT, "model": str(meta["model"]), "model_kwargs": _canon(meta.get("model_kwargs") or {}),
            "preprocess": _canon(preprocess), "source_sha256": str(meta["sha256"])}


def _onnx_bytes(model: torch.nn.Module, size: int, props: dict[str, str]) -> bytes:
    """The float32 model as ONNX bytes with `props` in its metadata (TorchScript exporter)."""
    try:
        import onnx
    except ImportError as exc:
        raise BackendUnavailable(f"exporting to ONNX needs the onnx package ({exc}); pip install 'metaiqa[onnx]'") from None
    buf = io.BytesIO()
    dummy = torch.rand(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer chatter
        torch.onnx.export(
            model.float().eval(), (dummy,), buf, dynamo=False, opset_version=OPSET,
            input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
            dynamic_axes={ONNX_INPUT: {0: "n", 2: "height", 3: "width"}, ONNX_OUTPUT: {0: "n"}},
        )  # fmt: skip
    proto = onnx.load_from_string(buf.getvalue())
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name, proto.producer_version = "metaiqa", __version__
    return proto.SerializeToString()


def write_onnx(ckpt: LoadedCheckpoint, out: str | os.PathLike, *, note: str | None = None) -> Path:
    """Export a loaded (verified) checkpoint: OUT.onnx, then its sidecar OUT.onnx.json (the commit)."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise InvalidInput(f"ONNX output must end in .onnx, got {out}")
    meta = ckpt.meta
    props = _embedded(meta, ckpt.preprocess)
    size = int(ckpt.preprocess.get("size", 224)) if ckpt.preprocess.get("policy") != "native" else 224
    blob = _onnx_bytes(ckpt.model, size, props)
    sidecar = {
        "format": FORMAT, "sha256": sha256_bytes(blob), "model": meta["model"],
        "model_kwargs": meta.get("model_kwargs") or {}, "preprocess": ckpt.preprocess,
        "source": {"name": ckpt.name, "path": str(ckpt.path), "sha256": meta["sha256"]},
        "opset": OPSET, "dtype": "float32", "torch_version": torch.__version__, "metaiqa_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **({"note": note} if note else {}),
    }  # fmt: skip
    atomic_write_bytes(out, blob)
    atomic_write_json(sidecar_path(out), sidecar)
    return out


def export_onnx(src: str | os.PathLike, out: str | os.PathLike, *, note: str | None = None) -> Path:
    """`metaiqa export --onnx SRC OUT.onnx`: verify the checkpoint SRC, write OUT.onnx + OUT.onnx.json."""
    return write_onnx(load_checkpoint(src), out, note=note)


def _read_sidecar(path: Path) -> dict[str, Any]:
    side = sidecar_path(path)
    meta = read_json_file(side, FORMAT, error=CorruptCheckpoint, what="metaiqa ONNX sidecar")
    sha = meta.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise MissingChecksum(f"{side}: sha256 must be 64 lower-case hex digits, got {sha!r:.80}; refusing to load")
    source = meta.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("sha256"), str):
        raise CorruptCheckpoint(f"{side}: field source.sha256 (the checkpoint it was exported from) is missing")
    return meta


def load_onnx(
    path: str | os.PathLike, *, source_sha256: str | None = None, threads: int | None = None
) -> tuple[OnnxBackend, dict[str, Any]]:
    """A verified ONNX export as a backend, and its sidecar (see the module docstring for the checks)."""
    path = Path(path)
    meta = _read_sidecar(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CorruptCheckpoint(f"{path}: cannot read the ONNX file ({exc})") from exc
    actual = sha256_bytes(blob)
    if actual != meta["sha256"]:
        raise ChecksumMismatch(f"{path}: sha256 is {actual}, its sidecar expects {meta['sha256']}; "
                               "file corrupt or replaced (re-run metaiqa export --onnx)")
    backend = OnnxBackend(blob, threads=threads, source=str(path))
    embedded = dict(backend.session.get_modelmeta().custom_metadata_map)
    if embedded.get("metaiqa_format") != FORMAT:
        raise CorruptCheckpoint(f"{path}: not a metaiqa ONNX export (no {FORMAT} metadata inside the file)")
    mine = {k: meta[k] if k == "model" else _canon(meta.get(k)) for k in _SCORE_FIELDS}
    mine["source_sha256"] = meta["source"]["sha256"]
    for key, value in mine.items():
        if embedded.get(key) != value:
            raise SidecarMismatch(f"{sidecar_path(path)}: field {key} = {str(value)[:200]} differs from the value "
                                  f"the hash covers, {str(embedded.get(key))[:200]}; the sidecar was edited",
                                  field="source.sha256" if key == "source_sha256" else key)
    if source_sha256 is not None and meta["source"]["sha256"] != source_sha256:
        raise StaleExport(f"{path} was exported from checkpoint sha256 {meta['source']['sha256'][:16]}..., not from "
                          f"this one ({source_sha256[:16]}...); re-run metaiqa export --onnx")
    return backend, meta


def cache_dir() -> Path:
    """Where exports made on demand live ($METAIQA_CACHE_DIR, $XDG_CACHE_HOME/metaiqa, ~/.cache/metaiqa)."""
    root = os.environ.get("METAIQA_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "onnx"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "metaiqa" / "onnx"


def onnx_backend_for(
    ckpt: LoadedCheckpoint, onnx_path: str | os.PathLike | None = None, *, threads: int | None = None
) -> OnnxBackend:
    """The ONNX backend for `ckpt`: `onnx_path`, else NAME.onnx beside it, else the cache (exported once)."""
    sha = ckpt.meta["sha256"]
    if onnx_path is not None:
        return load_onnx(onnx_path, source_sha256=sha, threads=threads)[0]
    beside = ckpt.path.with_suffix(".onnx")
    if sidecar_path(beside).is_file():
        return load_onnx(beside, source_sha256=sha, threads=threads)[0]
    cached = cache_dir() / f"{ckpt.name}-{sha[:16]}.onnx"
    if not sidecar_path(cached).is_file():
        log.info("exporting %s to ONNX once, into %s", ckpt.name, cached)
        try:
            write_onnx(ckpt, cached, note="exported on demand for --backend onnx")
        except OSError as exc:
            raise BackendUnavailable(f"cannot write the ONNX export of {ckpt.name} to {cached} ({exc}); run "
                                     f"metaiqa export --onnx {ckpt.path} {beside} or set METAIQA_CACHE_DIR") from exc
    return load_onnx(cached, source_sha256=sha, threads=threads)[0]
