"""Spatial distortions: jitter, non-eccentricity patches, pixelation, colour blocks.

Random positions are drawn for the worst level and the first n used, so a milder level's
damage is a subset of a stronger one's (levels of one seed form a clean series).
Patch and block sizes scale with the image (KADID used 512x384 images).
"""

import numpy as np
from PIL import Image
from scipy import ndimage

from metaiqa.distortions.registry import as_float, register_distortion, to_uint8

JITTER_PIXELS = (0.4, 0.7, 1.1, 1.6, 2.4)  # std of the random per-pixel displacement
PATCH_COUNT = (8, 16, 32, 56, 90)  # patches per 512x384 pixels
PATCH_FRACTION = 1 / 24  # patch side / shorter image side
PIXEL_BLOCK = (2.0, 3.0, 4.5, 7.0, 10.0)  # side of a pixelation block, px
BLOCK_COUNT = (1, 2, 4, 6, 9)
BLOCK_FRACTION = 1 / 12  # block side / shorter image side


@register_distortion("jitter")
def jitter(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Every pixel sampled from a randomly displaced position (bilinear), edges replicated."""
    h, w = image.shape[:2]
    disp = rng.standard_normal((2, h, w), dtype=np.float32) * JITTER_PIXELS[level - 1]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    coords = [yy + disp[0], xx + disp[1]]
    x = as_float(image)
    out = np.stack([ndimage.map_coordinates(x[..., c], coords, order=1, mode="nearest") for c in range(3)], -1)
    return to_uint8(out)


def _n_scaled(count: int, h: int, w: int) -> int:
    return max(1, int(round(count * h * w / (512 * 384))))


@register_distortion("non_eccentricity_patch")
def non_eccentricity_patch(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Small patches copied to a nearby random position: local content discontinuities."""
    h, w = image.shape[:2]
    p = max(3, int(round(min(h, w) * PATCH_FRACTION)))
    n_max = max(len(PATCH_COUNT), _n_scaled(PATCH_COUNT[-1], h, w))
    n = max(level, _n_scaled(PATCH_COUNT[level - 1], h, w))  # at least one more patch per level
    src = np.stack([rng.integers(0, h - p + 1, n_max), rng.integers(0, w - p + 1, n_max)], axis=1)
    off = rng.integers(-2 * p, 2 * p + 1, (n_max, 2))
    dst = np.clip(src + off, 0, [h - p, w - p])
    out = image.copy()
    for (sy, sx), (dy, dx) in zip(src[:n], dst[:n], strict=True):
        out[dy : dy + p, dx : dx + p] = image[sy : sy + p, sx : sx + p]
    return out


@register_distortion("pixelate")
def pixelate(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Box-downsample by the block size, then nearest-neighbour upsample."""
    h, w = image.shape[:2]
    b = PIXEL_BLOCK[level - 1]
    small = Image.fromarray(image).resize((max(1, round(w / b)), max(1, round(h / b))), Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.NEAREST))


@register_distortion("color_block")
def color_block(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform blocks of random colour pasted at random positions."""
    h, w = image.shape[:2]
    s = max(2, int(round(min(h, w) * BLOCK_FRACTION)))
    n_max = BLOCK_COUNT[-1]
    pos = np.stack([rng.integers(0, h - s + 1, n_max), rng.integers(0, w - s + 1, n_max)], axis=1)
    colors = rng.integers(0, 256, (n_max, 3), dtype=np.uint8)
    out = image.copy()
    for (y, x), col in zip(pos[: BLOCK_COUNT[level - 1]], colors, strict=False):
        out[y : y + s, x : x + s] = col
    return out
