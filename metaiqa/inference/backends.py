"""Inference backends: (N, 3, H, W) float views in [0, 1] -> (N,) scores, nothing else.

`Scorer` prepares views and averages scores; a backend only runs the forward pass, so the
same views give (nearly) the same scores whatever runs them:

- "auto" (the CLI's and the service's default): ONNX Runtime when it is installed, else torch.
- `TorchBackend`: the checkpoint's torch model, eager, float32 (the library's default).
- `OnnxBackend`: ONNX Runtime (CPU) on a verified export of the same checkpoint (`metaiqa
  export --onnx`, see metaiqa.inference.onnx_export), float32, or static int8 ("int8"; "auto"
  uses NAME.int8.onnx beside the checkpoint when present: metaiqa.inference.onnx_int8); onnxruntime is a dependency, and without
  it asking for "onnx" raises `BackendUnavailable` with the install command. Parity with torch
  is tested (scores within 0.01, in practice ~1e-4).

Not kept as backends (see benchmarks/README.md, "Issue 11: speed"): `torch.compile` and int8
quantisation; they are only worth a backend if measured faster here with every score within
0.01 of float32.

The module itself imports no torch (the CLI's light ONNX path resolves backend names here).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # torch loads with the first torch-based backend, not with this module
    import torch
    from torch import nn

from metaiqa.errors import InvalidInput
from metaiqa.inference.onnx_load import (  # noqa: F401  (re-exported)
    ONNX_INPUT,
    ONNX_OUTPUT,
    BackendUnavailable,
    OnnxSession,
    import_onnxruntime,
    onnxruntime_available,
)

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx", "int8")


class Backend(Protocol):
    name: str

    def __call__(self, views: torch.Tensor) -> torch.Tensor: ...


def check_backend_name(name: str) -> str:
    if name not in BACKENDS:
        raise InvalidInput(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def resolve_backend_name(name: str) -> str:
    """"auto" -> "onnx" when onnxruntime is installed (faster here: benchmarks/README.md), else "torch".

    ("onnx" then prefers an int8 export beside the checkpoint: see `INT8_USE`.)"""
    if check_backend_name(name) != "auto":
        return name
    return "onnx" if onnxruntime_available() else "torch"


class TorchBackend:
    """The torch model itself (eager, inference mode)."""

    name = "torch"

    def __init__(self, model: nn.Module, device: torch.device | str = "cpu"):
        import torch

        self.model, self.device = model, torch.device(device)

    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            return self.model(views.to(self.device)).reshape(-1).float().cpu()


class OnnxBackend:
    """An `OnnxSession` (verified export, ONNX Runtime on the CPU) behind the torch-tensor interface."""

    name = "onnx"

    def __init__(self, session: OnnxSession):
        self.session = session
        self.name, self.source, self.threads = session.name, session.source, session.threads

    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.from_numpy(self.session.run(views.detach().cpu().numpy()))
