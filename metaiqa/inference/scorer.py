"""Scorer: decoded images -> the checkpoint's preprocessing -> one batched forward -> scores in [0, 1].

Validation, the CLI and the service score through this class (or, for `metaiqa score` with the
ONNX backend, `LiteScorer`, which shares its `ImagePipeline`), so an image gets the same number
everywhere. It imports only models, data.transforms and decode: no training code, piq or
matplotlib (start-up time and memory of the service).
"""

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from metaiqa.data.transforms import image_views
from metaiqa.errors import InvalidInput
from metaiqa.inference.backends import Backend, BackendUnavailable, TorchBackend, resolve_backend_name
from metaiqa.inference.decode import DecodeLimits
from metaiqa.inference.pipeline import ImagePipeline, ScoreResult  # noqa: F401  (ScoreResult re-exported)
from metaiqa.models.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


class Scorer(ImagePipeline):
    """A model in eval mode plus the preprocessing it was trained/validated with.

    `crops=N` (center_crop policy only) averages the scores of N crops spread over the image;
    other policies produce one view and ignore it.

    Bytes and files are decoded through `decode`/`read`, which (for the "views" policy) decode a
    large JPEG at reduced scale, never below the policy's viewing scale, and refuse images the
    policy cannot score (ExtremeAspectRatio, longer than 12:1 under any policy) before any model
    work; `views` (and so every score) checks arrays the same way.
    """

    def __init__(
        self,
        model: nn.Module,
        preprocess: Mapping[str, Any],
        *,
        name: str = "model",
        meta: Mapping[str, Any] | None = None,
        crops: int = 1,
        limits: DecodeLimits = DecodeLimits(),
        device: str | torch.device = "cpu",
        threads: int | None = None,
        backend: Backend | None = None,
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.backend = backend if backend is not None else TorchBackend(self.model, self.device)
        self.preprocess = dict(preprocess)
        self.name = name
        self.meta = dict(meta or {})
        self.crops = self._check_crops(crops)
        self.limits = limits
        if threads is not None:
            if int(threads) < 1:
                raise InvalidInput(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(int(threads))

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        backend: str = "torch",
        onnx_path: str | os.PathLike | None = None,
        backend_threads: int | None = None,
        **kw: Any,
    ) -> "Scorer":
        """Load a verified checkpoint; its sidecar's preprocess and metadata come along.

        `backend`: "torch" (eager), "onnx" (ONNX Runtime on the checkpoint's verified export:
        `onnx_path`, else NAME.onnx beside the checkpoint, else one exported once into the cache,
        see metaiqa.inference.onnx_export), "int8" (NAME.int8.onnx beside the checkpoint, see
        metaiqa.inference.onnx_int8) or "auto" (the int8 export if present, else onnx when
        onnxruntime is installed and the export can be made, else torch, saying why; the CLI's
        and the service's default). The torch model is loaded either way
        (heatmaps need its gradients); only scores go through the chosen backend.
        `backend_threads`: ONNX Runtime's intra-op threads (default: `threads`, else one per core).
        """
        chosen = resolve_backend_name(backend)
        ckpt = load_checkpoint(path, device=kw.get("device", "cpu"))
        kw.setdefault("name", ckpt.name)
        kw.setdefault("meta", ckpt.meta)
        preprocess = kw.pop("preprocess", None) or ckpt.preprocess
        if chosen in ("onnx", "int8"):
            from metaiqa.inference.onnx_export import INT8_USE, onnx_backend_for

            threads = backend_threads if backend_threads is not None else kw.get("threads")
            try:
                kw["backend"] = onnx_backend_for(ckpt, onnx_path, threads=threads, int8=INT8_USE[backend])
            except BackendUnavailable as exc:
                if backend != "auto":
                    raise
                log.warning("scoring with torch instead of ONNX Runtime: %s", exc)
        return cls(ckpt.model, preprocess, **kw)

    def __repr__(self) -> str:
        return (f"Scorer(name={self.name!r}, preprocess={self.preprocess}, crops={self.crops}, "
                f"backend={self.backend.name!r})")

    def views(self, image: np.ndarray, crops: int | None = None) -> torch.Tensor:
        """The (k, 3, h, w) batch of views the model scores for one uint8 HxWx3 image."""
        pixels, n = self.checked_pixels(image, crops)
        return image_views(pixels, self.preprocess, n)

    def _forward(self, views: list[torch.Tensor]) -> np.ndarray:
        return self.backend(torch.stack(views)).reshape(-1).double().numpy()


