"""Synthetic damage for the independent check, written with OpenCV, Pillow and numpy only.

Deliberately NOT metaiqa's distortion engine (`metaiqa.distortions` is never imported here):
the point of `independent.py` is a second implementation with its own parameter choices.
Every function maps an RGB uint8 HxWx3 array, a severity parameter and a numpy Generator to a
new RGB uint8 array of the same shape. `damage(img, family, level, seed)` draws its randomness
from a generator seeded by (seed, family) only, so the five levels of one family on one photo
share their random numbers (common random numbers: level k+1 is level k made worse, not a new
noise draw) and the output is the same on every run.
"""

import hashlib
import zlib

import cv2
import numpy as np
from PIL import Image, ImageEnhance


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def gaussian_blur(img, sigma, rng):
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)


def motion_blur(img, length, rng):
    """A straight camera shake: an anti-aliased line kernel of `length` px at a random angle."""
    angle = rng.uniform(0, np.pi)
    half = (length - 1) / 2
    size = int(length) | 1
    k = np.zeros((size, size), np.float32)
    c = size // 2
    dx, dy = half * np.cos(angle), half * np.sin(angle)
    p0 = (int(round((c - dx) * 16)), int(round((c - dy) * 16)))
    p1 = (int(round((c + dx) * 16)), int(round((c + dy) * 16)))
    cv2.line(k, p0, p1, 1.0, 1, cv2.LINE_AA, shift=4)
    return cv2.filter2D(img, -1, k / k.sum(), borderType=cv2.BORDER_REFLECT)


def defocus(img, radius, rng):
    """Out-of-focus blur: a uniform disk kernel (pillbox) of `radius` px."""
    r = int(radius)
    k = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
    cv2.circle(k, (r, r), r, 1.0, -1, cv2.LINE_AA)
    return cv2.filter2D(img, -1, k / k.sum(), borderType=cv2.BORDER_REFLECT)


def white_noise(img, sigma, rng):
    return _u8(img + rng.normal(0.0, sigma, img.shape))


def salt_pepper(img, density, rng):
    """Impulse noise: a `density` share of pixels set to black or white (all channels)."""
    hit = rng.random(img.shape[:2]) < density
    white = rng.random(img.shape[:2]) < 0.5
    out = img.copy()
    out[hit & white] = 255
    out[hit & ~white] = 0
    return out


def speckle(img, sigma, rng):
    """Multiplicative noise: x * (1 + n), n ~ N(0, sigma) per pixel and channel."""
    return _u8(img * (1.0 + rng.normal(0.0, sigma, img.shape)))


def poisson(img, peak, rng):
    """Shot noise of a sensor collecting `peak` photons at full white (fewer photons = noisier)."""
    return _u8(rng.poisson(img / 255.0 * peak) / peak * 255.0)


def _cv2_roundtrip(img, ext: str, params: list[int]) -> np.ndarray:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {ext}")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def jpeg(img, quality, rng):
    return _cv2_roundtrip(img, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(quality)])


def jpeg2000(img, ratio_x1000, rng):
    """OpenJPEG through OpenCV; ratio_x1000/1000 * 24 is about the bits per pixel kept."""
    return _cv2_roundtrip(img, ".jp2", [cv2.IMWRITE_JPEG2000_COMPRESSION_X1000, int(ratio_x1000)])


def pixelate(img, factor, rng):
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, round(w / factor)), max(1, round(h / factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def contrast(img, alpha, rng):
    """Contrast reduction: blend towards the photo's mean grey, keeping `alpha` of the contrast."""
    mean = float(np.asarray(Image.fromarray(img).convert("L"), np.float64).mean())
    return _u8(mean + (img.astype(np.float64) - mean) * alpha)


def _exposure(img, stops):
    linear = (img / 255.0) ** 2.2  # approximate sRGB decoding
    return _u8(255.0 * np.clip(linear * 2.0**stops, 0, 1) ** (1 / 2.2))


def underexposure(img, stops, rng):
    return _exposure(img, -stops)


def overexposure(img, stops, rng):
    return _exposure(img, stops)


def desaturate(img, factor, rng):
    """Pillow's colour enhancer: blend towards the photo's greyscale (factor 0 = grey)."""
    return np.asarray(ImageEnhance.Color(Image.fromarray(img)).enhance(factor))


def posterize(img, levels, rng):
    """Uniform quantisation of every channel to `levels` values."""
    step = 255.0 / (levels - 1)
    return _u8(np.rint(img / step) * step)


#: family -> (function, parameters of severities 1..5, mildest first)
FAMILIES: dict[str, tuple] = {
    "gaussian_blur": (gaussian_blur, (0.8, 1.5, 2.5, 4.0, 6.0)),
    "motion_blur": (motion_blur, (5, 9, 15, 21, 31)),
    "defocus": (defocus, (2, 3, 5, 7, 10)),
    "white_noise": (white_noise, (5.0, 10.0, 20.0, 35.0, 55.0)),
    "salt_pepper": (salt_pepper, (0.005, 0.01, 0.03, 0.06, 0.12)),
    "speckle": (speckle, (0.05, 0.1, 0.2, 0.3, 0.45)),
    "poisson": (poisson, (400.0, 150.0, 50.0, 20.0, 8.0)),
    "jpeg": (jpeg, (60, 35, 20, 10, 4)),
    "jpeg2000": (jpeg2000, (30, 15, 8, 4, 2)),
    "pixelate": (pixelate, (2, 3, 4, 6, 8)),
    "contrast": (contrast, (0.7, 0.55, 0.4, 0.28, 0.18)),
    "underexposure": (underexposure, (0.5, 1.0, 1.5, 2.25, 3.0)),
    "overexposure": (overexposure, (0.5, 1.0, 1.5, 2.0, 2.75)),
    "desaturate": (desaturate, (0.7, 0.5, 0.3, 0.15, 0.0)),
    "posterize": (posterize, (20, 12, 8, 5, 3)),
}
LEVELS = 5
GENERATOR_VERSION = 1  # bump when a function or a parameter changes (invalidates generated sets)


def family_seed(seed: int, family: str) -> int:
    return zlib.crc32(f"{seed}:{family}".encode())


def damage(img: np.ndarray, family: str, level: int, seed: int) -> np.ndarray:
    """Severity `level` (1..5) of `family` applied to RGB uint8 `img`; deterministic given `seed`."""
    fn, params = FAMILIES[family]
    if not 1 <= level <= LEVELS:
        raise ValueError(f"level must be 1..{LEVELS}, got {level}")
    out = fn(np.ascontiguousarray(img), params[level - 1], np.random.default_rng(family_seed(seed, family)))
    assert out.shape == img.shape and out.dtype == np.uint8
    return out


def fingerprint() -> str:
    """Hash of the families, their parameters and the version: names a generated set's recipe."""
    text = repr(GENERATOR_VERSION) + repr({k: v[1] for k, v in FAMILIES.items()})
    return hashlib.sha256(text.encode()).hexdigest()[:16]

