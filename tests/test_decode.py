"""decode_image: every limit, every mode conversion, generated images only."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from metaiqa.errors import MetaIQAError
from metaiqa.inference.decode import (
    DecodeError,
    DecodeLimits,
    FileTooLarge,
    ImageTooSmall,
    NotAnImage,
    TooManyPixels,
    TruncatedImage,
    decode_image,
    read_image_file,
)
from tests.conftest import natural_image


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height (valid CRC) and whose data is a few bytes."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_rgb_png_round_trip_exact(rgb_image):
    out = decode_image(encode(Image.fromarray(rgb_image)))
    assert out.dtype == np.uint8 and out.shape == rgb_image.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb_image)


def test_jpeg_decodes_close_to_source(rgb_image):
    out = decode_image(encode(Image.fromarray(rgb_image), "JPEG", quality=95))
    assert out.shape == rgb_image.shape
    assert np.abs(out.astype(int) - rgb_image).mean() < 4


def test_file_too_large_checked_before_decoding():
    blob = b"\x00" * 1000  # not even an image: the size check must come first
    with pytest.raises(FileTooLarge) as err:
        decode_image(blob, DecodeLimits(max_bytes=999))
    assert "1000" in str(err.value) and "999" in str(err.value)
    assert err.value.value == 1000 and err.value.limit == 999
    assert err.value.http_status == 413


@pytest.mark.parametrize("blob", [b"", b"hello, world, not an image at all", bytes(range(256)) * 4])
def test_not_an_image(blob):
    with pytest.raises(NotAnImage) as err:
        decode_image(blob)
    assert err.value.http_status == 415
    assert str(len(blob)) in str(err.value)


def test_too_many_pixels_from_header_with_tiny_limit(rgb_image):
    with pytest.raises(TooManyPixels) as err:
        decode_image(encode(Image.fromarray(rgb_image)), DecodeLimits(max_pixels=96 * 96 - 1))
    assert str(96 * 96) in str(err.value) and str(96 * 96 - 1) in str(err.value)
    assert err.value.http_status == 413


@pytest.mark.parametrize(
    "width,height",
    [
        (8000, 8000),  # 64 MP: above our 50 MP limit, below Pillow's guard -> our own check
        (10_000, 10_000),  # 100 MP: Pillow's DecompressionBombWarning (turned into an error)
        (100_000, 100_000),  # 10 GP: Pillow's DecompressionBombError at open
    ],
)
def test_decompression_bomb_header_is_refused_without_decoding(width, height):
    blob = png_header_only(width, height)
    assert len(blob) < 200
    with pytest.raises(TooManyPixels) as err:
        decode_image(blob)
    assert str(width * height) in str(err.value)
    assert Image.MAX_IMAGE_PIXELS is not None  # the guard stays on


def test_image_too_small():
    blob = encode(Image.new("RGB", (100, 20), (10, 20, 30)))
    with pytest.raises(ImageTooSmall) as err:
        decode_image(blob)
    assert "100x20" in str(err.value) and "32" in str(err.value)
    assert err.value.http_status == 422
    assert decode_image(blob, DecodeLimits(min_side=20)).shape == (20, 100, 3)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(rgb_image, fmt):
    blob = encode(Image.fromarray(natural_image(128, seed=3)), fmt)
    with pytest.raises(TruncatedImage) as err:
        decode_image(blob[: len(blob) // 2])
    assert err.value.http_status in (415, 422)
    assert fmt in str(err.value)


def test_all_errors_are_metaiqa_errors_with_status():
    for cls in (FileTooLarge, TooManyPixels, NotAnImage, TruncatedImage, ImageTooSmall):
        assert issubclass(cls, DecodeError) and issubclass(cls, MetaIQAError)
        assert cls.http_status in (413, 415, 422)


def test_exif_orientation_applied():
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:10, :10] = (255, 0, 0)  # red marker top-left as stored
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_image(encode(img, "PNG", exif=exif.tobytes()))
    assert out.shape == (60, 40, 3)
    np.testing.assert_array_equal(out, np.asarray(img.transpose(Image.Transpose.ROTATE_270)))
    assert tuple(out[0, -1]) == (255, 0, 0)  # the marker is now top-right


def test_grayscale_and_bilevel_to_rgb(rgb_image):
    gray = Image.fromarray(rgb_image).convert("L")
    out = decode_image(encode(gray))
    assert out.shape == (96, 96, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], np.asarray(gray))
    bw = decode_image(encode(gray.convert("1")))
    assert set(np.unique(bw)) <= {0, 255} and (bw[..., 0] == bw[..., 2]).all()


def test_cmyk_to_rgb():
    cmyk = Image.new("CMYK", (40, 40), (0, 255, 255, 0))  # pure red in CMYK
    for fmt in ("JPEG", "TIFF"):
        out = decode_image(encode(cmyk, fmt))
        r, g, b = out[20, 20].astype(int)
        assert r > 200 and g < 60 and b < 60, (fmt, out[20, 20])


def test_rgba_composited_on_white():
    arr = np.zeros((40, 40, 4), np.uint8)
    arr[:, :20] = (0, 0, 255, 0)  # fully transparent blue -> white
    arr[:, 20:30] = (0, 0, 255, 255)  # opaque blue stays blue
    arr[:, 30:] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    out = decode_image(encode(Image.fromarray(arr, "RGBA")))
    assert tuple(out[5, 5]) == (255, 255, 255)
    assert tuple(out[5, 25]) == (0, 0, 255)
    assert abs(int(out[5, 35, 0]) - 127) <= 1 and out[5, 35, 0] == out[5, 35, 2]


def test_la_composited_on_white():
    arr = np.zeros((40, 40, 2), np.uint8)
    arr[:, :20] = (0, 0)  # transparent black -> white
    arr[:, 20:] = (50, 255)
    out = decode_image(encode(Image.fromarray(arr, "LA")))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 30]) == (50, 50, 50)


def test_palette_with_and_without_transparency():
    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    pal.paste(1, (20, 0, 40, 40))
    out = decode_image(encode(pal))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 30]) == (0, 255, 0)
    out = decode_image(encode(pal, "GIF", transparency=0))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 30]) == (0, 255, 0)


def test_16bit_grayscale_scaled_to_8bit():
    values = np.array([0, 257 * 100, 65535, 1000], dtype=np.uint16)
    arr = np.repeat(values, 40 * 10).reshape(4, 40, 10).transpose(1, 0, 2).reshape(40, 40)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    blob = encode(img)
    assert Image.open(io.BytesIO(blob)).mode.startswith("I")  # Pillow keeps 16 bits
    out = decode_image(blob)
    assert out[0, 0, 0] == 0 and out[0, 10, 0] == 100 and out[0, 20, 0] == 255
    assert out[0, 30, 0] == round(1000 / 257)  # 1000 would wrongly clip to 255 if not scaled


def test_animated_gif_gives_first_frame():
    red = Image.new("RGB", (40, 40), (255, 0, 0))
    blue = Image.new("RGB", (40, 40), (0, 0, 255))
    buf = io.BytesIO()
    red.save(buf, "GIF", save_all=True, append_images=[blue], duration=50, loop=0)
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 2
    out = decode_image(buf.getvalue())
    assert tuple(out[0, 0]) == (255, 0, 0)


def test_read_image_file_checks_size_on_disk(tmp_path, rgb_image):
    path = tmp_path / "a.png"
    Image.fromarray(rgb_image).save(path)
    np.testing.assert_array_equal(read_image_file(path), rgb_image)
    size = path.stat().st_size
    with pytest.raises(FileTooLarge, match=str(size)):
        read_image_file(path, DecodeLimits(max_bytes=size - 1))
    with pytest.raises(FileNotFoundError):
        read_image_file(tmp_path / "missing.png")


@pytest.mark.parametrize("fmt", ["WEBP", "TIFF", "BMP"])
def test_other_photo_formats_accepted(rgb_image, fmt):
    kw = {"lossless": True} if fmt == "WEBP" else {}
    np.testing.assert_array_equal(decode_image(encode(Image.fromarray(rgb_image), fmt, **kw)), rgb_image)


@pytest.mark.parametrize("fmt", ["EPS", "PCX", "SGI"])
def test_non_photo_formats_refused(rgb_image, fmt):
    """Pillow opens these (EPS through Ghostscript!), but they are not accepted from untrusted input."""
    blob = encode(Image.fromarray(rgb_image), fmt)
    with pytest.raises(NotAnImage, match="accepted formats: JPEG"):
        decode_image(blob)
    if fmt != "EPS":  # opting in via DecodeLimits.formats works (EPS would need Ghostscript)
        assert decode_image(blob, DecodeLimits(formats=(fmt,))).shape == rgb_image.shape
