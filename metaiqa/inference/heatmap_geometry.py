"""Geometry of heatmaps: the working frame a map is computed on, its local views, and painting
per-view values back onto the frame (pure numpy/Pillow/torch helpers of metaiqa.inference.heatmap)."""

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from metaiqa.data.transforms import to_viewing_scale, view_boxes
from metaiqa.errors import InvalidInput

#: At most this many local views for a `views` map (64 x 3.6 GFLOP on ResNet-18 at 224).
MAX_LOCAL_VIEWS = 64


# --- geometry: the working frame and its views -------------------------------------------------


def _resized_uint8(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def _short_side_uint8(image: np.ndarray, short: int) -> np.ndarray:
    h, w = image.shape[:2]
    f = short / min(h, w)
    return _resized_uint8(image, max(short, round(h * f)), max(short, round(w * f)))


def _local_frame(image: np.ndarray, preprocess: Mapping[str, Any]) -> tuple[np.ndarray, int]:
    """(uint8 working image, view size) the `views` map is computed on (see module docstring)."""
    policy = preprocess.get("policy", "center_crop")
    size = int(preprocess.get("size", 224))
    if policy == "views":
        return to_viewing_scale(image, int(preprocess.get("scale", 384)), size), size
    if policy == "resize":
        return _short_side_uint8(image, size), size
    if policy in ("center_crop", "native"):
        return (image if min(image.shape[:2]) >= size else _short_side_uint8(image, size)), size
    raise InvalidInput(f"unknown preprocess policy {policy!r} (views, center_crop, resize, native)")


def _policy_boxes(scaled: np.ndarray, preprocess: Mapping[str, Any]) -> list[tuple[int, int]]:
    size = int(preprocess.get("size", 224))
    return view_boxes(scaled.shape[0], scaled.shape[1], size, int(preprocess.get("max_views", 16)))


def _refine(positions: list[int]) -> list[int]:
    """The positions plus the midpoints between neighbours."""
    mids = [int(round((a + b) / 2)) for a, b in zip(positions, positions[1:], strict=False)]
    return sorted(set(positions) | set(mids))


def _subset(positions: list[int], k: int) -> list[int]:
    if k >= len(positions):
        return positions
    if k == 1:
        return [positions[len(positions) // 2]]
    return sorted({positions[i] for i in np.linspace(0, len(positions) - 1, k).round().astype(int)})


def local_boxes(height: int, width: int, size: int, limit: int = MAX_LOCAL_VIEWS) -> list[tuple[int, int]]:
    """(top, left) of the `views` map's local views on a height x width frame (both >= size).

    The "views" policy's covering grid (`view_boxes`, uncapped) plus the midpoints between
    neighbouring positions along each axis (stride <= size / 2); over `limit` views, an even
    subset of positions per axis, keeping the grid's aspect.
    """
    if limit < 1:
        raise InvalidInput(f"limit must be >= 1, got {limit}")
    grid = view_boxes(height, width, size, max_views=height * width)
    tops, lefts = _refine(sorted({t for t, _ in grid})), _refine(sorted({lf for _, lf in grid}))
    if len(tops) * len(lefts) > limit:
        rows = int(np.clip(round(np.sqrt(limit * len(tops) / len(lefts))), 1, len(tops)))
        cols = int(np.clip(limit // rows, 1, len(lefts)))
        rows = int(np.clip(limit // cols, 1, len(tops)))
        tops, lefts = _subset(tops, rows), _subset(lefts, cols)
    return [(t, lf) for t in tops for lf in lefts]


def _crops(pixels: np.ndarray, boxes: list[tuple[int, int]], size: int) -> torch.Tensor:
    """(n, 3, size, size) float views cut from a uint8 frame (as `whole_image_views` cuts them)."""
    crops = np.stack([pixels[t : t + size, lf : lf + size] for t, lf in boxes])
    return torch.from_numpy(crops).permute(0, 3, 1, 2).float().div_(255.0)


# --- painting views back onto the frame ---------------------------------------------------------


def _fill_nearest(heat: np.ndarray, missing: np.ndarray) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt  # lazy: only heatmaps need scipy

    idx = distance_transform_edt(missing, return_distances=False, return_indices=True)
    return heat[tuple(idx)]


def _paint(
    values: list[Any], boxes: list[tuple[int, int]], size: int, shape: tuple[int, int], *,
    factor: float = 1.0, fill: bool = False,
) -> np.ndarray:  # fmt: skip
    """Per pixel of a `shape` frame (drawn at `factor` of it): the mean of the values of the views
    covering it (a value is a scalar, or a size x size map when factor is 1). Pixels no view
    covers are 0 (gradients: the score does not depend on them) or, with `fill`, take the
    nearest covered pixel's value (local scores on a sparse grid)."""
    h, w = max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))
    sums, counts = np.zeros((h, w)), np.zeros((h, w))
    for value, (t, lf) in zip(values, boxes, strict=True):
        t0, l0 = round(t * factor), round(lf * factor)
        t1, l1 = min(h, max(t0 + 1, round((t + size) * factor))), min(w, max(l0 + 1, round((lf + size) * factor)))
        sums[t0:t1, l0:l1] += value
        counts[t0:t1, l0:l1] += 1
    heat = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return _fill_nearest(heat, counts == 0) if fill and not counts.all() else heat


def _resize_map(heat: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    heat = torch.as_tensor(np.ascontiguousarray(heat) if isinstance(heat, np.ndarray) else heat)
    if tuple(heat.shape[-2:]) != tuple(size):
        heat = F.interpolate(heat[None, None].double(), size=size, mode="bilinear", align_corners=False)[0, 0]
    return heat.detach().double().numpy()


def _normalise(heat: np.ndarray, q: float) -> np.ndarray:
    """Scale to [0, 1] by the q-th percentile (robust to a few extreme pixels); all-zero stays zero."""
    heat = np.nan_to_num(np.abs(heat), nan=0.0, posinf=0.0)
    hi = float(np.percentile(heat, q)) if heat.size else 0.0
    if not np.isfinite(hi) or hi <= 0:
        hi = float(heat.max()) if heat.size else 0.0
    if hi <= 0:
        return np.zeros(heat.shape, dtype=np.float32)
    return np.clip(heat / hi, 0.0, 1.0).astype(np.float32)


def _gaussian_blur(heat: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return heat
    from scipy.ndimage import gaussian_filter  # lazy: only heatmaps need scipy

    return gaussian_filter(heat, sigma=sigma, mode="reflect")
