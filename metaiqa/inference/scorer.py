"""Scorer: decoded images -> the checkpoint's preprocessing -> one batched forward -> scores in [0, 1].

Validation (engineer D), the CLI and the service all score through this class, so an image gets
the same number everywhere. It imports only models, data.transforms and decode: no training
code, piq or matplotlib (start-up time and memory of the service).
"""

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metaiqa.data.transforms import check_image, decode_short_side, image_views
from metaiqa.errors import InvalidInput
from metaiqa.inference.backends import Backend, TorchBackend, check_backend_name
from metaiqa.inference.decode import DecodedImage, DecodeError, DecodeLimits, decode, read_file
from metaiqa.models.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreResult:
    """One scored image: its score and the size it had after EXIF orientation."""

    score: float
    width: int
    height: int


class Scorer:
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

        `backend`: "torch" (eager) or "onnx" (ONNX Runtime on the checkpoint's verified export:
        `onnx_path`, else NAME.onnx beside the checkpoint, else one exported once into the cache,
        see metaiqa.inference.onnx_export). The torch model is loaded either way (heatmaps need
        its gradients); only scores go through the chosen backend. `backend_threads`: ONNX
        Runtime's intra-op threads (default: `threads`, else one per core).
        """
        check_backend_name(backend)
        ckpt = load_checkpoint(path, device=kw.get("device", "cpu"))
        kw.setdefault("name", ckpt.name)
        kw.setdefault("meta", ckpt.meta)
        preprocess = kw.pop("preprocess", None) or ckpt.preprocess
        if backend == "onnx":
            from metaiqa.inference.onnx_export import onnx_backend_for

            threads = backend_threads if backend_threads is not None else kw.get("threads")
            kw["backend"] = onnx_backend_for(ckpt, onnx_path, threads=threads)
        return cls(ckpt.model, preprocess, **kw)

    def __repr__(self) -> str:
        return (f"Scorer(name={self.name!r}, preprocess={self.preprocess}, crops={self.crops}, "
                f"backend={self.backend.name!r})")

    @staticmethod
    def _check_crops(crops: int) -> int:
        if isinstance(crops, bool) or not isinstance(crops, int | np.integer) or crops < 1:
            raise InvalidInput(f"crops must be an integer >= 1, got {crops!r}")
        return int(crops)

    @property
    def decode_short_side(self) -> int | None:
        """Shortest side a decoder must keep for this policy; None = decode at full resolution."""
        return decode_short_side(self.preprocess)

    def check(self, image: np.ndarray) -> np.ndarray:
        """The image itself, if this policy can score it; else ExtremeAspectRatio (an InvalidInput)."""
        self.check_size(int(image.shape[0]), int(image.shape[1]))
        return image

    def check_size(self, height: int, width: int) -> None:
        """ExtremeAspectRatio for a size this policy refuses; decoders call it with the header size."""
        check_image(height, width, self.preprocess)

    def decode(self, data: bytes, *, full_resolution: bool = False) -> DecodedImage:
        """Decode bytes with this scorer's limits, at the scale its policy needs (`full_resolution`:
        as stored, e.g. to draw on), refusing from the header a size the policy cannot score."""
        short = None if full_resolution else self.decode_short_side
        out = decode(data, self.limits, min_short_side=short, check=self.check_size)
        self.check(out.pixels)
        return out

    def read(self, path: str | os.PathLike) -> DecodedImage:
        """`decode` for a file (OSError for a missing/unreadable one)."""
        out = read_file(path, self.limits, min_short_side=self.decode_short_side, check=self.check_size)
        self.check(out.pixels)
        return out

    def views(self, image: np.ndarray, crops: int | None = None) -> torch.Tensor:
        """The (k, 3, h, w) batch of views the model scores for one uint8 HxWx3 image."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            got = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
            raise InvalidInput(f"expected a uint8 HxWx3 numpy array, got {got}")
        n = self.crops if crops is None else self._check_crops(crops)
        return image_views(self.check(image), self.preprocess, n)

    def prepare(self, images: Sequence[np.ndarray], crops: int | None = None) -> list[torch.Tensor]:
        """Each image's (k, 3, h, w) float views: the CPU work before the model (uint8 resize and
        crops, float only for the views). The service runs it on request threads, so its
        inference thread only runs forward passes (`score_views`)."""
        return [self.views(img, crops) for img in images]

    def score_arrays(self, images: Sequence[np.ndarray], crops: int | None = None) -> list[float]:
        """Score decoded images: `prepare` then `score_views` (all views of all images together)."""
        return self.score_views(self.prepare(images, crops))

    def score_views(self, per_image: Sequence[torch.Tensor]) -> list[float]:
        """Mean model score of each image's views (from `prepare`); the only step that runs the model.

        Views of equal size are stacked into one forward pass (with views/center_crop/resize that
        is every view); the native policy needs one pass per distinct image size.
        """
        if not per_image:
            return []
        owners = [i for i, v in enumerate(per_image) for _ in range(v.shape[0])]
        flat = [view for v in per_image for view in v]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for j, view in enumerate(flat):
            by_shape.setdefault(tuple(view.shape), []).append(j)
        view_scores = torch.empty(len(flat), dtype=torch.float64)
        for idx in by_shape.values():
            view_scores[idx] = self.backend(torch.stack([flat[j] for j in idx])).reshape(-1).double()
        sums = np.zeros(len(per_image))
        counts = np.zeros(len(per_image))
        np.add.at(sums, owners, view_scores.numpy())
        np.add.at(counts, owners, 1)
        return [float(s) for s in sums / counts]

    def score_bytes(self, blobs: Sequence[bytes], crops: int | None = None) -> list[float]:
        """Decode (with this scorer's limits) and score; the first bad blob raises its DecodeError.

        (Or ExtremeAspectRatio, an InvalidInput, for an image the policy refuses.)
        """
        return self.score_arrays([self.decode(b).pixels for b in blobs], crops)

    def score_paths(
        self, paths: Sequence[str | os.PathLike], crops: int | None = None, batch_size: int = 16
    ) -> list[float]:
        """Score files, reading `batch_size` at a time; the first unreadable file raises."""
        out: list[float] = []
        for start in range(0, len(paths), self._check_batch(batch_size)):
            chunk = paths[start : start + batch_size]
            out += self.score_arrays([self.read(p).pixels for p in chunk], crops)
        return out

    def score_bytes_safe(
        self, blobs: Sequence[bytes], crops: int | None = None
    ) -> list[ScoreResult | DecodeError | InvalidInput]:
        """Like score_bytes, but a bad blob yields its exception in its slot instead of raising."""
        return self._score_decoded([_attempt(self.decode, b) for b in blobs], crops)

    def score_paths_safe(
        self,
        paths: Sequence[str | os.PathLike],
        crops: int | None = None,
        batch_size: int = 16,
        progress: Callable[[int], None] | None = None,
    ) -> list[ScoreResult | DecodeError | InvalidInput | OSError]:
        """Per-file results: a ScoreResult, or the DecodeError/InvalidInput/OSError that file raised.

        InvalidInput is ExtremeAspectRatio: a readable image the policy refuses to score.
        Never aborts the batch for a bad file. `progress(n)` is called after each chunk of n files.
        """
        out: list[ScoreResult | DecodeError | InvalidInput | OSError] = []
        for start in range(0, len(paths), self._check_batch(batch_size)):
            chunk = paths[start : start + batch_size]
            out += self._score_decoded([_attempt(self.read, Path(p)) for p in chunk], crops)
            if progress is not None:
                progress(len(chunk))
        return out

    def _score_decoded(self, decoded: list, crops: int | None) -> list:
        """Score the DecodedImage slots; the sizes reported are the full ones, not the decoded."""
        good = [i for i, d in enumerate(decoded) if isinstance(d, DecodedImage)]
        scores = self.score_arrays([decoded[i].pixels for i in good], crops)
        out = list(decoded)
        for i, s in zip(good, scores, strict=True):
            out[i] = ScoreResult(s, decoded[i].width, decoded[i].height)
        return out

    @staticmethod
    def _check_batch(batch_size: int) -> int:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInput(f"batch_size must be an integer >= 1, got {batch_size!r}")
        return batch_size


def _attempt(fn: Callable[..., DecodedImage], *args: Any) -> DecodedImage | DecodeError | InvalidInput | OSError:
    try:
        return fn(*args)
    except (DecodeError, InvalidInput, OSError) as exc:
        return exc
