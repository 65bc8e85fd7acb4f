"""Training-time images: a decoded-image cache and task batches with shared crops per reference.

All versions (levels) of one reference inside a task get the SAME random crop box and
flip, so the ranking loss compares the same patch at different severities and the label
(computed on the whole image) stays meaningful across the pair.
"""

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metaiqa.data.samples import DatasetError, Sample
from metaiqa.data.transforms import apply_policy, resize_short_side, to_tensor
from metaiqa.meta.losses import Target

log = logging.getLogger(__name__)


class UnreadableTrainingImage(DatasetError):
    """An image named by the data set cannot be decoded."""


class ImageCache:
    """Decoded uint8 RGB arrays in memory up to `max_bytes`; beyond it images are decoded per use.

    A synthetic set (~9,500 PNGs of 384x384) takes ~4 GB decoded; PNG decoding costs
    ~5 ms per image, so caching pays when the machine has the memory.
    """

    def __init__(self, max_bytes: int = 3 * 2**30):
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._store: dict[str, np.ndarray] = {}
        self._warned = False

    def __len__(self) -> int:
        return len(self._store)

    def get(self, path: str | Path) -> np.ndarray:
        key = str(path)
        arr = self._store.get(key)
        if arr is not None:
            return arr
        arr = read_rgb(path)
        if self.nbytes + arr.nbytes <= self.max_bytes:
            self._store[key] = arr
            self.nbytes += arr.nbytes
        elif not self._warned:
            self._warned = True
            log.warning("image cache full (%.1f GB): further images are decoded on each use", self.nbytes / 2**30)
        return arr


def read_rgb(path: str | Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except Exception as exc:  # any decoder fault (the AVIF plugin raises RuntimeError) = unreadable
        raise UnreadableTrainingImage(f"cannot read training image {path}: {exc}") from exc


def _reference(s: Sample) -> str:
    return s.ref_id if s.ref_id is not None else f"path:{s.path}"


def _crop(img: np.ndarray, size: int, box: tuple[float, float], flip: bool) -> torch.Tensor:
    """Crop at relative position `box` (fractions of the free range) so differently sized
    versions of one reference still get corresponding boxes."""
    h, w = img.shape[:2]
    if min(h, w) < size:
        x = resize_short_side(to_tensor(img), size)
        h, w = x.shape[-2:]
        top, left = round(box[0] * (h - size)), round(box[1] * (w - size))
        x = x[:, top : top + size, left : left + size]
    else:
        top, left = round(box[0] * (h - size)), round(box[1] * (w - size))
        x = to_tensor(img[top : top + size, left : left + size])
    return x.flip(-1) if flip else x


def task_batch(
    samples: Sequence[Sample],
    cache: ImageCache,
    *,
    crop_size: int,
    rng: np.random.Generator,
    flip: bool = True,
    max_images: int | None = None,
) -> tuple[torch.Tensor, Target]:
    """(x, Target) for a support or query set: one crop box + flip per reference, content ids for ranking.

    `max_images` keeps a random subset (the per-set batch limit) drawn from `rng`.
    """
    if len(samples) == 0:
        raise DatasetError("a task set is empty (0 samples)")
    samples = list(samples)
    if max_images is not None and len(samples) > max_images:
        keep = np.sort(rng.choice(len(samples), size=max_images, replace=False))
        samples = [samples[i] for i in keep]
    refs: dict[str, int] = {}
    boxes: dict[str, tuple[tuple[float, float], bool]] = {}
    xs, ys, ids = [], [], []
    for s in samples:
        key = _reference(s)
        if key not in refs:
            refs[key] = len(refs)
            boxes[key] = ((float(rng.random()), float(rng.random())), bool(flip and rng.random() < 0.5))
        box, fl = boxes[key]
        xs.append(_crop(cache.get(s.path), crop_size, box, fl))
        ys.append(s.mos)
        ids.append(refs[key])
    return torch.stack(xs), Target(torch.tensor(ys, dtype=torch.float32), torch.tensor(ids, dtype=torch.long))


def eval_batch(samples: Sequence[Sample], cache: ImageCache, preprocess: dict) -> torch.Tensor:
    """The scoring view of each image (the checkpoint's preprocess policy, one crop)."""
    views = [apply_policy(to_tensor(cache.get(s.path)), preprocess, 1)[0] for s in samples]
    if len({v.shape for v in views}) > 1:  # "native" policy on mixed sizes: score one by one
        raise ValueError("eval_batch needs equal-sized views; use batch size 1 for native scoring")
    return torch.stack(views)
