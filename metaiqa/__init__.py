"""metaiqa: no-reference image quality assessment with a meta-learned quality prior.

    import metaiqa
    model = metaiqa.load()            # bundled default; or a name / checkpoint path
    model.score("photo.jpg")          # quality in [0, 1], higher is better

The Python API (`load`, `list_models`, `Model`, ...) lives in `metaiqa.api` and is imported on
first use, so `import metaiqa` stays cheap (no torch) for the CLI and for tools that only
read `__version__`.
"""

from typing import TYPE_CHECKING

from metaiqa._lazy import lazy_exports

__version__ = "0.1.0"

# name -> module that defines it; resolved lazily by __getattr__ (PEP 562)
_LAZY = {
    "load": "metaiqa.api",
    "list_models": "metaiqa.api",
    "Model": "metaiqa.api",
    "Heatmap": "metaiqa.api",
    "UnsupportedInput": "metaiqa.api",
    "UnreadableFile": "metaiqa.api",
    "ImageFileNotFound": "metaiqa.api",
    "MetaIQAError": "metaiqa.errors",
    "InvalidInput": "metaiqa.errors",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # for type checkers and IDEs only
    from metaiqa.api import (  # noqa: F401
        Heatmap,
        ImageFileNotFound,
        Model,
        UnreadableFile,
        UnsupportedInput,
        list_models,
        load,
    )
    from metaiqa.errors import InvalidInput, MetaIQAError  # noqa: F401


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
