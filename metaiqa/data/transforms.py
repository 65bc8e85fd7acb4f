"""Image <-> tensor conversion and the crop/resize policies shared by training and scoring.

Models take float RGB in [0, 1] (N, 3, H, W). A checkpoint's `preprocess` dict names the
scoring policy: {"policy": "center_crop", "size": 224} | {"policy": "native"} |
{"policy": "resize", "size": 224}.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

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
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    tops = np.linspace(0, h - size, rows).round().astype(int)
    lefts = np.linspace(0, w - size, cols).round().astype(int)
    boxes = [(t, lf) for t in tops for lf in lefts][:n]
    return torch.stack([x[..., t : t + size, lf : lf + size] for t, lf in boxes])


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
    raise InvalidInput(f"unknown preprocess policy {policy!r} (center_crop, resize, native)")
