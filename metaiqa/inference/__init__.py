"""Inference: decode untrusted images, score them in batches, explain scores with heatmaps."""

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
from metaiqa.inference.scorer import Scorer, ScoreResult

__all__ = [
    "DecodeError",
    "DecodeLimits",
    "FileTooLarge",
    "ImageTooSmall",
    "NotAnImage",
    "ScoreResult",
    "Scorer",
    "TooManyPixels",
    "TruncatedImage",
    "decode_image",
    "read_image_file",
]
