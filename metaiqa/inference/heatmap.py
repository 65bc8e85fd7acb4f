"""Where in the image the score comes from: input-gradient maps, Grad-CAM, PNG overlays.

Default method: `gradient` -- |d score / d pixel|, maximum over colour channels, Gaussian-
smoothed, normalised to [0, 1]. It is the visualisation of the MetaIQA paper, it works for
every model (no layer to pick), and it has pixel resolution, which matters for quality:
distortions such as noise, blocking or a blurred patch are local and small, and Grad-CAM
at ResNet-18's last stage sees the image on a 32-pixel grid. `gradcam` (second method) is
smoother and coarser: the stage-4 activations weighted by their mean gradient.

Read the gradient map as SENSITIVITY: where a change of the pixels would move the score
most. With the MSCN front end ((I - mu) / (sigma + c)) smooth regions light up and already
noisy or textured regions are dark (contrast masking: a further change there is hard to
see), which tests/test_heatmap.py checks. It is not a defect detector; Grad-CAM ("which
regions' features carry the score") localises a distorted region more directly on an
untrained tiny model, but at a 32-pixel grid on ResNet-18.

What the maps are computed on: the model is fully convolutional up to a global pooling, so
both methods run it on the WHOLE image (not just the centre crop the center_crop policy
scores), at native pixel scale for `center_crop`/`native` and through the differentiable
resize for `resize` -- so every region gets a value and the map lines up with the original
image. Images longer than `max_side` are first downscaled (memory), and the map is scaled back.

Both differentiate the pre-sigmoid logit (same map after normalisation as the score, since
d sigmoid = s(1-s) d logit is one factor, but no saturation underflow). Neither accumulates
parameter gradients nor changes the model, so a shared serving model is safe to use.
No matplotlib: the colour map is a small table here.
"""

import io
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from metaiqa.data.transforms import resize_short_side, to_tensor
from metaiqa.errors import InvalidInput

METHODS = ("gradient", "gradcam")
DEFAULT_METHOD = "gradient"
DEFAULT_MAX_SIDE = 1024


class UnknownHeatmapMethod(InvalidInput):
    """A heatmap method name that is not one of METHODS."""


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InvalidInput(f"expected a uint8 HxWx3 RGB array, got {desc}")


def _working_input(image: np.ndarray, max_side: int) -> torch.Tensor:
    """(3, h, w) float tensor of the image, downscaled so its long side is at most `max_side`."""
    _check_image(image)
    if max_side < 32:
        raise InvalidInput(f"max_side must be >= 32, got {max_side}")
    x = to_tensor(image)
    h, w = x.shape[-2:]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return x


def _model_view(leaf: torch.Tensor, preprocess: Mapping[str, Any]) -> torch.Tensor:
    """The whole image as the model should see it (see module docstring), batched, differentiable."""
    policy = preprocess.get("policy", "center_crop")
    if policy == "resize":
        return resize_short_side(leaf, int(preprocess.get("size", 224)))[None]
    if policy in ("center_crop", "native"):
        return leaf[None]
    raise InvalidInput(f"unknown preprocess policy {policy!r} (center_crop, resize, native)")


def _logit(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    fn = getattr(model, "logits", None)
    return (fn(x) if callable(fn) else model(x)).sum()


def _resize_map(heat: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    if tuple(heat.shape[-2:]) != tuple(size):
        heat = F.interpolate(heat[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return heat.detach().double().numpy()


def _normalise(heat: np.ndarray, q: float) -> np.ndarray:
    """Scale to [0, 1] by the q-th percentile (robust to a few extreme pixels); all-zero stays zero."""
    heat = np.nan_to_num(np.abs(heat), nan=0.0, posinf=0.0)
    hi = float(np.percentile(heat, q)) if heat.size else 0.0
    if not np.isfinite(hi) or hi <= 0:
        hi = float(heat.max()) if heat.size else 0.0
    if hi <= 0:
        return np.zeros(heat.shape, dtype=np.float32)
    return np.clip(heat / hi, 0.0, 1.0).astype(np.float32)


def _gaussian_blur(heat: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return heat
    from scipy.ndimage import gaussian_filter  # lazy: only heatmaps need scipy

    return gaussian_filter(heat, sigma=sigma, mode="reflect")


class _EvalMode:
    """Run the model in eval mode, restoring its previous mode afterwards."""

    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self) -> nn.Module:
        if self.was_training:
            self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        if self.was_training:
            self.model.train()


def gradient_heatmap(
    model: nn.Module,
    image: np.ndarray,
    preprocess: Mapping[str, Any],
    *,
    sigma: float | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
    percentile: float = 99.0,
) -> np.ndarray:
    """|d score / d input pixels|, max over channels, smoothed, in [0, 1], shape = image HxW.

    `sigma` (pixels of the working image) defaults to max(1.5, short side / 100): enough to
    merge the stride-2 checkerboard of the first convolutions, small enough to stay local.
    """
    h0, w0 = image.shape[:2] if isinstance(image, np.ndarray) else (0, 0)
    x = _working_input(image, max_side)
    with _EvalMode(model), torch.inference_mode(False), torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        score = _logit(model, _model_view(leaf, preprocess))
        grad = torch.autograd.grad(score, leaf, allow_unused=True)[0] if score.requires_grad else None
    if grad is None:  # the score does not depend on the pixels at all
        grad = torch.zeros_like(x)
    heat = grad.abs().amax(dim=0).double().numpy()
    if sigma is None:
        sigma = max(1.5, min(heat.shape) / 100)
    heat = _gaussian_blur(heat, float(sigma))
    heat = _resize_map(torch.from_numpy(np.ascontiguousarray(heat)), (h0, w0))
    return _normalise(heat, percentile)


def find_cam_layer(model: nn.Module) -> nn.Module:
    """The last ResNet stage (`model.backbone.layer4`) if there is one, else the last Conv2d."""
    layer = getattr(getattr(model, "backbone", None), "layer4", None)
    if isinstance(layer, nn.Module):
        return layer
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise InvalidInput(f"Grad-CAM needs a convolutional layer; {type(model).__name__} has none")
    return convs[-1]


def gradcam_heatmap(
    model: nn.Module,
    image: np.ndarray,
    preprocess: Mapping[str, Any],
    *,
    layer: nn.Module | None = None,
    sign: str = "abs",
    max_side: int = DEFAULT_MAX_SIDE,
) -> np.ndarray:
    """Grad-CAM on the last ResNet stage, upsampled to image HxW, in [0, 1].

    sign: "abs" (default; influence in either direction, like the gradient map), "positive"
    (classic Grad-CAM ReLU: regions pushing the score up) or "negative" (pulling it down).
    """
    if sign not in ("abs", "positive", "negative"):
        raise InvalidInput(f"sign must be 'abs', 'positive' or 'negative', got {sign!r}")
    h0, w0 = image.shape[:2] if isinstance(image, np.ndarray) else (0, 0)
    x = _working_input(image, max_side)
    layer = find_cam_layer(model) if layer is None else layer
    owner = threading.get_ident()
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if threading.get_ident() == owner:  # a concurrent forward in another thread is not ours
            captured.append(output[0] if isinstance(output, tuple | list) else output)

    handle = layer.register_forward_hook(hook)
    try:
        with _EvalMode(model), torch.inference_mode(False), torch.enable_grad():
            leaf = x.detach().clone().requires_grad_(True)  # so activations carry a graph even if weights are frozen
            score = _logit(model, _model_view(leaf, preprocess))
            if not captured:
                raise InvalidInput(f"Grad-CAM layer {type(layer).__name__} was not used by the forward pass")
            acts = captured[-1]
            (grads,) = torch.autograd.grad(score, acts)
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = (weights * acts).sum(dim=1)[0].detach()
    cam = cam.abs() if sign == "abs" else cam.clamp_min(0) if sign == "positive" else (-cam).clamp_min(0)
    heat = _resize_map(cam.double(), (h0, w0))
    return _normalise(heat, 100.0)


def compute_heatmap(
    model: nn.Module, image: np.ndarray, preprocess: Mapping[str, Any], method: str = DEFAULT_METHOD, **kw: Any
) -> np.ndarray:
    """Dispatch by method name ("gradient" | "gradcam") for the CLI and the service."""
    if method == "gradient":
        return gradient_heatmap(model, image, preprocess, **kw)
    if method == "gradcam":
        return gradcam_heatmap(model, image, preprocess, **kw)
    raise UnknownHeatmapMethod(f"unknown heatmap method {method!r}; choose from {', '.join(METHODS)}")


# A turbo-like map (dark blue -> cyan -> green -> yellow -> red): readable over photos.
_STOPS = np.array([0.0, 0.15, 0.35, 0.5, 0.65, 0.85, 1.0])
_COLOURS = np.array(
    [
        [0.19, 0.07, 0.23],
        [0.25, 0.45, 0.95],
        [0.10, 0.80, 0.80],
        [0.40, 0.95, 0.35],
        [0.95, 0.85, 0.20],
        [0.98, 0.45, 0.10],
        [0.60, 0.03, 0.02],
    ]
)
_LUT = (
    np.stack([np.interp(np.linspace(0, 1, 256), _STOPS, _COLOURS[:, c]) for c in range(3)], axis=1) * 255
).round().astype(np.uint8)


def colorize(heat: np.ndarray) -> np.ndarray:
    """HxW values in [0, 1] -> uint8 HxWx3 colours (values outside are clipped, NaN -> 0)."""
    idx = (np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float64)), 0, 1) * 255).round().astype(np.intp)
    return _LUT[idx]


def coarse_grid(heat: np.ndarray, cells: int = 32) -> np.ndarray:
    """Block-average a heatmap to at most `cells` x `cells` (for JSON answers)."""
    if cells < 1:
        raise InvalidInput(f"cells must be >= 1, got {cells}")
    t = torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))[None, None]
    out = (min(cells, t.shape[-2]), min(cells, t.shape[-1]))
    return F.adaptive_avg_pool2d(t, out)[0, 0].numpy()


def overlay_png(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> bytes:
    """PNG bytes of the image with the colour-mapped heat blended on top (heat resized if needed)."""
    _check_image(image)
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2:
        raise InvalidInput(f"heat must be a 2-D array, got shape {heat.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInput(f"alpha must be in [0, 1], got {alpha}")
    h, w = image.shape[:2]
    if heat.shape != (h, w):
        heat = np.asarray(Image.fromarray(heat, "F").resize((w, h), Image.Resampling.BILINEAR))
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colorize(heat).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(blend, 0, 255).round().astype(np.uint8), "RGB").save(buf, "PNG")
    return buf.getvalue()
