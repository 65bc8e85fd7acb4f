"""The Python API: `metaiqa.load()` -> a `Model` that scores paths, bytes, PIL images and arrays.

    import metaiqa
    model = metaiqa.load()                   # the bundled default; or a name, or a checkpoint path
    model.score("photo.jpg")                 # -> float in [0, 1], higher is better
    model.score(["a.jpg", pil_image, arr])   # -> list of floats, in order
    heat, score = model.heatmap("photo.jpg")
    metaiqa.list_models()                    # checkpoints you can load by name

Scores go through the same `Scorer` the CLI and the service use (same decoding limits, same
preprocessing), so a file gets the same number everywhere. Every input error raises the
library's own exception, its message starting with the input (a path, or "input 3 (...)"):
DecodeError subclasses (NotAnImage, TruncatedImage, ImageTooSmall, FileTooLarge,
TooManyPixels), ImageFileNotFound / UnreadableFile for paths, UnsupportedInput for values of
the wrong type, dtype or shape. All derive from `metaiqa.errors.MetaIQAError`.
"""

import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from metaiqa.errors import InvalidInput, MetaIQAError
from metaiqa.inference.decode import ImageTooSmall, TruncatedImage
from metaiqa.models.pretrained import (
    BUNDLED_MODELS,
    default_checkpoint_path,
    list_checkpoints,
    resolve_checkpoint,
)

log = logging.getLogger(__name__)

KINDS = "a path (str or os.PathLike), bytes, a PIL image or a uint8 HxWx3 numpy array"


class UnsupportedInput(InvalidInput, TypeError):
    """A value `Model.score`/`heatmap` cannot take: wrong type, or an array of the wrong dtype/shape."""


class UnreadableFile(MetaIQAError, OSError):
    """An image path that exists but cannot be read (a folder, no permission, an I/O error)."""


class ImageFileNotFound(UnreadableFile, FileNotFoundError):
    """An image path that does not exist."""


class Heatmap(NamedTuple):
    """`Model.heatmap`'s answer: `heat` (float32 HxW in [0, 1], the image's size) and the score.

    `heat` is in score units for method `views` (fixed scale), relative to the image for
    `gradient` and `gradcam` (see `Model.heatmap`).
    """

    heat: np.ndarray
    score: float


def list_models(models_dir: str | os.PathLike | None = None) -> list[str]:
    """Names `metaiqa.load` accepts: the bundled models present in this install, then `models_dir`'s.

    (Model *architectures*, for building a new model, are `metaiqa.models.list_models()`.)
    A models-dir checkpoint named like a bundled model replaces it, and is listed once.
    """
    bundled = [n for n in BUNDLED_MODELS if default_checkpoint_path(n).is_file()]
    named = sorted(list_checkpoints(models_dir))
    return list(dict.fromkeys(bundled + named))


def load(
    name_or_path: str | os.PathLike | None = None,
    *,
    models_dir: str | os.PathLike | None = None,
    threads: int | None = None,
) -> "Model":
    """Load a checkpoint for scoring (hash-verified, CPU, eval mode).

    `name_or_path`: None (the bundled `metaiqa-default`), a bundled name (`metaiqa-prior`), the
    name of a checkpoint in `models_dir` (NAME.safetensors + NAME.json), or a path to a
    checkpoint (.safetensors, its .json sidecar, or a folder holding model.safetensors).
    `threads` sets torch's CPU thread count (process-wide). Raises ModelNotFound (naming the
    models that exist) or CorruptCheckpoint.
    """
    from metaiqa.inference.scorer import Scorer

    path = resolve_checkpoint(name_or_path, models_dir)
    scorer = Scorer.from_checkpoint(path, threads=threads)
    log.info("loaded model %s from %s (preprocess %s)", scorer.name, path, scorer.preprocess)
    return Model(scorer, path)


def _is_path(x: object) -> bool:
    return isinstance(x, str | os.PathLike)


def _is_bytes(x: object) -> bool:
    return isinstance(x, bytes | bytearray | memoryview)


def _is_pil(x: object) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(x, Image.Image)


def _label(x: object, index: int | None) -> str:
    """How an error message names an input: the path itself, else its position and kind."""
    if _is_path(x):
        return os.fspath(x)
    where = "input" if index is None else f"input {index}"
    if _is_bytes(x):
        return f"{where} ({len(memoryview(x).cast('B'))} bytes)"
    if isinstance(x, np.ndarray):
        return f"{where} (array {x.dtype} {x.shape})"
    if _is_pil(x):
        return f"{where} (PIL image {x.mode} {x.width}x{x.height})"
    return f"{where} ({type(x).__name__})"


def _named(exc: MetaIQAError, label: str) -> MetaIQAError:
    """The same exception (class and attributes kept), its message prefixed with the input."""
    exc.args = (f"{label}: {exc}",)
    return exc


def _file_error(exc: OSError, label: str) -> UnreadableFile:
    why = exc.strerror or str(exc) or type(exc).__name__
    cls = ImageFileNotFound if isinstance(exc, FileNotFoundError) else UnreadableFile
    return cls(f"{label}: cannot read image file ({why})")


def _check_array(x: np.ndarray, label: str) -> np.ndarray:
    if x.dtype == np.uint8 and x.ndim == 3 and x.shape[2] == 3:
        return x
    hint = ""
    if x.dtype != np.uint8:
        hint = "; convert with np.clip(a * 255, 0, 255).astype(np.uint8) if it holds floats in [0, 1]"
    elif x.ndim == 2:
        hint = "; for a grey image pass np.stack([a] * 3, axis=-1)"
    elif x.ndim == 3 and x.shape[2] == 4:
        hint = "; drop the alpha channel with a[..., :3]"
    elif x.ndim == 4:
        hint = "; for a batch pass a list of images: list(a)"
    raise UnsupportedInput(f"{label}: expected a uint8 HxWx3 RGB array, got {x.dtype} {x.shape}{hint}")


def _orient(img: Any) -> Any:
    """Apply EXIF orientation as files get it (a broken EXIF block leaves the pixels as stored)."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(img)
    except (SyntaxError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable EXIF orientation (%s)", exc)
        return img


def _pil_to_array(img: Any, label: str) -> np.ndarray:
    """A PIL image -> uint8 HxWx3, converted exactly as decoded files are (alpha on white, ...)."""
    from metaiqa.inference.decode import _to_rgb  # the conversion files get; keep them identical

    try:
        img.load()
        return np.array(_to_rgb(_orient(img)), dtype=np.uint8, order="C")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise TruncatedImage(f"{label}: PIL image could not be loaded ({exc})") from exc


def _check_batch(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise InvalidInput(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return int(batch_size)


def _check_crops(crops: int | None) -> int | None:
    if crops is None:
        return None
    if isinstance(crops, bool) or not isinstance(crops, int | np.integer) or crops < 1:
        raise InvalidInput(f"crops must be None or an integer >= 1, got {crops!r}")
    return int(crops)


class Model:
    """A loaded checkpoint: `score(x)`, `heatmap(x)`, `name`, `preprocess`, `info`.

    Thread-safe for scoring (inference only); `scorer` is the underlying `Scorer`.
    """

    def __init__(self, scorer: Any, path: str | os.PathLike | None = None):
        self.scorer = scorer
        self.path = Path(path) if path is not None else None

    @property
    def name(self) -> str:
        """The model's name: the bundled name, the models-dir name, or the checkpoint file's stem."""
        return str(self.scorer.name)

    @property
    def preprocess(self) -> dict[str, Any]:
        """How images are turned into model input (the sidecar's policy, e.g. views / center_crop)."""
        return dict(self.scorer.preprocess)

    @property
    def info(self) -> dict[str, Any]:
        """A copy of the checkpoint's sidecar: architecture, config, training data, metrics, sha256."""
        import copy

        return copy.deepcopy(dict(self.scorer.meta))

    def __repr__(self) -> str:
        return f"Model(name={self.name!r}, preprocess={self.preprocess})"

    def score(self, x: Any, *, crops: int | None = None, batch_size: int = 16) -> float | list[float]:
        """Quality in [0, 1] (higher is better) of one input, or a list of scores for a list.

        `x`: a path (str / os.PathLike), bytes, a PIL image, a uint8 HxWx3 RGB numpy array, or a
        list/tuple of any mix of these. `crops=N` averages N crops (center_crop policy only).
        Inputs are scored `batch_size` at a time. The first bad input (in list order; wrong
        types and shapes are found before any scoring) raises its exception, naming it.
        """
        crops, batch_size = _check_crops(crops), _check_batch(batch_size)
        if isinstance(x, list | tuple):
            return self._score_all(list(x), crops, batch_size, indexed=True)
        return self._score_all([x], crops, batch_size, indexed=False)[0]

    def heatmap(self, x: Any, *, method: str | None = None) -> Heatmap:
        """Where the damage is / where the score is sensitive in ONE input: `Heatmap(heat, score)`.

        `heat` is a float32 array with the input's height x width (after EXIF orientation), in
        [0, 1]; `score` is the input's score, computed from the views the map explains (equal
        to `score(x)` for arrays and PIL images; files are decoded at full resolution here).
        `method=None` picks `views` for whole-image ("views" policy) models, else `gradient`.

        - `views`: local scores. Each pixel holds the model's own score for the views covering
          it, on the FIXED 0-1 score scale (0 bad .. 1 good; drawn red .. blue): comparable
          between images, a pristine photo stays high, a damaged region is low.
        - `gradient` (the MetaIQA paper's map): |d score / d pixel|, smoothed, divided by its own
          99th percentile: RELATIVE, 1 marks this image's most sensitive pixels. It shows where
          a change of pixels would move the score most, not where damage is.
        - `gradcam`: Grad-CAM of the last stage / convolution, coarser, divided by its maximum (relative).

        For "views" models all three run on the same viewing scale and views that produce the
        score. See metaiqa/inference/heatmap.py; `overlay_png(image, heat, method=..., score=...)`
        there draws the map over the photo with a colour bar and the score.
        """
        from metaiqa.inference.heatmap import check_method, explain

        if isinstance(x, list | tuple):
            raise UnsupportedInput(f"heatmap takes one input, got a {type(x).__name__} of {len(x)}")
        if method is not None:
            check_method(method)
        label = _label(x, None)
        image = self._full_image(x, label)
        try:
            self.scorer.check(image)  # refuse what the policy cannot score, naming the input
            result = explain(self.scorer.model, image, self.scorer.preprocess, method, crops=self.scorer.crops)
        except MetaIQAError as exc:
            raise _named(exc, label) from None
        return Heatmap(result.heat, result.score)

    # --- internals -----------------------------------------------------------------------------

    def _as_array(self, x: Any, label: str) -> np.ndarray:
        """A PIL image or an array -> checked uint8 HxWx3 (same minimum size as decoded files)."""
        if isinstance(x, np.ndarray):
            image = _check_array(x, label)
        elif _is_pil(x):
            image = _pil_to_array(x, label)
        else:
            raise UnsupportedInput(f"{label}: cannot score a value of type {type(x).__name__}; pass {KINDS}")
        h, w = image.shape[:2]
        min_side = self.scorer.limits.min_side
        if min(h, w) < min_side:
            raise ImageTooSmall(
                f"{label}: image is {w}x{h}; its shorter side {min(h, w)} is below the minimum of {min_side} px",
                value=min(h, w),
                limit=min_side,
            )
        return image

    def _full_image(self, x: Any, label: str) -> np.ndarray:
        """Any single input -> uint8 HxWx3 at full resolution (what a heatmap is drawn on)."""
        from metaiqa.inference.decode import decode_image, read_image_file

        try:
            if _is_path(x):
                return read_image_file(x, self.scorer.limits)
            if _is_bytes(x):
                return decode_image(bytes(x), self.scorer.limits)
        except OSError as exc:
            raise _file_error(exc, label) from exc
        except MetaIQAError as exc:
            raise _named(exc, label) from None
        return self._as_array(x, label)

    def _score_all(
        self, items: list[Any], crops: int | None, batch_size: int, *, indexed: bool
    ) -> list[float]:
        labels = [_label(x, i if indexed else None) for i, x in enumerate(items)]
        arrays = {
            i: self._as_array(x, labels[i]) for i, x in enumerate(items) if not (_is_path(x) or _is_bytes(x))
        }
        results: list[Any] = [None] * len(items)
        self._score_files(items, results, crops, batch_size)
        order = list(arrays)
        scores = self._score_arrays([arrays[i] for i in order], [labels[i] for i in order], crops, batch_size)
        for i, s in zip(order, scores, strict=True):
            results[i] = s
        for i, r in enumerate(results):
            if isinstance(r, OSError):
                raise _file_error(r, labels[i]) from r
            if isinstance(r, MetaIQAError):
                raise _named(r, labels[i])
        return [float(getattr(r, "score", r)) for r in results]

    def _score_files(self, items: list[Any], results: list[Any], crops: int | None, batch_size: int) -> None:
        """Paths and bytes through the Scorer's own decoding; each slot gets a ScoreResult or its error."""
        paths = [i for i, x in enumerate(items) if _is_path(x)]
        blobs = [i for i, x in enumerate(items) if _is_bytes(x)]
        for start in range(0, len(paths), batch_size):
            self._fill(results, paths[start : start + batch_size], items, crops)
        for start in range(0, len(blobs), batch_size):
            self._fill(results, blobs[start : start + batch_size], items, crops)

    def _fill(self, results: list[Any], idx: list[int], items: list[Any], crops: int | None) -> None:
        """Score one chunk of paths or of bytes; an error the scorer raises for the whole chunk
        (rather than per input) is pinned on its input by scoring the chunk one by one."""

        def safe(group: list[int]) -> list[Any]:
            if _is_path(items[group[0]]):
                return self.scorer.score_paths_safe(
                    [items[i] for i in group], crops=crops, batch_size=len(group)
                )
            return self.scorer.score_bytes_safe([bytes(items[i]) for i in group], crops=crops)

        try:
            got = safe(idx)
        except MetaIQAError as exc:
            got = [exc] if len(idx) == 1 else [self._one(safe, i) for i in idx]
        for i, r in zip(idx, got, strict=True):
            results[i] = r

    @staticmethod
    def _one(safe: Any, i: int) -> Any:
        try:
            return safe([i])[0]
        except MetaIQAError as exc:
            return exc

    def _score_arrays(
        self, arrays: list[np.ndarray], labels: list[str], crops: int | None, batch_size: int
    ) -> list[float]:
        """Score decoded images in chunks; an error is pinned on the image that caused it."""
        out: list[float] = []
        for start in range(0, len(arrays), batch_size):
            chunk = arrays[start : start + batch_size]
            try:
                out += self.scorer.score_arrays(chunk, crops)
            except MetaIQAError as exc:
                for image, label in zip(chunk, labels[start : start + batch_size], strict=True):
                    try:
                        self.scorer.views(image, crops)
                    except MetaIQAError as culprit:
                        raise _named(culprit, label) from None
                raise exc
        return out
