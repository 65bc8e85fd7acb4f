"""Image <-> tensor conversion and the crop/resize policies shared by training and scoring.

Models take float RGB in [0, 1] (N, 3, H, W). A checkpoint's `preprocess` dict names the
scoring policy:

- {"policy": "views", "scale": 384, "size": 224, "max_views": 16}: the whole image at a
  fixed viewing scale. The photo is downscaled (anti-aliased, in uint8) so its short side is
  `scale` (never upscaled, except an image whose short side is below `size`, which is
  brought up to `size`); then `size`-square views on a grid that covers the whole frame
  (neighbours overlap) are scored and averaged. Training crops come from images at the same
  scale (`to_viewing_scale`). Aspect ratios beyond `MAX_ASPECT` are refused.
- {"policy": "center_crop", "size": 224} (one crop at native resolution; `crops=N` spreads N),
  {"policy": "native"}, {"policy": "resize", "size": 224}: the first round's policies.

Every policy refuses images longer than `MAX_ASPECT`:1 (`check_image`, ExtremeAspectRatio):
beyond it a thin strip is upscaled to the model's input size along its short side (a 32x300,000
PNG of 99 KB became a 224x2,100,000 float tensor: 5.6 GB and 13 s), fed whole to the model
(resize, native) or mostly skipped (views). Within it, an upscaled image holds at most
`size` x `MAX_ASPECT * size` pixels, so the work per image is bounded by what the model sees.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

from metaiqa.data.viewing import (  # noqa: F401  (re-exported: the policies' torch-free geometry)
    MAX_ASPECT,
    ExtremeAspectRatio,
    check_aspect,
    check_image,
    decode_short_side,
    grid_boxes,
    to_viewing_scale,
    view_boxes,
    viewing_size,
    views_uint8,
)
from metaiqa.errors import InvalidInput


def to_tensor(image: np.ndarray | Image.Image) -> torch.Tensor:
    """uint8 HxWx3 (or a PIL RGB image) -> float32 3xHxW in [0, 1]."""
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if not arr.flags.writeable:  # np.asarray(PIL image) is read-only; torch wants to own writable memory
        arr = arr.copy()
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InvalidInput(f"expected an HxWx3 RGB image, got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(255.0)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre crop of a (..., H, W) tensor; images smaller than `size` are upscaled first."""
    h, w = x.shape[-2:]
    if min(h, w) < size:
        x = resize_short_side(x, size)
        h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def random_crop(x: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    h, w = x.shape[-2:]
    if min(h, w) < size:
        x = resize_short_side(x, size)
        h, w = x.shape[-2:]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return x[..., top : top + size, left : left + size]


def resize_short_side(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new = (max(size, round(h * scale)), max(size, round(w * scale)))
    batched = x if x.ndim == 4 else x.unsqueeze(0)
    out = torch.nn.functional.interpolate(batched, size=new, mode="bilinear", align_corners=False, antialias=True)
    return out if x.ndim == 4 else out.squeeze(0)


def grid_crops(x: torch.Tensor, size: int, n: int) -> torch.Tensor:
    """`n` crops of `size` spread evenly over the image (n=1: the centre crop); (n, 3, size, size)."""
    if n < 1:
        raise InvalidInput(f"crops must be >= 1, got {n}")
    if n == 1:
        return center_crop(x, size).unsqueeze(0)
    h, w = x.shape[-2:]
    if min(h, w) < size:
        x = resize_short_side(x, size)
        h, w = x.shape[-2:]
    return torch.stack([x[..., t : t + size, lf : lf + size] for t, lf in grid_boxes(h, w, size, n)])


def whole_image_views(image: np.ndarray, preprocess: Mapping[str, Any]) -> torch.Tensor:
    """uint8 HxWx3 -> (k, 3, size, size) float views of the "views" policy (resize before float)."""
    return torch.from_numpy(views_uint8(image, preprocess)).permute(0, 3, 1, 2).float().div_(255.0)


def image_views(image: np.ndarray, preprocess: Mapping[str, Any], crops: int = 1) -> torch.Tensor:
    """uint8 HxWx3 -> the batch of views the model scores for it, under any policy.

    Cropping and downscaling happen in uint8; only the views become float (a 12 MP photo is
    never converted whole). center_crop gives the same floats as `apply_policy(to_tensor(...))`;
    resize's uint8 downscale differs from the float one by at most ~1/255 per pixel. Images that
    must be upscaled (short side below `size`) and `native` take the float path: there the
    whole image is the view anyway.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInput(f"expected an HxWx3 RGB image, got shape {getattr(image, 'shape', None)}")
    policy = preprocess.get("policy", "center_crop")
    if policy == "views":
        return whole_image_views(image, preprocess)
    size = int(preprocess.get("size", 224))
    h, w = image.shape[:2]
    if policy == "center_crop" and min(h, w) >= size:
        if crops < 1:
            raise InvalidInput(f"crops must be >= 1, got {crops}")
        views = np.stack([image[t : t + size, lf : lf + size] for t, lf in grid_boxes(h, w, size, crops)])
        return torch.from_numpy(views).permute(0, 3, 1, 2).float().div_(255.0)
    if policy == "resize" and min(h, w) > size:
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0)
        scale = size / min(h, w)
        new = (max(size, round(h * scale)), max(size, round(w * scale)))
        small = torch.nn.functional.interpolate(x, size=new, mode="bilinear", align_corners=False, antialias=True)
        return small.float().div_(255.0)
    return apply_policy(to_tensor(image), preprocess, crops)


def apply_policy(x: torch.Tensor, preprocess: Mapping[str, Any], crops: int = 1) -> torch.Tensor:
    """One image tensor (3, H, W) -> the batch of views the model scores (averaged by the caller)."""
    policy = preprocess.get("policy", "center_crop")
    size = int(preprocess.get("size", 224))
    if policy == "center_crop":
        return grid_crops(x, size, crops)
    if policy == "resize":
        return resize_short_side(x, size).unsqueeze(0)
    if policy == "native":
        return x.unsqueeze(0)
    if policy == "views":
        arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return whole_image_views(arr, preprocess)
    raise InvalidInput(f"unknown preprocess policy {policy!r} (views, center_crop, resize, native)")
