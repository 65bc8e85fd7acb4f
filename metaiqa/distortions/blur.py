"""Blur and sharpening: gaussian, lens (disk) and motion blur; over-sharpening.

Parameters are in pixels for images of roughly 384-512 px (KADID-10k's 512x384).
"""

import numpy as np

from metaiqa.distortions._ops import convolve, disk_kernel, gaussian, line_kernel
from metaiqa.distortions.registry import as_float, register_distortion, to_uint8

GAUSSIAN_SIGMA = (0.7, 1.3, 2.2, 3.5, 6.0)
LENS_RADIUS = (1.0, 2.0, 3.5, 5.5, 8.0)
MOTION_LENGTH = (3.0, 5.0, 9.0, 14.0, 22.0)
SHARPEN_AMOUNT = (1.0, 2.0, 3.5, 6.0, 10.0)
SHARPEN_SIGMA = 1.5


@register_distortion("gaussian_blur")
def gaussian_blur(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    return to_uint8(gaussian(as_float(image), GAUSSIAN_SIGMA[level - 1]))


@register_distortion("lens_blur")
def lens_blur(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Defocus: convolution with a disk (circle of confusion)."""
    return to_uint8(convolve(as_float(image), disk_kernel(LENS_RADIUS[level - 1])))


@register_distortion("motion_blur")
def motion_blur(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Camera shake: a straight path of random direction (drawn first, so levels share it)."""
    angle = float(rng.uniform(0.0, 180.0))
    return to_uint8(convolve(as_float(image), line_kernel(MOTION_LENGTH[level - 1], angle)))


@register_distortion("high_sharpen")
def high_sharpen(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Unsharp masking with an exaggerated amount: halos and clipped edges."""
    x = as_float(image)
    return to_uint8(x + SHARPEN_AMOUNT[level - 1] * (x - gaussian(x, SHARPEN_SIGMA)))
