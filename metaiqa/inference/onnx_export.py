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
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from metaiqa import __version__
from metaiqa.errors import InvalidInput
from metaiqa.inference.backends import OnnxBackend
from metaiqa.inference.onnx_load import (  # noqa: F401  (re-exported: the loading half of this module)
    _SCORE_FIELDS,
    FORMAT,
    INT8_USE,
    ONNX_INPUT,
    ONNX_OUTPUT,
    BackendUnavailable,
    StaleExport,
    _canon,
    cache_dir,
    cached_export_path,
    existing_export,
    int8_export_path,
    load_onnx,
    sidecar_path,
)
from metaiqa.io import atomic_write_bytes, atomic_write_json, sha256_bytes
from metaiqa.models.checkpoint import (
    LoadedCheckpoint,
    load_checkpoint,
)

log = logging.getLogger(__name__)

OPSET = 17


def _embedded(meta: dict[str, Any], preprocess: dict[str, Any]) -> dict[str, str]:
    return {"metaiqa_format": FORMAT, "model": str(meta["model"]), "model_kwargs": _canon(meta.get("model_kwargs") or {}),
            "preprocess": _canon(preprocess), "source_sha256": str(meta["sha256"])}


def _onnx_bytes(model: torch.nn.Module, size: int, props: dict[str, str]) -> bytes:
    """The float32 model as ONNX bytes with `props` in its metadata (TorchScript exporter)."""
    try:
        import onnx
    except ImportError as exc:
        raise BackendUnavailable(f"exporting to ONNX needs the onnx package ({exc}); pip install onnx (a metaiqa dependency)") from None
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
    out = _check_onnx_name(out)
    blob = _onnx_bytes(ckpt.model, export_size(ckpt), _embedded(ckpt.meta, ckpt.preprocess))
    return commit_export(ckpt, out, blob, {"dtype": "float32"}, note=note)


def _check_onnx_name(out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.suffix != ".onnx":
        raise InvalidInput(f"ONNX output must end in .onnx, got {out}")
    return out


def export_size(ckpt: LoadedCheckpoint) -> int:
    """Side of the example input the exporter traces with (any size runs: H and W are dynamic)."""
    return int(ckpt.preprocess.get("size", 224)) if ckpt.preprocess.get("policy") != "native" else 224


def commit_export(ckpt: LoadedCheckpoint, out: Path, blob: bytes, fields: dict[str, Any], *,
                  note: str | None = None) -> Path:
    """Write OUT.onnx, then its sidecar (the commit): the file's sha256, the fields a score depends
    on, the source checkpoint, and `fields` (dtype, and for int8 how it was calibrated)."""
    meta = ckpt.meta
    sidecar = {
        "format": FORMAT, "sha256": sha256_bytes(blob), "model": meta["model"],
        "model_kwargs": meta.get("model_kwargs") or {}, "preprocess": ckpt.preprocess,
        "source": {"name": ckpt.name, "path": str(ckpt.path), "sha256": meta["sha256"]},
        "opset": OPSET, **fields, "torch_version": torch.__version__, "metaiqa_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **({"note": note} if note else {}),
    }  # fmt: skip
    atomic_write_bytes(out, blob)
    atomic_write_json(sidecar_path(out), sidecar)
    return out


def export_onnx(src: str | os.PathLike, out: str | os.PathLike, *, note: str | None = None) -> Path:
    """`metaiqa export --onnx SRC OUT.onnx`: verify the checkpoint SRC, write OUT.onnx + OUT.onnx.json."""
    return write_onnx(load_checkpoint(src), out, note=note)


def onnx_backend_for(
    ckpt: LoadedCheckpoint, onnx_path: str | os.PathLike | None = None, *, threads: int | None = None,
    int8: str = "no",
) -> OnnxBackend:
    """The ONNX backend for `ckpt`: `onnx_path`; else NAME.int8.onnx beside it when `int8` is
    "prefer" or "require" (see INT8_USE); else NAME.onnx beside it; else the cache (exported once)."""
    sha = ckpt.meta["sha256"]
    if onnx_path is not None:
        return OnnxBackend(load_onnx(onnx_path, source_sha256=sha, threads=threads)[0])
    found = existing_export(ckpt.path, sha, int8)
    if found is None and int8 == "require":
        quantized = int8_export_path(ckpt.path)
        raise BackendUnavailable(f"backend int8: no int8 export beside the checkpoint ({quantized}); make one with "
                                 f"metaiqa export --onnx --int8 --calibration PHOTOS {ckpt.path} {quantized}")
    if found is None:
        found = cached_export_path(ckpt.name, sha)
        log.info("exporting %s to ONNX once, into %s", ckpt.name, found)
        try:
            write_onnx(ckpt, found, note="exported on demand for --backend onnx")
        except OSError as exc:
            raise BackendUnavailable(f"cannot write the ONNX export of {ckpt.name} to {found} ({exc}); run metaiqa "
                                     f"export --onnx {ckpt.path} {ckpt.path.with_suffix('.onnx')} or set "
                                     "METAIQA_CACHE_DIR") from exc
    return OnnxBackend(load_onnx(found, source_sha256=sha, threads=threads)[0])
