"""Heatmap overlays: colour maps, a legend strip (colour bar + score) and PNG encoding.

Every overlay PNG is the photo with the colour-mapped map blended on top, and below it a legend
strip of the photo's width: the image's score, what the map shows and on which scale, and a
colour bar with its end labels. Two colour maps, chosen by what the values mean:

- `views` maps hold SCORES on a fixed scale (see heatmap.py): 0 = red (bad), 0.5 = yellow,
  1 = blue (good). A clean photo stays blue, damage shows red, two photos compare directly.
- `gradient` / `gradcam` maps are RELATIVE to their own image (1 = that image's strongest
  value): a turbo-like map from dark blue (0) to dark red (1 = most sensitive).

numpy and Pillow only (the scoring path must not import matplotlib); the text uses Pillow's
built-in default font.
"""

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from metaiqa.errors import InvalidInput


def _lut(stops: list[float], colours: list[list[float]]) -> np.ndarray:
    s, c = np.asarray(stops), np.asarray(colours)
    table = np.stack([np.interp(np.linspace(0, 1, 256), s, c[:, k]) for k in range(3)], axis=1)
    return (table * 255).round().astype(np.uint8)


# A turbo-like map (dark blue -> cyan -> green -> yellow -> red): relative maps, red = most.
_TURBO = _lut(
    [0.0, 0.15, 0.35, 0.5, 0.65, 0.85, 1.0],
    [
        [0.19, 0.07, 0.23],
        [0.25, 0.45, 0.95],
        [0.10, 0.80, 0.80],
        [0.40, 0.95, 0.35],
        [0.95, 0.85, 0.20],
        [0.98, 0.45, 0.10],
        [0.60, 0.03, 0.02],
    ],
)
# Red -> yellow -> blue (colour-blind safe, like ColorBrewer RdYlBu): scores, red = bad, blue = good.
_SCORE = _lut(
    [0.0, 0.25, 0.5, 0.75, 1.0],
    [[0.65, 0.0, 0.15], [0.96, 0.43, 0.26], [1.0, 1.0, 0.75], [0.45, 0.68, 0.82], [0.19, 0.21, 0.58]],
)

#: Colour map per heatmap method (views: fixed score scale; the others: relative).
COLOUR_MAPS = {"views": _SCORE, "gradient": _TURBO, "gradcam": _TURBO}

#: The words under the colour bar: (left end, right end, title) per method.
BAR_LABELS = {
    "views": ("0 bad", "1 good", "local score, fixed 0-1 scale"),
    "gradient": ("0", "1 = this image's max", "sensitivity, relative to this image"),
    "gradcam": ("0", "1 = this image's max", "Grad-CAM, relative to this image"),
}


def _table(method: str) -> np.ndarray:
    try:
        return COLOUR_MAPS[method]
    except KeyError:
        raise InvalidInput(f"no colour map for heatmap method {method!r}; one of {', '.join(COLOUR_MAPS)}") from None


def colorize(heat: np.ndarray, method: str = "gradient") -> np.ndarray:
    """HxW values in [0, 1] -> uint8 HxWx3 colours of `method`'s map (clipped, NaN -> 0)."""
    idx = (np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float64)), 0, 1) * 255).round().astype(np.intp)
    return _table(method)[idx]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """`text`, cut at a word boundary (with '...') so it fits in `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    words = text.split()
    while words and draw.textlength(" ".join(words) + " ...", font=font) > width:
        words.pop()
    return " ".join(words) + " ..." if words else ""


def legend_strip(width: int, method: str, score: float | None) -> np.ndarray:
    """uint8 (h, width, 3): score and title on one line, the colour bar, its end labels."""
    table = _table(method)
    left, right, title = BAR_LABELS[method]
    fs = int(np.clip(round(width / 40), 9, 36))
    pad, bar_h = max(2, fs // 3), max(6, fs)
    height = 3 * pad + 2 * fs + bar_h + pad
    strip = Image.new("RGB", (width, height), (255, 255, 255))
    draw, font = ImageDraw.Draw(strip), _font(fs)
    head = f"score {score:.3f}" if score is not None else ""
    draw.text((pad, pad), head, fill=(0, 0, 0), font=font)
    used = draw.textlength(head + "  ", font=font) if head else 0
    draw.text((pad + used, pad), _fit(draw, title, font, width - 2 * pad - used), fill=(60, 60, 60), font=font)
    top, span = 2 * pad + fs, max(1, width - 2 * pad)
    ramp = table[np.linspace(0, 255, span).round().astype(np.intp)]
    bar = np.broadcast_to(ramp[None], (bar_h, span, 3))
    strip.paste(Image.fromarray(np.ascontiguousarray(bar), "RGB"), (pad, top))
    draw.rectangle((pad - 1, top - 1, pad + span, top + bar_h), outline=(0, 0, 0))
    y = top + bar_h + pad
    draw.text((pad, y), left, fill=(0, 0, 0), font=font)
    right = _fit(draw, right, font, max(0.0, width / 2 - pad))
    draw.text((width - pad - draw.textlength(right, font=font), y), right, fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def blend(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45, method: str = "gradient") -> np.ndarray:
    """uint8 HxWx3: the image with `method`'s colour map of `heat` blended on top (heat resized to fit)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InvalidInput(f"expected a uint8 HxWx3 RGB array, got {desc}")
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2:
        raise InvalidInput(f"heat must be a 2-D array, got shape {heat.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInput(f"alpha must be in [0, 1], got {alpha}")
    h, w = image.shape[:2]
    if heat.shape != (h, w):
        heat = np.asarray(Image.fromarray(heat, "F").resize((w, h), Image.Resampling.BILINEAR))
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * colorize(heat, method).astype(np.float32)
    return np.clip(mixed, 0, 255).round().astype(np.uint8)


def overlay_png(
    image: np.ndarray,
    heat: np.ndarray,
    alpha: float = 0.45,
    *,
    method: str = "gradient",
    score: float | None = None,
    legend: bool = True,
) -> bytes:
    """PNG bytes: the blended image (its own size), then (legend=True) the legend strip below it.

    `method` picks the colour map and the bar's labels (views: fixed score scale, red = bad;
    gradient/gradcam: relative); `score` is written on the strip.
    """
    picture = blend(image, heat, alpha, method)
    if legend:
        picture = np.concatenate([picture, legend_strip(picture.shape[1], method, score)], axis=0)
    buf = io.BytesIO()
    Image.fromarray(picture, "RGB").save(buf, "PNG")
    return buf.getvalue()
