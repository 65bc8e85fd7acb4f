"""PEP 562 lazy exports shared by the package `__init__` modules (so importing one stays cheap).

    __getattr__, __dir__ = lazy_exports(__name__, globals(), {"Name": "package.module", ...})
"""

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, namespace: dict[str, Any], names: dict[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(`__getattr__`, `__dir__`) for `package`: each name imports its module on first access and
    is then stored in `namespace`, so later look-ups skip `__getattr__`."""

    def getattr_(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(names))

    return getattr_, dir_
