"""Global photometric statistics of a view and a small head on them (the `global_stats` branch).

The convolutional path sees MSCN (which divides out local brightness and contrast) and RGB,
then averages its features over the view: extreme percentiles (a lifted black point, clipped
highlights) and the ratio of colour detail to luminance detail (chroma bleeding, channel
misregistration) are hard for it to read. These statistics say them directly. They are plain
tensor arithmetic (comparisons, means, finite differences), so they run the same in eager
torch and in ONNX, and cost well under a millisecond per view.

The head's last layer starts at zero, so adding the branch to a trained model changes no
score until the branch is trained.
"""

import torch
from torch import nn

# Cumulative luminance fractions below these levels: black point, shadows ... highlights, white point.
LUMA_LEVELS = (0.5 / 255, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.95, 0.98, 254.5 / 255)
FEATURE_NAMES = (
    *(f"luma_below_{t:.3f}" for t in LUMA_LEVELS),
    "luma_mean", "luma_std",
    "chroma_mean", "chroma_std", "chroma_above_0.6", "chroma_below_0.02",
    "any_channel_clipped_high", "any_channel_clipped_low",
    "cast_red_green", "cast_blue_green",
    "chroma_detail_ratio",
)
N_FEATURES = len(FEATURE_NAMES)
# Centre and spread of each feature over 224-px views of 400 BIQ2021 *train* photos and the 38
# reference scenes at the 384-px viewing scale (measured once, session 11), so the head starts
# on inputs of unit scale. Constants, not learned, not in the state dict.
FEATURE_CENTRE = (0.006, 0.019, 0.049, 0.109, 0.243, 0.423, 0.577, 0.727, 0.862, 0.937, 0.97, 0.982, 0.992,
                  0.447, 0.193, 0.173, 0.105, 0.04, 0.155, 0.022, 0.027, 0.028, -0.045, 0.681)
FEATURE_SPREAD = (0.049, 0.078, 0.127, 0.193, 0.249, 0.29, 0.289, 0.26, 0.209, 0.146, 0.094, 0.07, 0.05,
                  0.186, 0.069, 0.138, 0.068, 0.126, 0.214, 0.073, 0.077, 0.106, 0.119, 0.489)


def _luma(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


def _mean_abs_gradient(plane: torch.Tensor) -> torch.Tensor:
    """Mean absolute horizontal + vertical difference of (N, H, W) planes, per image."""
    dx = (plane[:, :, 1:] - plane[:, :, :-1]).abs().mean(dim=(1, 2))
    dy = (plane[:, 1:, :] - plane[:, :-1, :]).abs().mean(dim=(1, 2))
    return dx + dy


def photometric_features(x: torch.Tensor) -> torch.Tensor:
    """(N, N_FEATURES) statistics of RGB views in [0, 1], shape (N, 3, H, W); see FEATURE_NAMES."""
    x = x.float()
    y = _luma(x)
    below = [(y < t).float().mean(dim=(1, 2)) for t in LUMA_LEVELS]
    brightest, darkest = x.amax(dim=1), x.amin(dim=1)
    chroma = brightest - darkest
    means = x.mean(dim=(2, 3))
    opponent_rg = x[:, 0] - x[:, 1]
    opponent_yb = 0.5 * (x[:, 0] + x[:, 1]) - x[:, 2]
    colour_detail = _mean_abs_gradient(opponent_rg) + _mean_abs_gradient(opponent_yb)
    ratio = colour_detail / (_mean_abs_gradient(y) + 1e-3)
    feats = below + [
        y.mean(dim=(1, 2)), y.std(dim=(1, 2)),
        chroma.mean(dim=(1, 2)), chroma.std(dim=(1, 2)),
        (chroma > 0.6).float().mean(dim=(1, 2)), (chroma < 0.02).float().mean(dim=(1, 2)),
        (brightest > 254.5 / 255).float().mean(dim=(1, 2)), (darkest < 0.5 / 255).float().mean(dim=(1, 2)),
        means[:, 0] - means[:, 1], means[:, 2] - means[:, 1],
        ratio,
    ]
    return torch.stack(feats, dim=1)


class PhotometricHead(nn.Module):
    """Global statistics of the view -> a logit added to the network's (zero until trained)."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.register_buffer("centre", torch.tensor(FEATURE_CENTRE), persistent=False)
        self.register_buffer("spread", torch.tensor(FEATURE_SPREAD), persistent=False)
        self.layers = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = (photometric_features(x) - self.centre) / self.spread
        feats = feats.to(self.layers[0].weight.dtype)
        return self.layers(feats).squeeze(-1)
