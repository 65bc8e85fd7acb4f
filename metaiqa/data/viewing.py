"""Torch-free geometry of the scoring policies: viewing scale, view grids, aspect limits.

Everything here works on uint8 numpy images and plain numbers, so the light ONNX scoring path
(`metaiqa.inference.lite`) can prepare views without importing torch; `metaiqa.data.transforms`
re-exports these names and turns views into tensors. The policies are described in
`metaiqa.data.transforms`.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from metaiqa.errors import InvalidInput


def grid_boxes(height: int, width: int, size: int, n: int) -> list[tuple[int, int]]:
    """(top, left) of `grid_crops`' `n` crops (n=1: the centre crop) in a frame of at least `size`."""
    if n == 1:
        return [((height - size) // 2, (width - size) // 2)]
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    tops = np.linspace(0, height - size, rows).round().astype(int)
    lefts = np.linspace(0, width - size, cols).round().astype(int)
    return [(int(t), int(lf)) for t in tops for lf in lefts][:n]


#: Widest aspect ratio any policy scores (beyond it a thin strip would be upscaled into a huge
#: image, fed whole to the model, or mostly skipped).
MAX_ASPECT = 12.0


class ExtremeAspectRatio(InvalidInput):
    """An image too long and thin for a whole-image score (the service answers 422)."""

    http_status = 422

    def __init__(self, message: str, *, value: float | None = None, limit: float = MAX_ASPECT):
        super().__init__(message)
        self.value = value
        self.limit = limit


def check_aspect(height: int, width: int) -> None:
    """InvalidInput for an empty image, ExtremeAspectRatio (naming the limit) beyond MAX_ASPECT:1."""
    short, long_ = min(height, width), max(height, width)
    if short < 1:
        raise InvalidInput(f"image has no pixels ({width}x{height})")
    if long_ / short > MAX_ASPECT:
        raise ExtremeAspectRatio(
            f"aspect ratio {long_ / short:.1f}:1 ({width}x{height}) exceeds the limit {MAX_ASPECT:g}:1 "
            "for scoring; crop the image first",
            value=long_ / short,
        )


def viewing_size(height: int, width: int, scale: int, size: int) -> tuple[int, int]:
    """(h, w) of an image at the viewing scale: short side `scale` if larger, at least `size`."""
    check_aspect(height, width)
    short = min(height, width)
    factor = scale / short if short > scale else (size / short if short < size else 1.0)
    if factor == 1.0:
        return height, width
    return max(size, round(height * factor)), max(size, round(width * factor))


def to_viewing_scale(image: np.ndarray, scale: int, size: int) -> np.ndarray:
    """uint8 HxWx3 -> the same image at the viewing scale (anti-aliased resize in uint8)."""
    h, w = image.shape[:2]
    nh, nw = viewing_size(h, w, scale, size)
    if (nh, nw) == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))


def _positions(length: int, size: int) -> list[int]:
    n = max(1, int(np.ceil(length / size)))
    return sorted({int(round(p)) for p in np.linspace(0, length - size, n)})


def _spread(positions: list[int], k: int) -> list[int]:
    """`k` of the positions, evenly spread from edge to edge (k=1: the centred one)."""
    if k >= len(positions):
        return positions
    if k == 1:
        return [int(round((positions[0] + positions[-1]) / 2))]
    return [positions[i] for i in np.linspace(0, len(positions) - 1, k).round().astype(int)]


def view_boxes(height: int, width: int, size: int, max_views: int = 16) -> list[tuple[int, int]]:
    """(top, left) of `size`-square views covering a height x width frame (at most `max_views`).

    Along each axis: ceil(length / size) positions spread from edge to edge, so views
    overlap and together cover the frame. A grid over the cap (a panorama, or a cap below 4)
    keeps an even subset along the long axis (and along the short one only if the cap is
    below its count); that subset no longer covers every pixel.
    """
    if max_views < 1:
        raise InvalidInput(f"max_views must be >= 1, got {max_views}")
    tops, lefts = _positions(height, size), _positions(width, size)
    if len(tops) * len(lefts) > max_views:
        if len(lefts) >= len(tops):
            tops = _spread(tops, max_views)
            lefts = _spread(lefts, max(1, max_views // len(tops)))
        else:
            lefts = _spread(lefts, max_views)
            tops = _spread(tops, max(1, max_views // len(lefts)))
    return [(t, lf) for t in tops for lf in lefts]


def views_uint8(image: np.ndarray, preprocess: Mapping[str, Any]) -> np.ndarray:
    """uint8 HxWx3 -> (k, size, size, 3) uint8 views of the "views" policy (resized in uint8)."""
    size = int(preprocess.get("size", 224))
    scaled = to_viewing_scale(image, int(preprocess.get("scale", 384)), size)
    boxes = view_boxes(scaled.shape[0], scaled.shape[1], size, int(preprocess.get("max_views", 16)))
    return np.stack([scaled[t : t + size, lf : lf + size] for t, lf in boxes])


def views_float(image: np.ndarray, preprocess: Mapping[str, Any]) -> np.ndarray:
    """The same views as (k, 3, size, size) float32 in [0, 1], the models' input layout."""
    crops = views_uint8(image, preprocess)
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)


def decode_short_side(preprocess: Mapping[str, Any]) -> int | None:
    """The shortest side a decoder must keep for this policy (None: full resolution needed).

    The "views" policy downscales to a short side of `scale` anyway, so a JPEG may be decoded
    at reduced scale as long as its short side stays at least that (see inference.decode).
    """
    if preprocess.get("policy") != "views":
        return None
    return max(int(preprocess.get("scale", 384)), int(preprocess.get("size", 224)))


def check_image(height: int, width: int, preprocess: Mapping[str, Any]) -> None:
    """Refuse, before any model work, an image the policy cannot score (ExtremeAspectRatio).

    The same limit for every policy (see the module docstring): center_crop and resize upscale
    a short side below `size`, resize and native feed the whole image to the model.
    """
    if preprocess.get("policy") == "views":
        viewing_size(height, width, int(preprocess.get("scale", 384)), int(preprocess.get("size", 224)))
    else:
        check_aspect(height, width)
