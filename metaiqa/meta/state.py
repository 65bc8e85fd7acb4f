"""Trainer state for bit-for-bit resume: optimizer tensors (safetensors) + a JSON file.

For `run/last`:
    run/last.safetensors, run/last.json              the model checkpoint (save_checkpoint)
    run/last.state.safetensors                       optimizer tensors + torch RNG states
    run/last.state.json                              iteration, sampler state, numpy/python RNG
                                                     states, best score, elapsed time, hashes
The state JSON is written last and records the sha256 of both tensor files, so a save cut
short (power loss, SIGKILL) is detected on resume instead of silently mixing iterations.
"""

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaiqa.errors import MetaIQAError
from metaiqa.io import atomic_write_json, read_json_file
from metaiqa.models.checkpoint import (
    CorruptCheckpoint,
    checkpoint_paths,
    load_tensors,
    read_sidecar,
    save_tensors,
)

STATE_FORMAT = "metaiqa-trainer-state/1"


class ResumeError(MetaIQAError):
    """The run cannot be resumed: state missing, corrupt, or from another config."""


def state_paths(prefix: Path) -> tuple[Path, Path]:
    prefix = Path(prefix)
    return prefix.with_name(prefix.name + ".state.safetensors"), prefix.with_name(prefix.name + ".state.json")


def _np_state_to_json(st: tuple) -> list:
    name, keys, pos, has_gauss, cached = st
    return [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]


def _np_state_from_json(obj: list) -> tuple:
    name, keys, pos, has_gauss, cached = obj
    return (name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached))


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, json) holding torch CPU/CUDA, numpy-global and python RNG states."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    py = random.getstate()
    js = {"numpy": _np_state_to_json(np.random.get_state()), "python": [py[0], list(py[1]), py[2]]}
    return tensors, js


def restore_rng(tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    np.random.set_state(_np_state_from_json(js["numpy"]))
    v, st, gauss = js["python"]
    random.setstate((v, tuple(st), gauss))


def save_state(
    prefix: Path, optimizer: torch.optim.Optimizer, model_sha256: str, info: dict[str, Any]
) -> None:
    """Write optimizer + RNG state beside the model checkpoint `prefix` (JSON last = commit)."""
    tensor_path, json_path = state_paths(prefix)
    opt = optimizer.state_dict()
    tensors, rng_js = capture_rng()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in opt["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{idx}.{key}"] = val
            else:
                scalars.setdefault(str(idx), {})[key] = val
    digest = save_tensors(tensor_path, tensors)
    atomic_write_json(
        json_path,
        {
            "format": STATE_FORMAT,
            "state_sha256": digest,
            "model_sha256": model_sha256,
            "param_groups": opt["param_groups"],
            "optimizer_scalars": scalars,
            "rng": rng_js,
            **info,
        },
    )


def load_state(prefix: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore optimizer + RNG states; returns the JSON info (iteration, sampler, best, ...)."""
    tensor_path, json_path = state_paths(prefix)
    if not json_path.is_file():
        raise ResumeError(f"nothing to resume: trainer state {json_path} not found")
    info = read_json_file(json_path, STATE_FORMAT, error=ResumeError, what="metaiqa trainer state")
    if not isinstance(info.get("state_sha256"), str):
        raise ResumeError(f"{json_path}: trainer state records no sha256 of {tensor_path.name} "
                          f"(state_sha256 = {info.get('state_sha256')!r:.80}); cannot verify it")
    model_path, _ = checkpoint_paths(prefix)
    try:
        if read_sidecar(model_path)["sha256"] != info.get("model_sha256"):
            raise ResumeError(
                f"{json_path} belongs to another model file than {model_path} (a save was interrupted); "
                "resume from an earlier copy or start afresh"
            )
        tensors = load_tensors(tensor_path, info["state_sha256"])
    except CorruptCheckpoint as exc:
        raise ResumeError(f"cannot resume: {exc}") from exc
    try:
        state: dict[int, dict[str, Any]] = {}
        for key, val in tensors.items():
            if key.startswith("opt."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = val
        for idx, scal in info["optimizer_scalars"].items():
            state.setdefault(int(idx), {}).update(scal)
        optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
        restore_rng(tensors, info["rng"])
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise ResumeError(f"{json_path}: trainer state does not fit this run ({type(exc).__name__}: {exc})") from exc
    return info
