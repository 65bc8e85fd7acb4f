"""Shared pieces of the service tests: a tiny checkpoint, PNG bytes, an app factory."""

import io
from pathlib import Path

import numpy as np
import torch
from conftest import natural_image
from metaiqa.service.settings import Settings
from PIL import Image

from metaiqa.models import create_model, save_checkpoint

TINY_PREPROCESS = {"policy": "center_crop", "size": 64}


def make_checkpoint(path: Path, seed: int = 0, **extra) -> Path:
    torch.manual_seed(seed)
    model = create_model("metaiqa_tiny")
    return save_checkpoint(path, model, model_name="metaiqa_tiny", preprocess=TINY_PREPROCESS, **extra)


def png_bytes(size: int = 96, seed: int = 1, image: np.ndarray | None = None, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(natural_image(size, seed) if image is None else image).save(buf, fmt)
    return buf.getvalue()


def settings_for(ckpt: Path | None, **kw) -> Settings:
    """Settings serving `ckpt` as the default (None: metaiqa-default); the bundled models stay out
    unless asked for (speed)."""
    kw.setdefault("torch_threads", 1)
    kw.setdefault("bundled_models", False)
    kw.setdefault("max_wait_ms", 1.0)
    return Settings(model=None if ckpt is None else str(ckpt), **kw)
