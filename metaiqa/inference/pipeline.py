"""What every scorer does around its model, without torch: decode with limits, prepare views,
batch them, average per image, keep going past bad files, read ahead on a worker thread.

`ImagePipeline` is a mixin: a scorer provides `preprocess`, `limits`, `crops`, `views(image,
crops)` (one image's (k, 3, h, w) views) and `_forward(views)` (a list of equal-shape views ->
their scores as numpy). `Scorer` (torch, any backend) and `LiteScorer` (ONNX Runtime, no torch)
are the two; so an image gets the same number through either.
"""

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metaiqa.data.viewing import check_image, decode_short_side
from metaiqa.errors import InvalidInput
from metaiqa.inference.decode import DecodedImage, DecodeError, DecodeLimits, decode, read_file


@dataclass(frozen=True)
class ScoreResult:
    """One scored image: its score and the size it had after EXIF orientation."""

    score: float
    width: int
    height: int


class ImagePipeline:
    """Decoding, batching and averaging shared by the scorers (see the module docstring)."""

    preprocess: dict[str, Any]
    limits: DecodeLimits
    crops: int
    max_views_per_pass: int = 32

    def views(self, image: np.ndarray, crops: int | None = None) -> Any:
        """The (k, 3, h, w) batch of views the model scores for one uint8 HxWx3 image."""
        raise NotImplementedError

    def checked_pixels(self, image: np.ndarray, crops: int | None = None) -> tuple[np.ndarray, int]:
        """(image, crops) once `image` is a uint8 array this policy can score and `crops` is valid."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            got = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
            raise InvalidInput(f"expected a uint8 HxWx3 numpy array, got {got}")
        return self.check(image), self.crops if crops is None else self._check_crops(crops)

    def _forward(self, views: list[Any]) -> np.ndarray:
        raise NotImplementedError

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

    def prepare(self, images: Sequence[np.ndarray], crops: int | None = None) -> list[Any]:
        """Each image's (k, 3, h, w) float views: the CPU work before the model (uint8 resize and
        crops, float only for the views). The service runs it on request threads, so its
        inference thread only runs forward passes (`score_views`)."""
        return [self.views(img, crops) for img in images]

    def score_arrays(self, images: Sequence[np.ndarray], crops: int | None = None) -> list[float]:
        """Score decoded images: `prepare` then `score_views` (all views of all images together)."""
        return self.score_views(self.prepare(images, crops))

    def score_views(self, per_image: Sequence[Any]) -> list[float]:
        """Mean model score of each image's views (from `prepare`); the only step that runs the model.

        Views of equal size are stacked into forward passes of at most `max_views_per_pass` (with
        views/center_crop/resize that is every view); the native policy needs one pass per
        distinct image size. The cap bounds memory (16 photos x 6 views in one pass took 1.7 GB)
        at no cost in speed (32 views per pass is as fast as 96 here, int8 and float32).
        """
        if not per_image:
            return []
        owners = [i for i, v in enumerate(per_image) for _ in range(v.shape[0])]
        flat = [view for v in per_image for view in v]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for j, view in enumerate(flat):
            by_shape.setdefault(tuple(view.shape), []).append(j)
        view_scores = np.empty(len(flat), dtype=np.float64)
        for idx in by_shape.values():
            for k in range(0, len(idx), self.max_views_per_pass):
                part = idx[k : k + self.max_views_per_pass]
                view_scores[part] = self._forward([flat[j] for j in part])
        sums = np.zeros(len(per_image))
        counts = np.zeros(len(per_image))
        np.add.at(sums, owners, view_scores)
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
        for results in self.iter_paths_safe(paths, crops, batch_size, prefetch=False):
            out += results
            if progress is not None:
                progress(len(results))
        return out

    def iter_paths_safe(
        self,
        paths: Sequence[str | os.PathLike],
        crops: int | None = None,
        batch_size: int = 16,
        *,
        prefetch: bool = True,
    ) -> Iterator[list[ScoreResult | DecodeError | InvalidInput | OSError]]:
        """`score_paths_safe` one chunk of `batch_size` files at a time, in order.

        With `prefetch`, one worker thread reads and prepares the next chunk (decoding and uint8
        resizing release the GIL) while the model scores this one, so a folder of large JPEGs
        keeps the cores busy with both.
        """
        chunks = [paths[i : i + batch_size] for i in range(0, len(paths), self._check_batch(batch_size))]
        if not prefetch or len(chunks) < 2:
            for chunk in chunks:
                yield self.score_prepared(self.prepare_paths_safe(chunk, crops))
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="metaiqa-prepare") as pool:
            pending = pool.submit(self.prepare_paths_safe, chunks[0], crops)
            for nxt in [*chunks[1:], None]:
                prepared = pending.result()
                if nxt is not None:
                    pending = pool.submit(self.prepare_paths_safe, nxt, crops)
                yield self.score_prepared(prepared)

    def prepare_paths_safe(self, paths: Sequence[str | os.PathLike], crops: int | None = None) -> list:
        """Read and prepare files: per slot (DecodedImage, views) or the exception that file raised."""
        out: list = []
        for p in paths:
            got = _attempt(self.read, Path(p))
            out.append((got, self.views(got.pixels, crops)) if isinstance(got, DecodedImage) else got)
        return out

    def score_prepared(self, prepared: list) -> list[ScoreResult | DecodeError | InvalidInput | OSError]:
        """Score `prepare_paths_safe` slots; the sizes reported are the full ones, not the decoded."""
        good = [i for i, slot in enumerate(prepared) if isinstance(slot, tuple)]
        scores = self.score_views([prepared[i][1] for i in good])
        out = list(prepared)
        for i, s in zip(good, scores, strict=True):
            decoded = prepared[i][0]
            out[i] = ScoreResult(s, decoded.width, decoded.height)
        return out

    def _score_decoded(self, decoded: list, crops: int | None) -> list:
        """Score the DecodedImage slots (others pass through as they are)."""
        return self.score_prepared(
            [(d, self.views(d.pixels, crops)) if isinstance(d, DecodedImage) else d for d in decoded])

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
