"""Untrusted bytes -> uint8 HxWx3 RGB array, with every limit checked before pixels are decoded.

Order of checks (cheapest first, so a hostile upload costs almost nothing):
1. byte size                      -> FileTooLarge   (413)
2. a photo format Pillow can open -> NotAnImage     (415)  (no EPS/PSD/FITS/...: DecodeLimits.formats)
3. pixel count from the header    -> TooManyPixels  (413)  (Pillow's decompression-bomb guard stays on)
4. shortest side from the header  -> ImageTooSmall  (422)
5. decode                         -> TruncatedImage (422)  (LOAD_TRUNCATED_IMAGES is never set)
Any exception a decoder raises (Pillow plugins raise more than OSError: the AVIF plugin's
`load()` raises RuntimeError on a bit-flipped payload) means "not a readable image": NotAnImage
while opening, TruncatedImage from then on; MemoryError while decoding is TooManyPixels.
Steps 1-4 look at the file and its header, so they hold whatever scale the pixels are decoded at.
With `min_short_side` (callers that downscale anyway, e.g. the "views" scoring policy), a JPEG
whose shorter side is at least twice that is decoded at 1/2, 1/4 or 1/8 scale through the DCT
(Pillow's `draft`): never below `min_short_side`, several times less work and memory for a photo
from a phone. `decode` also returns the full size, which is what users are told the image measures.
Then EXIF orientation is applied and any mode (L, 1, P, LA, RGBA, CMYK, I;16, I, F, ...) becomes
8-bit RGB; transparent pixels are composited on white; animations give their first frame.
"""

import functools
import io
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from metaiqa.errors import MetaIQAError

log = logging.getLogger(__name__)


# Photo formats only. Pillow can open ~40 formats; some decode through external programs
# (EPS runs Ghostscript) or are rarely-audited parsers (FITS, PSD, ...): not for untrusted uploads.
PHOTO_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "AVIF", "PPM", "TGA", "QOI")


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on what `decode_image` accepts; the service and the CLI share the defaults."""

    max_bytes: int = 25 * 2**20
    max_pixels: int = 50_000_000
    min_side: int = 32
    formats: tuple[str, ...] = PHOTO_FORMATS


class DecodeError(MetaIQAError):
    """An input could not be turned into an RGB image; `http_status` is the answer the service gives."""

    http_status: int = 422

    def __init__(self, message: str, *, value: object = None, limit: object = None):
        super().__init__(message)
        self.value = value
        self.limit = limit


class FileTooLarge(DecodeError):
    http_status = 413


class TooManyPixels(DecodeError):
    http_status = 413


class NotAnImage(DecodeError):
    http_status = 415


class TruncatedImage(DecodeError):
    """The format was recognised but the pixel data is cut short or corrupt."""

    http_status = 422


class ImageTooSmall(DecodeError):
    http_status = 422


def _ensure_bomb_guard(max_pixels: int) -> None:
    """Keep Pillow's guard on and never stricter than our own limit (so our message wins).

    (The warning is turned into an error with `warnings.catch_warnings`, which is process-wide;
    under concurrent calls the worst case is that filter staying installed, which is harmless.)
    The global only ever grows to the largest limit in use, which makes concurrent calls with
    different limits safe: Pillow warns above it and refuses above twice it, and both are
    already above every caller's own `max_pixels`.
    """
    if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


@functools.cache
def _available_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    """The accepted formats this Pillow build can open (Pillow raises KeyError for unknown ones)."""
    Image.init()
    return tuple(f for f in (x.upper() for x in formats) if f in Image.OPEN)


def _check_size(n_bytes: int, limits: DecodeLimits, what: str) -> None:
    if n_bytes > limits.max_bytes:
        raise FileTooLarge(
            f"{what} is {n_bytes} bytes, more than the limit of {limits.max_bytes} bytes",
            value=n_bytes,
            limit=limits.max_bytes,
        )


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; alpha composited on white, 16/32-bit integer scaled to 8 bits."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F" and arr.size and np.nanmax(arr) <= 1.0:
            arr = arr * 255.0  # float images in [0, 1]
        elif mode.startswith("I;16") or (arr.size and np.nanmax(arr) > 255):
            arr = arr / 257.0  # 0..65535 -> 0..255 exactly at both ends
        arr = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    return img.convert("RGB")  # 1, L, CMYK, YCbCr, LAB, HSV, ...


@dataclass(frozen=True)
class DecodedImage:
    """Decoded pixels plus the image's full size (after EXIF orientation).

    `pixels` may be smaller than `width` x `height` when a JPEG was decoded at reduced scale
    (`min_short_side`); the full size is what users are told the image measures.
    """

    pixels: np.ndarray
    width: int
    height: int


def _open(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Image.open with our format list; Pillow's bomb guard (on the header size) -> TooManyPixels."""
    try:
        return Image.open(io.BytesIO(data), formats=_available_formats(limits.formats))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooManyPixels(
            f"image header declares too many pixels ({exc}); limit is {limits.max_pixels} pixels",
            limit=limits.max_pixels,
        ) from exc
    except Exception as exc:  # UnidentifiedImageError, OSError, SyntaxError, ... whatever a plugin raises
        head = data[:8].hex()
        raise NotAnImage(
            f"not a recognised image ({len(data)} bytes, starting with 0x{head or '<empty>'}); "
            f"accepted formats: {', '.join(limits.formats)}",
            value=head,
        ) from exc


SizeCheck = Callable[[int, int], None]


def _check_header(img: Image.Image, limits: DecodeLimits, check: SizeCheck | None = None) -> None:
    """Pixel count, shortest side and the caller's `check(height, width)` from the header, before
    any pixel is decoded."""
    w, h = img.size
    if w * h > limits.max_pixels:
        raise TooManyPixels(
            f"image is {w}x{h} = {w * h} pixels, more than the limit of {limits.max_pixels}",
            value=w * h,
            limit=limits.max_pixels,
        )
    if min(w, h) < limits.min_side:
        raise ImageTooSmall(
            f"image is {w}x{h}; its shorter side {min(w, h)} is below the minimum of {limits.min_side} px",
            value=min(w, h),
            limit=limits.min_side,
        )
    if check is not None:
        check(h, w)


def _draft(img: Image.Image, min_short_side: int | None) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale, keeping its short side >= `min_short_side`.

    Pillow's `draft` picks the largest DCT scale s in (8, 4, 2, 1) with s <= short // target, so
    the decoded short side ceil(short / s) is never below the target (and below twice it unless
    s is capped at 8). Other formats ignore it. Called only after `_check_header`: the limits
    apply to the size the header declares, not to the reduced decode.
    """
    if min_short_side is None or img.format not in ("JPEG", "MPO"):
        return
    if min(img.size) >= 2 * int(min_short_side):
        img.draft(None, (int(min_short_side), int(min_short_side)))


def _load_frame(
    img: Image.Image, limits: DecodeLimits, full: tuple[int, int], n_bytes: int, min_short_side: int | None
) -> Image.Image:
    """Decode the first frame (at draft scale if allowed); any decoder error -> TooManyPixels / TruncatedImage."""
    fmt = img.format
    w, h = full
    try:
        _draft(img, min_short_side)
        img.load()  # Image.open leaves animations on frame 0
        return img.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooManyPixels(
            f"image frame has too many pixels ({exc}); limit is {limits.max_pixels}",
            limit=limits.max_pixels,
        ) from exc
    except MemoryError as exc:
        raise TooManyPixels(f"{fmt or 'image'} {w}x{h} does not fit in memory to decode", value=w * h) from exc
    except Exception as exc:  # OSError, SyntaxError, EOFError, RuntimeError (AVIF), ...: any decoder fault
        raise TruncatedImage(
            f"{fmt or 'image'} {w}x{h} could not be decoded, file truncated or corrupt "
            f"({type(exc).__name__}: {str(exc)[:200]})",
            value=n_bytes,
        ) from exc


def _orient(frame: Image.Image, full: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """Apply EXIF orientation to the frame; the full (header) size turns with it."""
    before = frame.size
    try:
        frame = ImageOps.exif_transpose(frame)
    except Exception as exc:  # broken EXIF (any parser error): keep pixels as stored
        log.warning("ignoring unreadable EXIF orientation (%s)", exc)
    turned = before[0] != before[1] and frame.size == (before[1], before[0])
    return frame, ((full[1], full[0]) if turned else full)


def decode(
    data: bytes,
    limits: DecodeLimits = DecodeLimits(),
    *,
    min_short_side: int | None = None,
    check: SizeCheck | None = None,
) -> DecodedImage:
    """Decode untrusted image bytes (see `decode_image`), returning the full size alongside.

    `min_short_side`: the caller downscales anyway, so a large JPEG may be decoded at reduced
    scale (1/2, 1/4, 1/8) as long as its shorter side stays >= this many pixels. The byte,
    pixel-count and minimum-side limits are checked against the file and its header first,
    then `check(height, width)` (the caller's own refusal, e.g. the Scorer's aspect-ratio
    limit), so an image nobody will score costs no decoding (EXIF orientation swaps height
    and width later; a check that cares must be symmetric).
    """
    _check_size(len(data), limits, "image")
    _ensure_bomb_guard(limits.max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = _open(data, limits)
        with img:
            full = img.size
            _check_header(img, limits, check)
            frame = _load_frame(img, limits, full, len(data), min_short_side)
    frame, full = _orient(frame, full)
    pixels = _rgb_pixels(frame, full, len(data))
    return DecodedImage(pixels, int(full[0]), int(full[1]))


def _rgb_pixels(frame: Image.Image, full: tuple[int, int], n_bytes: int) -> np.ndarray:
    """The decoded frame as a writable uint8 HxWx3 array; a conversion fault -> TruncatedImage."""
    try:
        pixels = np.array(_to_rgb(frame), dtype=np.uint8, order="C")  # a writable copy, unlike np.asarray
    except MemoryError as exc:
        raise TooManyPixels(f"image {full[0]}x{full[1]} does not fit in memory to convert", value=full[0] * full[1]) from exc
    except Exception as exc:  # a mode or palette Pillow decoded but cannot convert
        raise TruncatedImage(
            f"{frame.mode} image {full[0]}x{full[1]} could not be converted to RGB "
            f"({type(exc).__name__}: {str(exc)[:200]})",
            value=n_bytes,
        ) from exc
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise TruncatedImage(f"image {full[0]}x{full[1]} decoded to shape {pixels.shape}, not HxWx3", value=n_bytes)
    return pixels


def decode_image(
    data: bytes, limits: DecodeLimits = DecodeLimits(), *, min_short_side: int | None = None
) -> np.ndarray:
    """Decode untrusted image bytes to a uint8 HxWx3 RGB array, EXIF-oriented, first frame only.

    With `min_short_side`, a large JPEG may come back smaller than its header says (see `decode`).
    """
    return decode(data, limits, min_short_side=min_short_side).pixels


def read_file(
    path: str | os.PathLike,
    limits: DecodeLimits = DecodeLimits(),
    *,
    min_short_side: int | None = None,
    check: SizeCheck | None = None,
) -> DecodedImage:
    """`decode` for a file, refusing an oversized one from its size on disk before reading it.

    Missing or unreadable files raise OSError (FileNotFoundError, IsADirectoryError, ...),
    which callers report per file.
    """
    path = Path(path)
    _check_size(path.stat().st_size, limits, str(path))
    return decode(path.read_bytes(), limits, min_short_side=min_short_side, check=check)


def read_image_file(
    path: str | os.PathLike, limits: DecodeLimits = DecodeLimits(), *, min_short_side: int | None = None
) -> np.ndarray:
    """Decode an image file to uint8 HxWx3 (see `read_file`)."""
    return read_file(path, limits, min_short_side=min_short_side).pixels
