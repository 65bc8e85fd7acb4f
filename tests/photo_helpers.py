"""A generated stand-in for a real photo: 1/f texture, shapes, edges and grain, seeded.

Natural images have a roughly 1/f amplitude spectrum: detail at every scale, which is what a
whole-image test needs (a smooth gradient looks the same at any resolution; a photo does not).
No files from outside the repository, no network.
"""

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# correlated colour channels, as in photos (a grey-ish luminance field plus weaker chroma)
_MIX = np.array([[1.0, 0.9, 0.8], [0.3, 0.4, 0.2], [0.1, -0.2, 0.3]], dtype=np.float32)


def _pink_noise(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) random-phase noise with a 1/f amplitude spectrum, unit variance per channel."""
    fy = np.fft.fftfreq(height).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(width).astype(np.float32)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    amp = 1.0 / f
    amp[0, 0] = 0.0
    chans = []
    for _ in range(3):
        phase = rng.uniform(0, 2 * np.pi, amp.shape).astype(np.float32)
        field = np.fft.irfft2(amp * np.exp(1j * phase), s=(height, width)).astype(np.float32)
        chans.append(field / field.std())
    return np.stack(chans, -1) @ _MIX


def _shapes(canvas: Image.Image, rng: np.random.Generator, n_shapes: int = 40, n_lines: int = 30) -> None:
    width, height = canvas.size
    draw = ImageDraw.Draw(canvas)
    for _ in range(n_shapes):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 40, width // 6)), int(rng.integers(height // 40, height // 6))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + w, y0 + h], fill=color)
    for _ in range(n_lines):
        pts = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(2)]
        draw.line(pts, fill=tuple(int(c) for c in rng.integers(0, 256, 3)), width=int(rng.integers(2, 9)))


def synthetic_photo(width: int = 2400, height: int = 1600, seed: int = 0) -> np.ndarray:
    """uint8 HxWx3: 1/f texture + hard-edged shapes and lines + slight optical blur + sensor grain."""
    rng = np.random.default_rng(seed)
    base = np.clip(0.5 + 0.12 * _pink_noise(height, width, rng), 0, 1)
    canvas = Image.fromarray((base * 255).astype(np.uint8))
    _shapes(canvas, rng)
    arr = np.asarray(canvas.filter(ImageFilter.GaussianBlur(0.7)), dtype=np.float32)
    arr += rng.normal(0, 4, arr.shape).astype(np.float32)
    return np.clip(arr, 0, 255).round().astype(np.uint8)


def resized(image: np.ndarray, width: int) -> np.ndarray:
    """The same photo at another width (anti-aliased, aspect kept), as a camera/export would give it."""
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((width, round(h * width / w)), Image.Resampling.LANCZOS))
