"""Compression and quantisation: JPEG, JPEG2000 (Pillow's OpenJPEG), intensity quantisation."""

import io
import logging

import numpy as np
from PIL import Image, features

from metaiqa.distortions.registry import register_distortion

log = logging.getLogger(__name__)

JPEG_QUALITY = (43, 18, 10, 5, 2)  # Pillow/libjpeg quality (KADID: 43, 12, 7, 4, 0)
JPEG2000_RATIO = (24, 48, 96, 180, 320)  # compression ratio of the irreversible (9/7) codec
QUANT_LEVELS = (20, 14, 10, 7, 4)  # intensity levels per channel, thresholds at quantiles


def _roundtrip(image: np.ndarray, fmt: str, **params) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **params)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


@register_distortion("jpeg")
def jpeg(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    return _roundtrip(image, "JPEG", quality=JPEG_QUALITY[level - 1], subsampling="4:2:0")


def _jpeg2000(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    ratio = JPEG2000_RATIO[level - 1]
    return _roundtrip(image, "JPEG2000", quality_mode="rates", quality_layers=[ratio], irreversible=True)


if features.check("jpg_2000"):
    jpeg2000 = register_distortion("jpeg2000")(_jpeg2000)
else:  # pragma: no cover - depends on how Pillow was built
    log.warning("Pillow was built without OpenJPEG: distortion 'jpeg2000' is not available")


@register_distortion("quantization")
def quantization(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Per-channel quantisation into N bins whose edges are the channel's quantiles (like
    MATLAB's multithresh + imquantize); each bin is replaced by its mean value -> banding."""
    n = QUANT_LEVELS[level - 1]
    out = np.empty_like(image)
    qs = np.linspace(0, 1, n + 1)[1:-1]
    for c in range(3):
        ch = image[..., c].ravel()
        edges = np.unique(np.quantile(ch, qs))
        idx = np.searchsorted(edges, ch, side="right")
        sums = np.bincount(idx, weights=ch, minlength=len(edges) + 1)
        counts = np.bincount(idx, minlength=len(edges) + 1)
        means = np.round(sums / np.maximum(counts, 1)).astype(np.uint8)
        out[..., c] = means[idx].reshape(image.shape[:2])
    return out
