"""Colour and tone: colour diffusion/shift/quantisation, saturation (HSV, LAB),
brighten, darken, mean shift, contrast change."""

import numpy as np
from PIL import Image

from metaiqa.distortions._ops import gaussian, lab_to_rgb, luminance, rgb_to_lab
from metaiqa.distortions.registry import as_float, register_distortion, to_uint8

DIFFUSION_SIGMA = (2.0, 4.0, 7.0, 12.0, 20.0)  # blur of the LAB chroma planes, px
SHIFT_PIXELS = (1, 2, 4, 6, 9)  # misregistration of one channel, px
QUANT_COLORS = (64, 32, 16, 8, 4)  # palette size (median cut, Floyd-Steinberg dither)
HSV_SATURATION = (0.75, 0.55, 0.35, 0.18, 0.0)  # factor on HSV saturation (desaturation)
LAB_CHROMA = (1.3, 1.7, 2.3, 3.2, 4.5)  # factor on LAB a*, b* (over-saturation)
BRIGHTEN_GAMMA = (1.3, 1.6, 2.0, 2.6, 3.5)  # HSV value V -> V ** (1 / gamma)
DARKEN_GAMMA = (1.3, 1.6, 2.0, 2.6, 3.5)  # HSV value V -> V ** gamma
MEAN_SHIFT = (0.04, 0.08, 0.13, 0.19, 0.26)  # added to every channel, sign drawn from rng
CONTRAST = (0.75, 0.6, 0.45, 0.32, 0.2)  # factor on deviations from the mean luminance


@register_distortion("color_diffusion")
def color_diffusion(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Chroma bleeding: blur the LAB a*, b* planes, keep lightness."""
    lab = rgb_to_lab(as_float(image))
    lab[..., 1:] = gaussian(lab[..., 1:], DIFFUSION_SIGMA[level - 1])
    return to_uint8(lab_to_rgb(lab))


@register_distortion("color_shift")
def color_shift(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Chromatic misregistration: one channel (random) displaced in a random direction."""
    channel = int(rng.integers(0, 3))
    angle = rng.uniform(0.0, 2 * np.pi)
    d = SHIFT_PIXELS[level - 1]
    dy, dx = int(round(d * np.sin(angle))), int(round(d * np.cos(angle)))
    if dy == 0 and dx == 0:
        dx = d
    h, w = image.shape[:2]
    yy = np.clip(np.arange(h) - dy, 0, h - 1)
    xx = np.clip(np.arange(w) - dx, 0, w - 1)
    out = image.copy()
    out[..., channel] = image[yy][:, xx, channel]
    return out


@register_distortion("color_quantization")
def color_quantization(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Palette reduction (median cut) with Floyd-Steinberg dithering, like MATLAB's rgb2ind."""
    pil = Image.fromarray(image)
    q = pil.quantize(colors=QUANT_COLORS[level - 1], method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
    return np.asarray(q.convert("RGB"))


@register_distortion("color_saturation_hsv")
def color_saturation_hsv(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Desaturation in HSV. Scaling S by k at fixed H, V is exactly c' = V - k (V - c) per channel."""
    x = as_float(image)
    v = x.max(axis=-1, keepdims=True)
    return to_uint8(v - HSV_SATURATION[level - 1] * (v - x))


@register_distortion("color_saturation_lab")
def color_saturation_lab(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Over-saturation: scale LAB chroma (a*, b*), clip to the sRGB gamut."""
    lab = rgb_to_lab(as_float(image))
    lab[..., 1:] *= LAB_CHROMA[level - 1]
    return to_uint8(lab_to_rgb(lab))


def _scale_value(x: np.ndarray, exponent: float) -> np.ndarray:
    """Tone curve V -> V**exponent on HSV value, hue and saturation kept (all channels scaled by V'/V)."""
    v = x.max(axis=-1, keepdims=True)
    safe = np.maximum(v, 1e-6)
    return x * (safe**exponent / safe)


@register_distortion("brighten")
def brighten(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    return to_uint8(_scale_value(as_float(image), 1.0 / BRIGHTEN_GAMMA[level - 1]))


@register_distortion("darken")
def darken(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    return to_uint8(_scale_value(as_float(image), DARKEN_GAMMA[level - 1]))


@register_distortion("mean_shift")
def mean_shift(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Constant offset on all channels; up or down (drawn from rng, so levels of a series agree)."""
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return to_uint8(as_float(image) + sign * MEAN_SHIFT[level - 1])


@register_distortion("contrast_change")
def contrast_change(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Contrast reduction towards the mean luminance (washed-out look)."""
    x = as_float(image)
    m = float(luminance(x).mean())
    return to_uint8(m + CONTRAST[level - 1] * (x - m))
