"""Inference backends: (N, 3, H, W) float views in [0, 1] -> (N,) scores, nothing else.

`Scorer` prepares views and averages scores; a backend only runs the forward pass, so the
same views give (nearly) the same scores whatever runs them:

- `TorchBackend` (default): the checkpoint's torch model, eager, float32.
- `OnnxBackend`: ONNX Runtime (CPU) on a verified export of the same checkpoint (`metaiqa
  export --onnx`, see metaiqa.inference.onnx_export). An optional extra: `pip install
  'metaiqa[onnx]'`; without onnxruntime, asking for it raises `BackendUnavailable` with that
  command. Parity with torch is tested (scores within 0.01, in practice ~1e-6).

Not kept as backends (see benchmarks/README.md, "Issue 11: speed"): `torch.compile` and int8
quantisation; they are only worth a backend if measured faster here with every score within
0.01 of float32.
"""

import logging
from typing import Protocol

import numpy as np
import torch
from torch import nn

from metaiqa.errors import InvalidInput, MetaIQAError

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")
ONNX_INPUT, ONNX_OUTPUT = "views", "score"


class BackendUnavailable(MetaIQAError):
    """The chosen backend cannot run here (e.g. onnxruntime is not installed)."""


class Backend(Protocol):
    name: str

    def __call__(self, views: torch.Tensor) -> torch.Tensor: ...


def check_backend_name(name: str) -> str:
    if name not in BACKENDS:
        raise InvalidInput(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


class TorchBackend:
    """The torch model itself (eager, inference mode)."""

    name = "torch"

    def __init__(self, model: nn.Module, device: torch.device | str = "cpu"):
        self.model, self.device = model, torch.device(device)

    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(views.to(self.device)).reshape(-1).float().cpu()


def import_onnxruntime():
    """onnxruntime, or BackendUnavailable saying how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(
            f"backend 'onnx' needs onnxruntime, which is not installed ({exc}); install it with "
            "pip install 'metaiqa[onnx]' or use --backend torch"
        ) from None
    return onnxruntime


class OnnxBackend:
    """ONNX Runtime on the CPU, from model bytes already verified by the caller.

    `threads`: intra-op threads of this session (None: ONNX Runtime's default, one per core).
    One session may be run from one thread at a time here (the service's score lane).
    """

    name = "onnx"

    def __init__(self, model_bytes: bytes, *, threads: int | None = None, source: str = "<bytes>"):
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise BackendUnavailable(f"{source}: ONNX Runtime cannot load this model ({type(exc).__name__}: "
                                     f"{str(exc)[:300]})") from exc
        self.source, self.threads = source, threads

    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(views.detach().cpu().numpy(), dtype=np.float32)
        (out,) = self.session.run([ONNX_OUTPUT], {ONNX_INPUT: x})
        return torch.from_numpy(np.asarray(out, dtype=np.float32).reshape(-1))
