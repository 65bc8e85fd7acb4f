"""MetaIQA quality regressors: backbone -> head -> sigmoid score in [0, 1] (higher is better).

Models take float RGB in [0, 1], shape (N, 3, H, W), and normalise inside, so every caller
(training, scoring, heatmaps) feeds the same thing and a checkpoint carries its own policy.
"""

import logging
import socket
from pathlib import Path

import torch
import torchvision
from torch import nn

from metaiqa.errors import MetaIQAError
from metaiqa.models.layers import QualityHead, input_channels, make_input_norm
from metaiqa.models.photometric import PhotometricHead
from metaiqa.models.registry import register_model

log = logging.getLogger(__name__)


class PretrainedWeightsUnavailable(MetaIQAError):
    """ImageNet weights were asked for and could not be had."""


class IQAModel(nn.Module):
    """A backbone producing features, a fixed input front-end and the MetaIQA head."""

    def __init__(self, backbone: nn.Module, feature_dim: int, input_norm: str, head_hidden, dropout: float,
                 global_stats: bool = False):
        super().__init__()
        self.input_norm = make_input_norm(input_norm)
        self.backbone = backbone
        self.head = QualityHead(feature_dim, tuple(head_hidden), dropout)
        self.stats_head = PhotometricHead() if global_stats else None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.backbone(self.input_norm(x)))
        if self.stats_head is not None:
            out = out + self.stats_head(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))

    def head_parameter_names(self) -> list[str]:
        """Names of the head's parameters (they get their own learning rate)."""
        return [n for n, _ in self.named_parameters() if n.startswith(("head.", "stats_head."))]


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A backbone's state dict from a .safetensors or torch file (no pickled code), or a clear error."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsUnavailable(f"backbone weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a weights file, truncated, pickled code: all "not these weights"
        raise PretrainedWeightsUnavailable(f"{path} is not a readable state-dict file ({type(exc).__name__}: {exc})") from None
    return state if isinstance(state, dict) else {}


def _imagenet_state_dict(source: str) -> dict[str, torch.Tensor]:
    if source != "imagenet":
        return read_weights_file(source)
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, timeouts, hash errors: all mean "not available here"
        raise PretrainedWeightsUnavailable(
            f"could not get torchvision's ImageNet ResNet-18 weights ({type(exc).__name__}: {exc}). "
            "Go online once, or put the file resnet18-f37072fd.pth in torch's hub cache "
            "(~/.cache/torch/hub/checkpoints/), or pass pretrained_backbone=PATH, or leave it unset "
            "to start from random initialisation."
        ) from exc
    finally:
        socket.setdefaulttimeout(old)


@register_model
def metaiqa_resnet18(
    pretrained_backbone: str | None = None,
    input_norm: str = "mscn",
    head_hidden: tuple[int, ...] | list[int] = (1024, 512),
    dropout: float = 0.5,
    global_stats: bool = False,
) -> IQAModel:
    """torchvision ResNet-18 (its 1000-way fc kept as the feature layer, as in MetaIQA) + head.

    `pretrained_backbone`: None (random init, no download), "imagenet" (torchvision's
    official weights, downloaded once when online) or a path to a state-dict file.
    `global_stats`: add the photometric-statistics branch (`metaiqa.models.photometric`).
    """
    backbone = torchvision.models.resnet18(weights=None)
    if pretrained_backbone:
        backbone.load_state_dict(_imagenet_state_dict(pretrained_backbone))
        log.info("loaded backbone weights from %s", pretrained_backbone)
    model = IQAModel(backbone, 1000, input_norm, head_hidden, dropout, global_stats)
    _widen_first_conv(model, "conv1")
    return model


def _widen_first_conv(model: IQAModel, attr: str) -> None:
    """Give the backbone's first conv as many input channels as the front end makes.

    The extra channels start at zero weight, so a 3-channel prior loaded with
    `expand_state_dict` computes exactly what it computed before.
    """
    channels = input_channels(model.input_norm)
    conv = getattr(model.backbone, attr)
    if conv.in_channels == channels:
        return
    wide = torch.zeros(conv.out_channels, channels, *conv.kernel_size, dtype=conv.weight.dtype)
    with torch.no_grad():
        wide[:, : conv.in_channels] = conv.weight
    conv.weight = nn.Parameter(wide)  # in place, so a conv subclass keeps its own padding
    conv.in_channels = channels


def expand_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A prior's state dict made to fit `model`: input-channel-widened convs padded with zeros, and
    a photometric branch the prior lacks taken from `model` as constructed (it adds zero until trained)."""
    own = model.state_dict()
    out = dict(state)
    for key, value in own.items():
        if key.startswith("stats_head.") and key not in state:
            out[key] = value
    for key, value in state.items():
        target = own.get(key)
        if target is None or target.shape == value.shape or value.ndim != 4:
            continue
        if value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:] and value.shape[1] < target.shape[1]:
            padded = torch.zeros_like(target)
            padded[:, : value.shape[1]] = value.to(target.dtype)
            out[key] = padded
    return out


@register_model
def metaiqa_tiny(
    input_norm: str = "mscn",
    width: int = 8,
    head_hidden: tuple[int, ...] | list[int] = (32, 16),
    dropout: float = 0.1,
    global_stats: bool = False,
) -> IQAModel:
    """A few-thousand-parameter CNN with the same contract, for tests and smoke runs."""
    backbone = nn.Sequential(
        nn.Conv2d(3, width, 3, stride=2, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    model = IQAModel(backbone, 2 * width, input_norm, head_hidden, dropout, global_stats)
    _widen_first_conv(model, "0")
    return model
