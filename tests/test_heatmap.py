"""Heatmaps: shapes/range, that maps land where the model looks, MSCN masking, overlays."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from metaiqa.errors import InvalidInput
from metaiqa.inference.heatmap import (
    UnknownHeatmapMethod,
    coarse_grid,
    colorize,
    compute_heatmap,
    find_cam_layer,
    gradcam_heatmap,
    gradient_heatmap,
    overlay_png,
)
from metaiqa.models import create_model
from tests.conftest import natural_image

POLICIES = [{"policy": "center_crop", "size": 48}, {"policy": "resize", "size": 40}, {"policy": "native"}]


def quadrant_mass(heat: np.ndarray) -> np.ndarray:
    """Share of the map in [top-left, top-right, bottom-left, bottom-right]."""
    h, w = heat.shape
    parts = [heat[: h // 2, : w // 2], heat[: h // 2, w // 2 :], heat[h // 2 :, : w // 2], heat[h // 2 :, w // 2 :]]
    m = np.array([p.sum() for p in parts])
    return m / m.sum()


class TopRightModel(nn.Module):
    """Its logit depends only on the pixels of the top-right quadrant of its input."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(3.0))

    def logits(self, x):
        h, w = x.shape[-2:]
        return self.w * (x[..., : h // 2, w // 2 :] ** 2).mean(dim=(1, 2, 3))

    def forward(self, x):
        return torch.sigmoid(self.logits(x))


class RedChannelModel(nn.Module):
    """A 1x1 conv reading the red channel, then a global mean: Grad-CAM must follow the red."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
            self.conv.bias.zero_()

    def forward(self, x):
        return self.conv(x).mean(dim=(1, 2, 3))


def smooth_with_noisy_quadrant(quadrant: int, seed: int, size: int = 96) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([0.5 + 0.2 * np.sin(3 * x + y), 0.5 + 0.2 * np.cos(2 * y - x), 0.4 + 0.1 * x], -1)
    r, c = divmod(quadrant, 2)
    half = size // 2
    img[r * half : (r + 1) * half, c * half : (c + 1) * half] += np.random.default_rng(seed).normal(0, 0.08, (half, half, 3))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return create_model("metaiqa_tiny").eval()


@pytest.mark.parametrize("preprocess", POLICIES, ids=lambda p: p["policy"])
@pytest.mark.parametrize("method", ["gradient", "gradcam"])
def test_shape_range_finite(tiny, preprocess, method):
    img = natural_image(96, seed=3)[:, :80]  # non-square: catches transposed maps
    heat = compute_heatmap(tiny, img, preprocess, method)
    assert heat.shape == (96, 80) and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0
    assert heat.max() == pytest.approx(1.0) and heat.std() > 0.01


@pytest.mark.parametrize("preprocess", POLICIES, ids=lambda p: p["policy"])
def test_gradient_map_lands_where_the_model_looks(preprocess):
    img = natural_image(96, seed=5)[:64]  # 64 x 96
    mass = quadrant_mass(gradient_heatmap(TopRightModel(), img, preprocess))
    assert mass[1] > 0.9, mass


def test_gradcam_follows_the_activation():
    img = np.full((64, 96, 3), 20, np.uint8)
    img[40:60, 10:40] = (250, 20, 20)  # red patch, bottom-left
    model = RedChannelModel()
    assert find_cam_layer(model) is model.conv
    heat = gradcam_heatmap(model, img, {"policy": "native"})
    assert quadrant_mass(heat)[2] > 0.6
    assert heat[50, 25] == pytest.approx(1.0, abs=0.05) and heat[10, 80] < 0.2
    neg = gradcam_heatmap(model, img, {"policy": "native"}, sign="negative")
    assert neg.max() == 0.0  # every activation pushes the score up: nothing pulls it down


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mscn_front_end_masks_noise_in_gradient_map(seed):
    """The MSCN front end divides by local contrast, so the score is least sensitive where the
    image is already noisy (contrast masking): that quadrant must get the least gradient mass,
    for any weights behind it. A misplaced, flipped or constant map fails this."""
    torch.manual_seed(seed)
    model = create_model("metaiqa_tiny").eval()
    quadrant = seed % 4
    mass = quadrant_mass(gradient_heatmap(model, smooth_with_noisy_quadrant(quadrant, seed), {"policy": "native"}))
    others = np.delete(mass, quadrant)
    assert mass[quadrant] < 0.5 * others.min(), mass


def test_find_cam_layer_prefers_resnet_layer4(tiny):
    resnet = create_model("metaiqa_resnet18")
    assert find_cam_layer(resnet) is resnet.backbone.layer4
    assert find_cam_layer(tiny) is [m for m in tiny.modules() if isinstance(m, nn.Conv2d)][-1]
    with pytest.raises(InvalidInput, match="convolutional"):
        find_cam_layer(TopRightModel())


def test_model_left_untouched_and_works_under_inference_mode(tiny):
    tiny.train()
    img = natural_image(64, seed=1)
    with torch.inference_mode():
        g = gradient_heatmap(tiny, img, POLICIES[0])
        c = gradcam_heatmap(tiny, img, POLICIES[0])
    assert tiny.training  # mode restored
    assert all(p.grad is None for p in tiny.parameters())
    layer = find_cam_layer(tiny)
    assert not layer._forward_hooks
    tiny.eval()
    np.testing.assert_allclose(g, gradient_heatmap(tiny, img, POLICIES[0]), atol=1e-6)  # eval was used
    assert np.isfinite(c).all()


def test_large_image_downscaled_but_map_has_original_size():
    img = natural_image(128, seed=2)
    heat = gradient_heatmap(TopRightModel(), img, {"policy": "native"}, max_side=64)
    assert heat.shape == (128, 128) and quadrant_mass(heat)[1] > 0.9


def test_constant_model_gives_zero_map():
    class Constant(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0])

    heat = gradient_heatmap(Constant(), natural_image(64), {"policy": "native"})
    assert heat.shape == (64, 64) and not heat.any()


def test_bad_inputs(tiny):
    with pytest.raises(UnknownHeatmapMethod, match="nope"):
        compute_heatmap(tiny, natural_image(64), POLICIES[0], "nope")
    with pytest.raises(InvalidInput, match="float"):
        gradient_heatmap(tiny, natural_image(64).astype(float), POLICIES[0])
    with pytest.raises(InvalidInput, match="policy"):
        gradient_heatmap(tiny, natural_image(64), {"policy": "zoom"})
    with pytest.raises(InvalidInput, match="sign"):
        gradcam_heatmap(tiny, natural_image(64), POLICIES[0], sign="both")


def test_overlay_png():
    img = natural_image(64, seed=4)
    heat = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    decoded = np.asarray(Image.open(io.BytesIO(overlay_png(img, heat))))
    assert decoded.shape == (64, 64, 3) and decoded.dtype == np.uint8
    expected = np.round(0.55 * img + 0.45 * colorize(heat).astype(np.float32))
    assert np.abs(decoded.astype(int) - expected).max() <= 1
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(overlay_png(img, heat, alpha=0.0)))), img)
    full = np.asarray(Image.open(io.BytesIO(overlay_png(img, heat, alpha=1.0))))
    np.testing.assert_array_equal(full, colorize(heat))
    small = np.asarray(Image.open(io.BytesIO(overlay_png(img, heat[::4, ::4]))))  # heat resized to fit
    assert small.shape == (64, 64, 3)
    with pytest.raises(InvalidInput, match="alpha"):
        overlay_png(img, heat, alpha=1.5)
    with pytest.raises(InvalidInput, match="2-D"):
        overlay_png(img, heat[None])


def test_colormap_and_grid():
    lut = colorize(np.linspace(0, 1, 256))
    assert lut.shape == (256, 3) and len({tuple(c) for c in lut}) > 200
    assert lut[0].sum() < lut[128].sum()  # dark at 0, bright in the middle
    np.testing.assert_array_equal(colorize(np.array([-1.0, np.nan, 2.0])), lut[[0, 0, 255]])
    grid = coarse_grid(np.ones((100, 50), np.float32), 32)
    assert grid.shape == (32, 32) and np.allclose(grid, 1.0)
    assert coarse_grid(np.ones((10, 50)), 32).shape == (10, 32)
