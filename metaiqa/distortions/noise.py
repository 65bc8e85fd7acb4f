"""Noise: white (RGB and chroma), impulse, multiplicative; denoising artefacts.

Noise fields are drawn at unit scale and multiplied by the level's strength, so the five
levels made from one seed share the same pattern and differ only in amplitude.
"""

import numpy as np
from scipy import ndimage

from metaiqa.distortions._ops import rgb_to_ycbcr, ycbcr_to_rgb
from metaiqa.distortions.registry import as_float, register_distortion, to_uint8

WHITE_SIGMA = (0.02, 0.035, 0.055, 0.085, 0.13)  # std of additive gaussian noise (image in [0, 1])
CHROMA_SIGMA = (0.03, 0.05, 0.08, 0.12, 0.17)  # std of noise on Cb and Cr
IMPULSE_DENSITY = (0.002, 0.006, 0.015, 0.03, 0.06)  # fraction of samples set to 0 or 1
SPECKLE_SIGMA = (0.05, 0.1, 0.17, 0.26, 0.38)  # x * (1 + sigma * n)
DENOISE_SIGMA = (0.03, 0.05, 0.075, 0.11, 0.16)  # noise removed by an adaptive Wiener filter
DENOISE_WINDOW = 5


def _normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


@register_distortion("white_noise")
def white_noise(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    return to_uint8(as_float(image) + WHITE_SIGMA[level - 1] * _normal(rng, image.shape))


@register_distortion("white_noise_color_component")
def white_noise_color_component(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """White noise on the chroma planes of YCbCr (luma untouched)."""
    ycc = rgb_to_ycbcr(as_float(image))
    ycc[..., 1:] += CHROMA_SIGMA[level - 1] * _normal(rng, image.shape[:2] + (2,))
    return to_uint8(ycbcr_to_rgb(ycc))


@register_distortion("impulse_noise")
def impulse_noise(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper per sample; the set hit at a lower level is a subset of a higher one's."""
    u = rng.random(image.shape, dtype=np.float32)
    salt = rng.random(image.shape, dtype=np.float32) < 0.5
    hit = u < IMPULSE_DENSITY[level - 1]
    out = image.copy()
    out[hit & salt] = 255
    out[hit & ~salt] = 0
    return out


@register_distortion("multiplicative_noise")
def multiplicative_noise(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Speckle: noise proportional to intensity."""
    x = as_float(image)
    return to_uint8(x * (1.0 + SPECKLE_SIGMA[level - 1] * _normal(rng, image.shape)))


@register_distortion("denoise")
def denoise(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """White noise, then an adaptive Wiener filter told the true noise power: smeared texture,
    residual noise near edges (the look of an over-eager denoiser)."""
    sigma = DENOISE_SIGMA[level - 1]
    noisy = as_float(image) + sigma * _normal(rng, image.shape)
    size = (DENOISE_WINDOW, DENOISE_WINDOW, 1)
    mean = ndimage.uniform_filter(noisy, size, mode="reflect")
    var = np.maximum(ndimage.uniform_filter(noisy * noisy, size, mode="reflect") - mean * mean, 0.0)
    noise = sigma**2
    gain = np.maximum(var - noise, 0.0) / np.maximum(var, noise)
    return to_uint8(mean + gain * (noisy - mean))
