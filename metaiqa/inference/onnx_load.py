"""Loading verified ONNX exports, without torch (the light scoring path and the ONNX backend).

The export format and its checks are described in `metaiqa.inference.onnx_export`, which writes
the files; this module only reads them: `load_onnx` verifies a file against its sidecar (and the
checkpoint it must come from) and returns an `OnnxSession` (numpy in, numpy out).
`cached_export_path` names the on-demand export of a checkpoint in the cache.
"""

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from metaiqa.errors import MetaIQAError
from metaiqa.io import read_json_file, sha256_bytes
from metaiqa.models.sidecar import ChecksumMismatch, CorruptCheckpoint, MissingChecksum, SidecarMismatch

log = logging.getLogger(__name__)

FORMAT = "metaiqa-onnx/1"
ONNX_INPUT, ONNX_OUTPUT = "views", "score"
_SCORE_FIELDS = ("model", "model_kwargs", "preprocess")


class BackendUnavailable(MetaIQAError):
    """The chosen backend cannot run here (e.g. onnxruntime is not installed)."""


class StaleExport(CorruptCheckpoint):
    """An ONNX export made from a different checkpoint than the one it is used for."""


def import_onnxruntime():
    """onnxruntime, or BackendUnavailable saying how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(
            f"backend 'onnx' needs onnxruntime, which is not installed ({exc}); install it with "
            "pip install onnxruntime (a metaiqa dependency) or use --backend torch"
        ) from None
    return onnxruntime


def onnxruntime_available() -> bool:
    """Whether onnxruntime is installed (found, not imported: the check costs nothing)."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


class OnnxSession:
    """ONNX Runtime on the CPU, from model bytes already verified by the caller; numpy in and out.

    `threads`: intra-op threads of this session (None: ONNX Runtime's default, one per core).
    ONNX Runtime allows concurrent `run` calls; in the service the score lane runs it, and the
    heatmap lane once per map (the score shown with it).
    """

    name = "onnx"

    def __init__(self, model_bytes: bytes, *, threads: int | None = None, source: str = "<bytes>"):
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: graph-cleanup warnings are not the user's business
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise BackendUnavailable(f"{source}: ONNX Runtime cannot load this model ({type(exc).__name__}: "
                                     f"{str(exc)[:300]})") from exc
        self.source, self.threads = source, threads

    def run(self, views: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 views in [0, 1] -> (N,) float32 scores."""
        (out,) = self.session.run([ONNX_OUTPUT], {ONNX_INPUT: np.ascontiguousarray(views, dtype=np.float32)})
        return np.asarray(out, dtype=np.float32).reshape(-1)


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    """OUT.onnx -> OUT.onnx.json (NAME.json stays the checkpoint's own sidecar)."""
    p = Path(onnx_path)
    return p.with_name(p.name + ".json")


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


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
) -> tuple[OnnxSession, dict[str, Any]]:
    """A verified ONNX export as a session, and its sidecar (see metaiqa.inference.onnx_export for the checks)."""
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
    session = OnnxSession(blob, threads=threads, source=str(path))
    session.name = "onnx-int8" if meta.get("dtype") == "int8" else "onnx"
    embedded = dict(session.session.get_modelmeta().custom_metadata_map)
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
    return session, meta


def cache_dir() -> Path:
    """Where exports made on demand live ($METAIQA_CACHE_DIR, $XDG_CACHE_HOME/metaiqa, ~/.cache/metaiqa)."""
    root = os.environ.get("METAIQA_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "onnx"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "metaiqa" / "onnx"


def int8_export_path(tensor_path: str | os.PathLike) -> Path:
    """NAME.int8.onnx beside NAME.safetensors: the int8 export `--backend auto` prefers."""
    p = Path(tensor_path)
    return p.with_name(p.stem + ".int8.onnx")


#: how a backend name treats an int8 export: "onnx" never uses one, "auto" prefers it, "int8" needs it
INT8_USE = {"onnx": "no", "auto": "prefer", "int8": "require"}


def cached_export_path(name: str, sha256: str) -> Path:
    """Where the on-demand export of checkpoint `name` (sha256 `sha256`) lives in the cache."""
    return cache_dir() / f"{name}-{sha256[:16]}.onnx"


def existing_export(tensor_path: str | os.PathLike, sha256: str, int8: str = "no") -> Path | None:
    """The export a checkpoint's scorer should load, if one exists: NAME.int8.onnx beside it (unless
    `int8` is "no"), else (unless `int8` is "require") NAME.onnx beside it, else its cached export."""
    p = Path(tensor_path)
    candidates = [int8_export_path(p)] if int8 != "no" else []
    if int8 != "require":
        candidates += [p.with_suffix(".onnx"), cached_export_path(p.stem, sha256)]
    return next((c for c in candidates if sidecar_path(c).is_file()), None)
