"""A timm-style registry: architectures by name, nothing built or downloaded at import."""

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from metaiqa.errors import MetaIQAError

if TYPE_CHECKING:
    from torch import nn

_MODELS: dict[str, Callable[..., "nn.Module"]] = {}


class UnknownModel(MetaIQAError, KeyError):
    def __init__(self, name: str):
        self.name = name
        super().__init__(f"unknown model {name!r}; registered: {', '.join(sorted(_MODELS)) or 'none'}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


def register_model(fn: Callable[..., "nn.Module"]) -> Callable[..., "nn.Module"]:
    """Decorator: register a model factory under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is already registered")
    _MODELS[fn.__name__] = fn
    return fn


def _register_builtin() -> None:
    """Import the bundled architectures (they register themselves); torch loads here, not before."""
    import metaiqa.models.efficientnet_lite  # noqa: F401
    import metaiqa.models.resnet_iqa  # noqa: F401


def create_model(name: str, **kwargs: Any) -> "nn.Module":
    _register_builtin()
    try:
        factory = _MODELS[name]
    except KeyError:
        raise UnknownModel(name) from None
    return factory(**kwargs)


def list_models() -> list[str]:
    _register_builtin()
    return sorted(_MODELS)
