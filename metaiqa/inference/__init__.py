"""Inference: decode untrusted images, score them in batches, explain scores with heatmaps.

Names load lazily (PEP 562): `metaiqa.inference.decode`, `.lite` and `.onnx_load` work without
torch (the light ONNX scoring path of `metaiqa score`); `Scorer` imports it on first use.
"""

from typing import TYPE_CHECKING

from metaiqa._lazy import lazy_exports

_DECODE = ("DecodedImage", "DecodeError", "DecodeLimits", "FileTooLarge", "ImageTooSmall", "NotAnImage",
           "TooManyPixels", "TruncatedImage", "decode", "decode_image", "read_file", "read_image_file")
_LAZY = {
    **{name: "metaiqa.inference.decode" for name in _DECODE},
    "ExtremeAspectRatio": "metaiqa.data.viewing",
    "Scorer": "metaiqa.inference.scorer",
    "ScoreResult": "metaiqa.inference.scorer",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:
    from metaiqa.data.viewing import ExtremeAspectRatio  # noqa: F401
    from metaiqa.inference.decode import (  # noqa: F401
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
    from metaiqa.inference.scorer import Scorer, ScoreResult  # noqa: F401


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
