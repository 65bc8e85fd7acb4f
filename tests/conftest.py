"""Shared fixtures: tiny generated images and tiny models; never real data, never network."""

import numpy as np
import pytest
import torch
from PIL import Image


def natural_image(size: int = 96, seed: int = 0) -> np.ndarray:
    """A smooth-plus-texture RGB image (uint8 HxWx3) that behaves like a photo crop for metrics."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack(
        [0.5 + 0.3 * np.sin(6 * x + 2 * y), 0.5 + 0.3 * np.cos(5 * y - 3 * x), 0.4 + 0.3 * np.sin(9 * x * y)],
        axis=-1,
    )
    edges = ((np.floor(x * 6) + np.floor(y * 5)) % 2)[..., None] * 0.25
    texture = rng.normal(0, 1, (size // 4, size // 4, 3))
    texture = np.kron(texture, np.ones((4, 4, 1)))[:size, :size] * 0.04
    img = np.clip(base * 0.75 + edges + texture, 0, 1)
    return (img * 255).round().astype(np.uint8)


@pytest.fixture
def rgb_image() -> np.ndarray:
    return natural_image(96, seed=1)


@pytest.fixture
def png_file(tmp_path, rgb_image):
    path = tmp_path / "photo.png"
    Image.fromarray(rgb_image).save(path)
    return path


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """ONNX exports made on demand (the CLI's default backend) go to a throw-away cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("METAIQA_CACHE_DIR", str(tmp_path_factory.mktemp("metaiqa-cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
