"""Distortion registry: name -> function(image, level, rng) -> image.

Every distortion takes a uint8 HxWx3 RGB image, a level 1..5 (5 = worst) and a
`np.random.Generator`, and returns a new uint8 image of the same shape. All randomness
comes from `rng`, so a distortion is deterministic under the generator's seed.

Users add their own with the decorator::

    @register_distortion("vignette")
    def vignette(image, level, rng): ...

Built-in functions receive the image as float32 in [0, 1] via `as_float` and return it
through `to_uint8`; `apply` validates inputs and outputs so a buggy user distortion fails
loudly instead of writing a broken data set.
"""

from collections.abc import Callable

import numpy as np

from metaiqa.distortions.names import KADID_TYPES
from metaiqa.errors import MetaIQAError

LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)

DistortionFn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

_DISTORTIONS: dict[str, DistortionFn] = {}
_BUILTIN_MODULES = ("blur", "color", "compression", "noise", "spatial")
_builtins_loaded = False


def _load_builtins() -> None:
    """Register the built-in types on first use, so importing `names` stays light (no scipy)."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        import importlib

        for mod in _BUILTIN_MODULES:
            importlib.import_module(f"metaiqa.distortions.{mod}")


class UnknownDistortion(MetaIQAError, KeyError):
    """A distortion name that is not registered."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"unknown distortion {name!r}; registered: {', '.join(list_distortions()) or 'none'}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class InvalidLevel(MetaIQAError, ValueError):
    """A distortion level outside 1..5."""


class InvalidImage(MetaIQAError, ValueError):
    """An image that is not uint8 HxWx3."""


class BadDistortionOutput(MetaIQAError, RuntimeError):
    """A (user-registered) distortion returned something that is not an image of the input's shape."""


def register_distortion(name: str) -> Callable[[DistortionFn], DistortionFn]:
    """Decorator: register `fn(image, level, rng) -> image` under `name`."""

    if not isinstance(name, str) or not name or any(c in name for c in ",/\\ "):
        raise ValueError(f"distortion name must be a non-empty string without ',', '/' or spaces: {name!r}")

    def deco(fn: DistortionFn) -> DistortionFn:
        _load_builtins()  # a user type must not silently shadow a built-in loaded later
        if name in _DISTORTIONS:
            raise ValueError(f"distortion {name!r} is already registered")
        _DISTORTIONS[name] = fn
        return fn

    return deco


def unregister_distortion(name: str) -> None:
    """Remove a distortion (for tests and plug-ins that replace a built-in)."""
    _load_builtins()
    if name not in _DISTORTIONS:
        raise UnknownDistortion(name)
    del _DISTORTIONS[name]


def list_distortions() -> list[str]:
    """Registered names: KADID types in KADID order first, then user types in registration order."""
    _load_builtins()
    kadid = [n for n in KADID_TYPES if n in _DISTORTIONS]
    return kadid + [n for n in _DISTORTIONS if n not in KADID_TYPES]


def get_distortion(name: str) -> DistortionFn:
    _load_builtins()
    try:
        return _DISTORTIONS[name]
    except KeyError:
        raise UnknownDistortion(name) from None


def check_level(level: int) -> int:
    if isinstance(level, bool) or not isinstance(level, int | np.integer) or int(level) not in LEVELS:
        raise InvalidLevel(f"distortion level must be an integer 1..5 (5 = worst), got {level!r}")
    return int(level)


def check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InvalidImage(f"expected a uint8 HxWx3 RGB image, got {desc}")
    if min(image.shape[:2]) < 8:
        raise InvalidImage(f"image too small to distort: {image.shape[1]}x{image.shape[0]} (need at least 8x8)")
    return image


def apply(name: str, image: np.ndarray, level: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Distort `image` with distortion `name` at `level` (1 mildest .. 5 worst).

    `rng` is a `np.random.Generator` (or an int seed; None = seed 0, so calls stay
    reproducible). The input is never modified.
    """
    fn = get_distortion(name)
    level = check_level(level)
    check_image(image)
    if not isinstance(rng, np.random.Generator):
        if rng is not None and (isinstance(rng, bool) or not isinstance(rng, int | np.integer)):
            raise TypeError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")
        rng = np.random.default_rng(0 if rng is None else int(rng))
    out = fn(np.ascontiguousarray(image), level, rng)
    if not isinstance(out, np.ndarray) or out.shape != image.shape:
        shape = getattr(out, "shape", type(out).__name__)
        raise BadDistortionOutput(f"distortion {name!r} returned {shape}, expected an array of shape {image.shape}")
    if out.dtype != np.uint8:
        out = to_uint8(out.astype(np.float32) / (255.0 if out.dtype.kind in "iu" else 1.0))
    return out


def as_float(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1]."""
    return image.astype(np.float32) * (1.0 / 255.0)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """float in [0, 1] (clipped) -> uint8, rounding to nearest."""
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
