"""Inference: decode untrusted images, score them in batches, explain scores with heatmaps."""

from metaiqa.data.transforms import ExtremeAspectRatio
from metaiqa.inference.decode import (
    DecodedImage,
    DecodeError,
    DecodeLimits,
    FileTooLarge,
    ImageTooSmall,
    NotAnImage,
    TooManyPixels,
    TruncatedImage,
    decode,
    decode_image,
    read_file,
    read_image_file,
)
from metaiqa.inference.scorer import Scorer, ScoreResult

__all__ = [
    "DecodeError",
    "DecodeLimits",
    "DecodedImage",
    "ExtremeAspectRatio",
    "FileTooLarge",
    "ImageTooSmall",
    "NotAnImage",
    "ScoreResult",
    "Scorer",
    "TooManyPixels",
    "TruncatedImage",
    "decode",
    "decode_image",
    "read_file",
    "read_image_file",
]
