"""Where in the image the score comes from: local-score maps, input-gradient maps, Grad-CAM.

`explain(model, image, preprocess, method)` returns a `HeatmapResult`: `heat` (float32, the
image's height x width, in [0, 1]), the image's `score` (equal to `Scorer.score_arrays` for the
same pixels), the method and how many model views the map was computed from. Three methods:

`views` (the default for whole-image "views" models): WHERE IS THE DAMAGE, in score units. The
model scores local views of its own input size over the image, and each pixel shows the mean
score of the views that cover it, on the FIXED 0-1 scale of the score itself (0 = bad, drawn
red; 1 = good, drawn blue; nothing is normalised, so a pristine photo stays blue, a ruined one
turns red, and two maps compare directly). The views: for the "views" policy, the image at the
viewing scale (short side `scale`) with the policy's own grid of `size`-square views, refined
by the midpoints between neighbours (stride <= size/2); the policy's views are among them, and
the score is their mean (the same forward). For `center_crop` (and `native`) models, `size`
crops over the image at native resolution, on the same refined grid; for `resize`, the image
with short side `size`. At most `MAX_LOCAL_VIEWS` (64) views: a larger grid keeps an even
subset per axis, and pixels no view covers then take the nearest covered pixel's value. The
resolution is the stride (~size/2 of the working image: a 512x384 viewing frame gives a 5x3
grid of 224-pixel views), so small defects show as a lower score of the views around them.

`gradient` (the default for other policies, the MetaIQA paper's map): |d score / d pixel|, max
over colour channels, Gaussian-smoothed, divided by its own 99th percentile: RELATIVE, 1 marks
this image's most sensitive pixels, not comparable between images. Read it as sensitivity
(where a change would move the score most), not as damage: with the MSCN front end smooth
regions light up and noisy or textured regions stay dark (contrast masking; tested).
`gradcam`: Grad-CAM of the last stage (ResNet-18's stage 4, else the last convolution, e.g.
EfficientNet-Lite0's head conv; activations weighted by their mean gradient), divided by its
maximum: relative too, coarse (a 32-pixel grid on both).

What gradient and Grad-CAM are computed on: for the "views" policy, the SAME views that
produce the score (same viewing scale, same boxes); each view's map is placed back at its box,
averaged where views overlap, then upsampled to the original image (pixels outside every view
of a panorama over the `max_views` cap stay 0: the score does not depend on them). The score
is the mean of those views' scores, from that forward. For center_crop/native the model (fully convolutional
up to a global pooling) runs on the WHOLE image at native scale (through the differentiable
resize for `resize`), so every region gets a value: that map explains the whole-image forward,
while the score shown with it is the policy's (the centre crop). Such images longer than
`max_side` are downscaled first (memory) and the map is scaled back.

Both differentiate the score (the mean of the views' sigmoid outputs: each view's logit
gradient times its s (1 - s), computed in float64 so a saturated score does not underflow to
a blank map), in chunks of `VIEW_BATCH` views (a view's gradient depends only on itself).
Nothing accumulates parameter gradients or changes the model, so a shared serving model is safe
to use. Colours, legend and PNG: metaiqa.inference.overlay (numpy + Pillow; no matplotlib).
"""

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from metaiqa.data.transforms import (
    check_image,
    image_views,
    resize_short_side,
    to_tensor,
)
from metaiqa.errors import InvalidInput
from metaiqa.inference.heatmap_geometry import (
    MAX_LOCAL_VIEWS,
    _crops,
    _gaussian_blur,
    _local_frame,
    _normalise,
    _paint,
    _policy_boxes,
    _resize_map,
    local_boxes,
)
from metaiqa.inference.overlay import colorize, overlay_png

__all__ = [
    "DEFAULT_MAX_SIDE", "LEGENDS", "MAX_LOCAL_VIEWS", "METHODS", "HeatmapResult", "UnknownHeatmapMethod",
    "check_method", "coarse_grid", "colorize", "compute_heatmap", "default_method", "explain", "find_cam_layer",
    "gradcam_heatmap", "gradient_heatmap", "local_boxes", "overlay_png", "policy_score", "views_heatmap",
]  # fmt: skip

log = logging.getLogger(__name__)

METHODS = ("views", "gradient", "gradcam")
#: The method of the policies other than "views" (see `default_method`).
DEFAULT_METHOD = "gradient"
DEFAULT_MAX_SIDE = 1024
#: Views per forward (and backward) pass: bounds memory on large images.
VIEW_BATCH = 8
#: Long side of the canvas a `views` map is painted on (then resized to the image).
_CANVAS = 1024

#: What each method's map shows; the README, the page and the overlay say the same.
LEGENDS = {
    "views": "local score: each region shows the model's own score for the views covering it, on the fixed "
    "0-1 score scale (red = 0, bad; yellow = 0.5; blue = 1, good); comparable between images",
    "gradient": "sensitivity |d score / d pixel|, relative to this image (red = its most sensitive pixels): "
    "where a change would move the score most, not where damage is; not comparable between images",
    "gradcam": "Grad-CAM of the last stage, relative to this image (red = the regions carrying the score most); "
    "coarse; not comparable between images",
}


class UnknownHeatmapMethod(InvalidInput):
    """A heatmap method name that is not one of METHODS."""


@dataclass(frozen=True)
class HeatmapResult:
    """A map and the score it is shown with (the Scorer's score for the same pixels)."""

    heat: np.ndarray  # float32, image height x width, in [0, 1]
    score: float
    method: str
    views: int  # model views the map was computed from (1: one whole-image forward)

    @property
    def scale(self) -> str:
        """`absolute` (views: score units, fixed) or `relative` (normalised within this image)."""
        return "absolute" if self.method == "views" else "relative"

    @property
    def legend(self) -> str:
        return LEGENDS[self.method]


def default_method(preprocess: Mapping[str, Any]) -> str:
    """`views` for whole-image ("views" policy) models, `gradient` for the others."""
    return "views" if preprocess.get("policy") == "views" else DEFAULT_METHOD


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InvalidInput(f"expected a uint8 HxWx3 RGB array, got {desc}")


def check_method(method: str) -> str:
    """`method` itself if it is one of METHODS, else UnknownHeatmapMethod (an InvalidInput)."""
    if method not in METHODS:
        raise UnknownHeatmapMethod(f"unknown heatmap method {method!r}; choose from {', '.join(METHODS)}")
    return method


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


# --- scores -------------------------------------------------------------------------------------


def _view_scores(model: nn.Module, pixels: np.ndarray, boxes: list[tuple[int, int]], size: int) -> np.ndarray:
    """float64 score of each view, `VIEW_BATCH` views per forward."""
    out = []
    with _EvalMode(model), torch.inference_mode():
        for start in range(0, len(boxes), VIEW_BATCH):
            out.append(model(_crops(pixels, boxes[start : start + VIEW_BATCH], size)).reshape(-1).double())
    return torch.cat(out).numpy()


def policy_score(model: nn.Module, image: np.ndarray, preprocess: Mapping[str, Any], crops: int = 1) -> float:
    """The image's score as `Scorer.score_arrays` computes it (mean over the policy's views)."""
    views = image_views(image, preprocess, crops)
    with _EvalMode(model), torch.inference_mode():
        out = torch.cat([model(chunk).reshape(-1).double() for chunk in views.split(VIEW_BATCH)])
    return float(out.mean())


def views_heatmap(
    model: nn.Module, image: np.ndarray, preprocess: Mapping[str, Any], *, crops: int = 1,
    limit: int = MAX_LOCAL_VIEWS,
) -> HeatmapResult:  # fmt: skip
    """The `views` map: local view scores on the fixed 0-1 scale (see module docstring)."""
    _check_image(image)
    pixels, size = _local_frame(image, preprocess)
    local = local_boxes(pixels.shape[0], pixels.shape[1], size, limit)
    own = _policy_boxes(pixels, preprocess) if preprocess.get("policy") == "views" else []
    boxes = list(dict.fromkeys(local + own))
    scores = dict(zip(boxes, _view_scores(model, pixels, boxes, size), strict=True))
    if own:
        score = float(np.mean([scores[b] for b in own]))
    else:
        score = policy_score(model, image, preprocess, crops)
    factor = min(1.0, _CANVAS / max(pixels.shape[:2]))
    heat = _paint([scores[b] for b in local], local, size, pixels.shape[:2], factor=factor, fill=True)
    heat = np.clip(_resize_map(heat, image.shape[:2]), 0.0, 1.0).astype(np.float32)
    log.debug("views map: %d local views of %d px on %s", len(local), size, pixels.shape[:2])
    return HeatmapResult(heat, score, "views", len(local))


# --- gradients over views (the "views" policy) --------------------------------------------------


def _cam_hook(layer: nn.Module | None, captured: list[torch.Tensor]):
    if layer is None:
        return None
    owner = threading.get_ident()

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if threading.get_ident() == owner:  # a concurrent forward in another thread is not ours
            captured.append(output[0] if isinstance(output, tuple | list) else output)

    return layer.register_forward_hook(hook)


def _chunk_maps(target: torch.Tensor, leaf: torch.Tensor, captured: list, layer: nn.Module | None) -> torch.Tensor:
    """One chunk's per-view maps: |d target / d input| (n, s, s), or the signed CAM (n, h', w')."""
    if layer is None:
        grad = torch.autograd.grad(target, leaf, allow_unused=True)[0] if target.requires_grad else None
        return torch.zeros(leaf.shape[0], *leaf.shape[2:]) if grad is None else grad.abs().amax(dim=1)
    if not captured:
        raise InvalidInput(f"Grad-CAM layer {type(layer).__name__} was not used by the forward pass")
    acts = captured[-1]
    (grads,) = torch.autograd.grad(target, acts)
    return (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1).detach()


def _differentiable(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(what to differentiate per view, the views' scores, d score / d that per view).

    The pre-sigmoid logit when the model has `logits` (its forward is sigmoid(logits)): the
    sigmoid's own backward underflows to 0 once a score rounds to 1.0 in float32, so the factor
    s (1 - s) is applied afterwards, computed in float64 from the logit without underflow.
    """
    fn = getattr(model, "logits", None)
    if not callable(fn):
        out = model(x).reshape(-1)
        return out, out.detach().double(), torch.ones(out.shape[0], dtype=torch.float64)
    logit = fn(x).reshape(-1)
    e = torch.exp(-logit.detach().double().abs())
    return logit, torch.sigmoid(logit.detach()).double(), e / (1 + e) ** 2


def _backprop_views(
    model: nn.Module, pixels: np.ndarray, boxes: list[tuple[int, int]], size: int, layer: nn.Module | None = None
) -> tuple[float, torch.Tensor]:
    """(mean score of the views, per-view maps of d mean score): input gradients, or CAMs of `layer`."""
    captured: list[torch.Tensor] = []
    handle = _cam_hook(layer, captured)
    total, maps = 0.0, []
    try:
        with _EvalMode(model), torch.inference_mode(False), torch.enable_grad():
            for start in range(0, len(boxes), VIEW_BATCH):
                captured.clear()
                leaf = _crops(pixels, boxes[start : start + VIEW_BATCH], size).requires_grad_(True)
                out, scores, factor = _differentiable(model, leaf)
                total += float(scores.sum())
                chunk = _chunk_maps(out.sum(), leaf, captured, layer).double()
                maps.append(chunk * (factor / len(boxes))[:, None, None])
    finally:
        if handle is not None:
            handle.remove()
    return total / len(boxes), torch.cat(maps)


def _views_gradient(model, image, preprocess, sigma, percentile) -> tuple[np.ndarray, float, int]:
    pixels, size = _local_frame(image, preprocess)
    boxes = _policy_boxes(pixels, preprocess)
    score, maps = _backprop_views(model, pixels, boxes, size)
    heat = _paint(list(maps.numpy()), boxes, size, pixels.shape[:2])
    heat = _gaussian_blur(heat, float(max(1.5, min(heat.shape) / 100) if sigma is None else sigma))
    return _normalise(_resize_map(heat, image.shape[:2]), percentile), score, len(boxes)


def _views_gradcam(model, image, preprocess, layer, sign) -> tuple[np.ndarray, float, int]:
    pixels, size = _local_frame(image, preprocess)
    boxes = _policy_boxes(pixels, preprocess)
    score, cams = _backprop_views(model, pixels, boxes, size, layer)
    cams = _signed(cams, sign)
    cams = F.interpolate(cams[:, None].double(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    heat = _paint(list(cams.numpy()), boxes, size, pixels.shape[:2])
    return _normalise(_resize_map(heat, image.shape[:2]), 100.0), score, len(boxes)


def _signed(cam: torch.Tensor, sign: str) -> torch.Tensor:
    return cam.abs() if sign == "abs" else cam.clamp_min(0) if sign == "positive" else (-cam).clamp_min(0)


# --- gradients over the whole image (center_crop, resize, native) -------------------------------


def _working_input(image: np.ndarray, max_side: int) -> torch.Tensor:
    """(3, h, w) float tensor of the image, downscaled so its long side is at most `max_side`."""
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
    raise InvalidInput(f"unknown preprocess policy {policy!r} (views, center_crop, resize, native)")


def _whole_gradient(model, image, preprocess, sigma, max_side, percentile) -> np.ndarray:
    x = _working_input(image, max_side)
    with _EvalMode(model), torch.inference_mode(False), torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        score = _differentiable(model, _model_view(leaf, preprocess))[0].sum()
        grad = torch.autograd.grad(score, leaf, allow_unused=True)[0] if score.requires_grad else None
    if grad is None:  # the score does not depend on the pixels at all
        grad = torch.zeros_like(x)
    heat = grad.abs().amax(dim=0).double().numpy()
    heat = _gaussian_blur(heat, float(max(1.5, min(heat.shape) / 100) if sigma is None else sigma))
    return _normalise(_resize_map(heat, image.shape[:2]), percentile)


def _whole_gradcam(model, image, preprocess, layer, sign, max_side) -> np.ndarray:
    x = _working_input(image, max_side)
    captured: list[torch.Tensor] = []
    handle = _cam_hook(layer, captured)
    try:
        with _EvalMode(model), torch.inference_mode(False), torch.enable_grad():
            leaf = x.detach().clone().requires_grad_(True)  # activations carry a graph even if weights are frozen
            score = _differentiable(model, _model_view(leaf, preprocess))[0].sum()
            cam = _chunk_maps(score, leaf, captured, layer)[0]
    finally:
        handle.remove()
    return _normalise(_resize_map(_signed(cam, sign).double(), image.shape[:2]), 100.0)


# --- public entry points ------------------------------------------------------------------------


def _gradient(model, image, preprocess, *, sigma=None, max_side=DEFAULT_MAX_SIDE, percentile=99.0):
    """(heat, score or None, views): over the policy's views for "views", else the whole image."""
    _check_image(image)
    if preprocess.get("policy") == "views":
        return _views_gradient(model, image, preprocess, sigma, percentile)
    return _whole_gradient(model, image, preprocess, sigma, max_side, percentile), None, 1


def _gradcam(model, image, preprocess, *, layer=None, sign="abs", max_side=DEFAULT_MAX_SIDE):
    _check_image(image)
    if sign not in ("abs", "positive", "negative"):
        raise InvalidInput(f"sign must be 'abs', 'positive' or 'negative', got {sign!r}")
    layer = find_cam_layer(model) if layer is None else layer
    if preprocess.get("policy") == "views":
        return _views_gradcam(model, image, preprocess, layer, sign)
    return _whole_gradcam(model, image, preprocess, layer, sign, max_side), None, 1


def gradient_heatmap(model: nn.Module, image: np.ndarray, preprocess: Mapping[str, Any], **kw: Any) -> np.ndarray:
    """|d score / d input pixels|, max over channels, smoothed, in [0, 1] (relative), shape = image HxW.

    Keywords: `sigma` (pixels of the working image; default max(1.5, short side / 100): merges
    the stride-2 checkerboard of the first convolutions, stays local), `max_side` (whole-image
    policies), `percentile` (99: the value mapped to 1).
    """
    return _gradient(model, image, preprocess, **kw)[0]


def gradcam_heatmap(model: nn.Module, image: np.ndarray, preprocess: Mapping[str, Any], **kw: Any) -> np.ndarray:
    """Grad-CAM on the last stage (see `find_cam_layer`), upsampled to image HxW, in [0, 1] (relative to its max).

    `sign`: "abs" (default; influence in either direction, like the gradient map), "positive"
    (classic Grad-CAM ReLU: regions pushing the score up) or "negative" (pulling it down);
    `layer` (default `find_cam_layer`), `max_side` (whole-image policies).
    """
    return _gradcam(model, image, preprocess, **kw)[0]


def find_cam_layer(model: nn.Module) -> nn.Module:
    """The last ResNet stage (`model.backbone.layer4`) if there is one, else the last Conv2d."""
    layer = getattr(getattr(model, "backbone", None), "layer4", None)
    if isinstance(layer, nn.Module):
        return layer
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise InvalidInput(f"Grad-CAM needs a convolutional layer; {type(model).__name__} has none")
    return convs[-1]


def explain(
    model: nn.Module,
    image: np.ndarray,
    preprocess: Mapping[str, Any],
    method: str | None = None,
    *,
    crops: int = 1,
    **kw: Any,
) -> HeatmapResult:
    """The map of `method` (None: `default_method(preprocess)`) and the image's score.

    `crops` is the Scorer's (center_crop policy) so the score matches it; `kw` go to the method
    (views: `limit`; gradient: `sigma`, `max_side`, `percentile`; gradcam: `layer`, `sign`, `max_side`).
    """
    method = check_method(default_method(preprocess) if method is None else method)
    _check_image(image)
    check_image(image.shape[0], image.shape[1], preprocess)  # the Scorer's refusals (ExtremeAspectRatio)
    if method == "views":
        return views_heatmap(model, image, preprocess, crops=crops, **kw)
    fn = _gradient if method == "gradient" else _gradcam
    heat, score, n = fn(model, image, preprocess, **kw)
    if score is None:
        score = policy_score(model, image, preprocess, crops)
    return HeatmapResult(heat, float(score), method, n)


def compute_heatmap(
    model: nn.Module, image: np.ndarray, preprocess: Mapping[str, Any], method: str | None = None, **kw: Any
) -> np.ndarray:
    """Just the map of `explain` (same methods and defaults; no separate score forward)."""
    method = check_method(default_method(preprocess) if method is None else method)
    if method == "views":
        return views_heatmap(model, image, preprocess, **kw).heat
    return (_gradient if method == "gradient" else _gradcam)(model, image, preprocess, **kw)[0]


def coarse_grid(heat: np.ndarray, cells: int = 32) -> np.ndarray:
    """Block-average a heatmap to at most `cells` x `cells` (for JSON answers)."""
    if cells < 1:
        raise InvalidInput(f"cells must be >= 1, got {cells}")
    t = torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))[None, None]
    out = (min(cells, t.shape[-2]), min(cells, t.shape[-1]))
    return F.adaptive_avg_pool2d(t, out)[0, 0].numpy()
