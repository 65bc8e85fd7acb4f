"""The light scoring path: a checkpoint's verified ONNX export, run by ONNX Runtime, with no torch.

`metaiqa score` / `metaiqa gate` with the ONNX backend spend most of a short run importing torch
(~2 s of a ~5 s start) and building a model they never run. `LiteScorer.open` avoids both when
it can, with the same checks as the full path:

- the checkpoint's sidecar is read and its tensor file hashed (sha256 equal to the sidecar's);
- the export is NAME.int8.onnx beside the checkpoint (unless int8 is not wanted), else NAME.onnx
  beside it, else the cached one named by the checkpoint's hash (`metaiqa.inference.onnx_load`), verified against its own sidecar and required to come
  from exactly this checkpoint;
- the policy is "views" (the policy of whole-image models; the others need torch resizing).

Anything else (no export yet, another policy, onnxruntime missing, a file that fails a check)
returns None, and the caller takes the full path (`Scorer.from_checkpoint(backend="onnx")`),
which exports once into the cache or raises the error that names the problem. Scores equal the
full ONNX path's: the same decode, the same uint8 views (`metaiqa.data.viewing`), the same file.
"""

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from metaiqa.data.viewing import views_float
from metaiqa.errors import MetaIQAError
from metaiqa.inference.decode import DecodeLimits
from metaiqa.inference.onnx_load import OnnxSession, existing_export, load_onnx
from metaiqa.inference.pipeline import ImagePipeline
from metaiqa.io import sha256_file
from metaiqa.models.sidecar import checkpoint_paths, read_sidecar

log = logging.getLogger(__name__)


class LiteScorer(ImagePipeline):
    """A verified ONNX session plus the "views" policy it was exported with (numpy views)."""

    def __init__(self, session: OnnxSession, preprocess: dict[str, Any], *, name: str,
                 meta: dict[str, Any] | None = None, limits: DecodeLimits = DecodeLimits()):
        self.session = session
        self.preprocess = dict(preprocess)
        self.name = name
        self.meta = dict(meta or {})
        self.crops = 1
        self.limits = limits

    @classmethod
    def open(cls, path: str | os.PathLike, *, threads: int | None = None, int8: str = "prefer") -> "LiteScorer | None":
        """The light scorer for checkpoint `path`, or None when only the full path can score it.

        `int8` as in `INT8_USE`: "prefer" (NAME.int8.onnx beside the checkpoint if present), "no"
        (float32 exports only) or "require" (None without it: the full path then says how to make one).
        """
        try:
            return cls._open(Path(path), threads, int8)
        except (MetaIQAError, OSError) as exc:
            log.debug("light ONNX path unavailable for %s (%s); using the full path", path, exc)
            return None

    @classmethod
    def _open(cls, path: Path, threads: int | None, int8: str) -> "LiteScorer | None":
        tensor_path, _ = checkpoint_paths(path)
        meta = read_sidecar(tensor_path)
        if meta["preprocess"].get("policy") != "views":
            return None
        export = existing_export(tensor_path, meta["sha256"], int8)
        if export is None:
            return None
        if sha256_file(tensor_path) != meta["sha256"]:
            return None  # the full path recovers a committed .prev file or names the mismatch
        session, export_meta = load_onnx(export, source_sha256=meta["sha256"], threads=threads)
        preprocess = export_meta["preprocess"]
        if preprocess.get("policy") != "views":
            return None
        log.debug("light ONNX path: %s (%s)", export, tensor_path.stem)
        return cls(session, preprocess, name=tensor_path.stem, meta=meta)

    def __repr__(self) -> str:
        return f"LiteScorer(name={self.name!r}, preprocess={self.preprocess}, backend={self.session.name!r})"

    @property
    def backend(self) -> OnnxSession:
        return self.session

    def views(self, image: np.ndarray, crops: int | None = None) -> np.ndarray:
        """(k, 3, size, size) float32 views of the "views" policy (`crops` does not apply to it)."""
        pixels, _ = self.checked_pixels(image, crops)
        return views_float(pixels, self.preprocess)

    def _forward(self, views: list[np.ndarray]) -> np.ndarray:
        return self.session.run(np.stack(views)).astype(np.float64)
