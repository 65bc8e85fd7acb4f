"""Shared vectorised helpers: colour spaces and filtering on float32 HxWx3 images in [0, 1]."""

import numpy as np
from scipy import ndimage, signal

# sRGB (D65) <-> CIE XYZ
_RGB2XYZ = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
    dtype=np.float64,
)
_XYZ2RGB = np.linalg.inv(_RGB2XYZ)
_WHITE = _RGB2XYZ.sum(axis=1)  # XYZ of RGB (1, 1, 1)
_EPS = 216 / 24389
_KAPPA = 24389 / 27


def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] -> CIELAB (L in 0..100), float64."""
    xyz = _srgb_to_linear(rgb.astype(np.float64)) @ _RGB2XYZ.T / _WHITE
    f = np.where(xyz > _EPS, np.cbrt(xyz), (_KAPPA * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB -> sRGB float32 in [0, 1] (out-of-gamut values clipped)."""
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    xyz = np.where(f**3 > _EPS, f**3, (116 * f - 16) / _KAPPA) * _WHITE
    return _linear_to_srgb(xyz @ _XYZ2RGB.T).astype(np.float32)


# ITU-R BT.601 full-range YCbCr, all channels in [0, 1]
_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32)
_YCC_INV = np.linalg.inv(_YCC).astype(np.float32)


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    out = rgb @ _YCC.T
    out[..., 1:] += 0.5
    return out


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    ycc = ycc.copy()
    ycc[..., 1:] -= 0.5
    return ycc @ _YCC_INV.T


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ _YCC[0]


def gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over the two spatial axes (edges reflected), channels kept apart."""
    sig = (sigma, sigma) + (0,) * (x.ndim - 2)
    return ndimage.gaussian_filter(x, sigma=sig, mode="reflect", truncate=3.0)


def convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """2-D convolution of every channel with `kernel` (odd-sized), edges reflected, via FFT."""
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    padded = np.pad(x, ((ph, ph), (pw, pw), (0, 0)), mode="reflect")
    out = signal.fftconvolve(padded, kernel[:, :, None].astype(np.float32), mode="valid", axes=(0, 1))
    return out.astype(np.float32)


def disk_kernel(radius: float) -> np.ndarray:
    """Anti-aliased disk (a lens's circle of confusion), normalised to sum 1."""
    r = int(np.ceil(radius))
    y, x = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
    # 4x supersampled coverage of each pixel by the disk
    offs = (np.arange(4, dtype=np.float32) + 0.5) / 4 - 0.5
    cov = np.zeros_like(x)
    for dy in offs:
        for dx in offs:
            cov += ((x + dx) ** 2 + (y + dy) ** 2 <= radius**2).astype(np.float32)
    return cov / cov.sum()


def line_kernel(length: float, angle_deg: float) -> np.ndarray:
    """A straight motion-blur path of `length` pixels at `angle_deg`, bilinear-splatted, sum 1."""
    r = int(np.ceil(length / 2)) + 1
    k = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
    t = np.linspace(-length / 2, length / 2, max(2, int(np.ceil(length * 4))), dtype=np.float32)
    a = np.deg2rad(angle_deg)
    px, py = r + t * np.cos(a), r - t * np.sin(a)
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    fx, fy = px - x0, py - y0
    for ox, oy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(k, (y0 + oy, x0 + ox), w)
    return k / k.sum()
