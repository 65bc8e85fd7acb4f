"""Fixed input front-ends and the MetaIQA regression head."""

import math

import torch
from torch import nn
from torch.nn import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MSCN(nn.Module):
    """BRISQUE's mean-subtracted contrast-normalised coefficients, per channel.

    (I - mu) / (sigma + c) with a 7x7 Gaussian window (sigma 7/6). It hides content and
    shows distortion statistics; training from scratch learns far better with it
    (see TRAINING-NOTES: JPEG was ranked backwards on raw RGB). Not learned.
    """

    def __init__(self, window: int = 7, sigma: float = 7 / 6, c: float = 1 / 255):
        super().__init__()
        x = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
        g = torch.exp(-(x**2) / (2 * sigma**2))
        g = g / g.sum()
        kernel = (g[:, None] * g[None, :]).expand(3, 1, window, window).contiguous()
        self.register_buffer("kernel", kernel, persistent=False)
        self.pad = window // 2
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel.to(dtype=x.dtype)
        xp = F.pad(x, [self.pad] * 4, mode="reflect")
        mu = F.conv2d(xp, k, groups=3)
        var = F.conv2d(xp * xp, k, groups=3) - mu * mu
        return (x - mu) / (var.clamp_min(0).sqrt() + self.c)


class ImageNetNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class MSCNWithRGB(nn.Module):
    """MSCN (distortion statistics) and ImageNet-normalised RGB (exposure, colour) side by side: 6 channels.

    MSCN alone divides out local brightness and contrast, so an under-exposed or washed-out
    photo looks like a well-exposed one; authentic photos need both views.
    """

    out_channels = 6

    def __init__(self):
        super().__init__()
        self.mscn = MSCN()
        self.rgb = ImageNetNorm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mscn(x), self.rgb(x)], dim=1)


INPUT_NORMS = ("mscn", "mscn_rgb", "imagenet", "none")


def make_input_norm(kind: str) -> nn.Module:
    if kind == "mscn":
        return MSCN()
    if kind == "mscn_rgb":
        return MSCNWithRGB()
    if kind == "imagenet":
        return ImageNetNorm()
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"input_norm must be one of {', '.join(INPUT_NORMS)}; got {kind!r}")


def input_channels(norm: nn.Module) -> int:
    """Channels the backbone receives from a front end (3 unless it says otherwise)."""
    return int(getattr(norm, "out_channels", 3))


class QualityHead(nn.Module):
    """MetaIQA's regressor: Linear-BN-PReLU-Dropout blocks, then one logit."""

    def __init__(self, in_features: int, hidden: tuple[int, ...] = (1024, 512), dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.PReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)
        # Start the sigmoid near 0.5 with a small spread, whatever the width.
        nn.init.normal_(self.layers[-1].weight, std=1 / math.sqrt(width) * 0.1)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).squeeze(-1)
