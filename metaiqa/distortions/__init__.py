"""Synthetic distortions: the 25 KADID-10k types at 5 levels, and a registry for your own.

    from metaiqa.distortions import apply, list_distortions, register_distortion
    out = apply("jpeg", image_uint8_hwc, level=3, rng=np.random.default_rng(0))

The built-in types register themselves on first use of the registry (jpeg2000 only when
Pillow has OpenJPEG), so `from metaiqa.distortions.names import KADID_TYPES` stays cheap.
"""

from metaiqa.distortions.names import KADID_TYPES, kadid_type_id
from metaiqa.distortions.registry import (
    LEVELS,
    BadDistortionOutput,
    InvalidImage,
    InvalidLevel,
    UnknownDistortion,
    apply,
    get_distortion,
    list_distortions,
    register_distortion,
    unregister_distortion,
)

__all__ = [
    "KADID_TYPES",
    "LEVELS",
    "BadDistortionOutput",
    "InvalidImage",
    "InvalidLevel",
    "UnknownDistortion",
    "apply",
    "get_distortion",
    "kadid_type_id",
    "list_distortions",
    "register_distortion",
    "unregister_distortion",
]
