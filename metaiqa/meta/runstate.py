"""The files of one training run: resolved config, log (JSON lines), checkpoints, resumable state.

Everything is written atomically (temp file + rename), so a run killed at any moment leaves
either the previous or the new version of each file.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import torch
import yaml

from metaiqa.errors import MetaIQAError
from metaiqa.io import atomic_write_bytes
from metaiqa.models.checkpoint import save_checkpoint

log = logging.getLogger(__name__)


class RunDirError(MetaIQAError):
    """The output folder holds another run, or its state cannot be read."""


class RunFiles:
    """`root/config.yaml`, `root/log.jsonl`, `root/{best,last}.safetensors(+json)`, `root/state.pt`."""

    def __init__(self, root: Path, config: dict[str, Any], *, resume: bool):
        self.root, self.config = Path(root), config
        self.root.mkdir(parents=True, exist_ok=True)
        cfg_path = self.root / "config.yaml"
        if cfg_path.exists():
            saved = yaml.safe_load(cfg_path.read_text())
            if not resume:
                raise RunDirError(f"{self.root} already holds a run; pass --resume to continue it or pick another --out")
            if saved != config:
                diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
                raise RunDirError(f"cannot resume {self.root}: config differs in {diff}")
        atomic_write_bytes(cfg_path, yaml.safe_dump(config, sort_keys=True).encode())

    def append_log(self, row: dict[str, Any]) -> None:
        with (self.root / "log.jsonl").open("a") as f:
            f.write(json.dumps(row, default=float) + "\n")

    def log_rows(self) -> list[dict[str, Any]]:
        path = self.root / "log.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def save_model(self, name: str, model: torch.nn.Module, **kw: Any) -> Path:
        return save_checkpoint(self.root / name, model, config=self.config, **kw)

    def save_state(self, state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.root / "state.pt", buf.getvalue())

    def load_state(self) -> dict[str, Any] | None:
        path = self.root / "state.pt"
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or foreign file
            raise RunDirError(f"cannot resume: {path} is unreadable ({type(exc).__name__}: {exc})") from exc
