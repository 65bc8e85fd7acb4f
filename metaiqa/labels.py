"""Pseudo-labels: a committee of full-reference metrics against the pristine reference.

With no human opinion scores, each synthetic image is labelled by how far it is from its
pristine crop, as judged by four full-reference metrics from piq that need no downloaded
weights and ranked among the best on KADID-10k while being cheap (measured on this
2-core CPU at 384x384, ms/image: GMSD 12, MDSI 13, DSS 23, HaarPSI 29 -- versus MS-SSIM
204, VIF-p 141, FSIM 109, VSI 100, which added little but time):

    haarpsi  Haar-wavelet perceptual similarity (colour: YIQ)   1 = identical, lower = worse
    mdsi     mean deviation similarity (gradient + chroma)       0 = identical, higher = worse
    dss      DCT sub-band similarity                             1 = identical, lower = worse
    gmsd     gradient magnitude similarity deviation (luma)      0 = identical, higher = worse

Combination (fixed, data-independent -- labels never change when a data set grows or a
run resumes):

    q_m   = interp(value_m, KNOTS[m].values, KNOTS[m].quality)      per metric, in [0, 1]
    label = mean over the committee of q_m                          in [0, 1], higher = better

KNOTS[m] is a frozen piecewise-linear map: the metric's ideal value (identical images) maps
to 1, and its p-quantile over a calibration set maps to 1 - p (p = 0.05 .. 1 in steps of
0.05; beyond the calibration range the map is clamped, to 0 on the bad side). So each
metric contributes on a comparable, roughly uniform scale instead of in its own units
(MDSI jumps at the first visible damage, HaarPSI falls slowly), and every map is monotone,
so a distortion series that every metric ranks the same way gets labels in that order.
The calibration set, made once and frozen into the constants below: the 25 built-in types
x 5 levels on 38 photos (one 384x384 crop each, `metaiqa data synth --crops 1 --seed 0`
on ../shared/references), raw metric values as written to dmos.csv; `fit_knots` is the
function that produced them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from metaiqa.errors import MetaIQAError

COMMITTEE: tuple[str, ...] = ("haarpsi", "mdsi", "dss", "gmsd")

# metric -> ideal value (identical images) and whether higher raw values are better
IDEAL: dict[str, float] = {"haarpsi": 1.0, "mdsi": 0.0, "dss": 1.0, "gmsd": 0.0}
HIGHER_IS_BETTER: dict[str, bool] = {"haarpsi": True, "mdsi": False, "dss": True, "gmsd": False}

QUANTILES: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 21))  # 0.05 .. 1.0

# Frozen calibration quantiles (p = 0.05 .. 1.0, from the best end towards the worst end).
CALIBRATION_QUANTILES: dict[str, tuple[float, ...]] = {
    "haarpsi": (
        0.9903, 0.9773, 0.9655, 0.9535, 0.9378, 0.9211, 0.9024, 0.8793, 0.8558, 0.8314,
        0.8029, 0.7697, 0.7373, 0.7015, 0.6659, 0.6187, 0.5672, 0.5045, 0.4266, 0.1432,
    ),
    "mdsi": (
        0.1339, 0.1679, 0.188, 0.2029, 0.2198, 0.2346, 0.2497, 0.2641, 0.2771, 0.2908,
        0.3054, 0.3184, 0.3316, 0.3456, 0.359, 0.3744, 0.3918, 0.4136, 0.4505, 0.6434,
    ),
    "dss": (
        0.9967, 0.9891, 0.98, 0.9706, 0.9588, 0.9412, 0.9228, 0.9007, 0.879, 0.8529,
        0.8199, 0.7825, 0.7432, 0.7001, 0.6475, 0.5876, 0.5245, 0.4419, 0.3593, 0.1082,
    ),
    "gmsd": (
        0.001584, 0.005476, 0.009633, 0.01387, 0.02005, 0.02693, 0.03346, 0.03994, 0.04774, 0.05662,
        0.06592, 0.07618, 0.0879, 0.1004, 0.1138, 0.1316, 0.1498, 0.1731, 0.2079, 0.3324,
    ),
}

DEFAULT_CHUNK = 25  # images per metric call: bounds memory (FSIM-like filters scale with N*H*W)


class LabelInputError(MetaIQAError, ValueError):
    """Reference and distorted images that cannot be compared (shape, dtype, range)."""


def _to_tensor(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """uint8 (..., H, W, 3) numpy -> float (N, 3, H, W) in [0, 1]; float tensors (N, 3, H, W) pass through."""
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 or x.ndim not in (3, 4) or x.shape[-1] != 3:
            raise LabelInputError(f"{name}: expected uint8 (H, W, 3) or (N, H, W, 3), got {x.dtype} {x.shape}")
        t = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)
        t = t.unsqueeze(0) if t.ndim == 3 else t
        return t.permute(0, 3, 1, 2).contiguous()
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point() or x.ndim not in (3, 4) or x.shape[-3] != 3:
            raise LabelInputError(f"{name}: expected float (3, H, W) or (N, 3, H, W) in [0, 1], got {x.dtype} {tuple(x.shape)}")
        return (x.unsqueeze(0) if x.ndim == 3 else x).float().clamp(0.0, 1.0)
    raise LabelInputError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")


def _metric_fns() -> dict[str, Any]:
    import piq

    return {"haarpsi": piq.haarpsi, "mdsi": piq.mdsi, "dss": piq.dss, "gmsd": piq.gmsd}


@torch.inference_mode()
def committee_scores(
    reference: np.ndarray | torch.Tensor,
    distorted_batch: np.ndarray | torch.Tensor,
    *,
    metrics: tuple[str, ...] = COMMITTEE,
    chunk: int = DEFAULT_CHUNK,
) -> dict[str, np.ndarray]:
    """Raw committee metric values of each distorted image against one reference.

    reference: uint8 (H, W, 3) or float (3, H, W); distorted_batch: uint8 (N, H, W, 3) or
    float (N, 3, H, W), all RGB. Returns {metric: float64 array of N}. The reference is
    compared to the whole stack in a few batched calls (chunks of `chunk` images).
    """
    ref = _to_tensor(reference, "reference")
    dist = _to_tensor(distorted_batch, "distorted_batch")
    if ref.shape[0] != 1:
        raise LabelInputError(f"reference: expected one image, got a batch of {ref.shape[0]}")
    if ref.shape[1:] != dist.shape[1:]:
        raise LabelInputError(f"reference is {tuple(ref.shape[1:])} but distorted images are {tuple(dist.shape[1:])}")
    fns = _metric_fns()
    unknown = [m for m in metrics if m not in fns]
    if unknown:
        raise LabelInputError(f"unknown committee metric(s) {unknown}; available: {sorted(fns)}")
    out: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for start in range(0, dist.shape[0], max(1, chunk)):
        x = dist[start : start + chunk]
        y = ref.expand(x.shape[0], -1, -1, -1)
        for m in metrics:
            out[m].append(fns[m](x, y, data_range=1.0, reduction="none").double().cpu().numpy())
    return {m: np.concatenate(v) if v else np.zeros(0) for m, v in out.items()}


def knots(metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(metric values ascending, quality at each value) of the frozen map of `metric`."""
    qs = CALIBRATION_QUANTILES[metric]
    values = np.array((IDEAL[metric],) + tuple(qs), dtype=np.float64)
    quality = np.array((1.0,) + tuple(1.0 - p for p in QUANTILES[: len(qs)]), dtype=np.float64)
    if HIGHER_IS_BETTER[metric]:
        values, quality = values[::-1], quality[::-1]
    return values, quality


def to_quality(metric: str, values: np.ndarray) -> np.ndarray:
    """The frozen monotone map of one metric's raw values to [0, 1] (1 = identical)."""
    if metric not in CALIBRATION_QUANTILES:
        raise LabelInputError(f"no label map for metric {metric!r}; committee: {', '.join(COMMITTEE)}")
    xs, ys = knots(metric)
    return np.interp(np.asarray(values, dtype=np.float64), xs, ys)


def combine(scores: Mapping[str, np.ndarray]) -> np.ndarray:
    """One label per image in [0, 1], higher = better: the mean of the committee's mapped values."""
    missing = [m for m in COMMITTEE if m not in scores]
    if missing:
        raise LabelInputError(f"scores lack committee metric(s) {missing}; got {sorted(scores)}")
    mapped = np.stack([to_quality(m, scores[m]) for m in COMMITTEE])
    return mapped.mean(axis=0)


def label(reference: np.ndarray | torch.Tensor, distorted_batch: np.ndarray | torch.Tensor) -> np.ndarray:
    """committee_scores + combine in one call."""
    return combine(committee_scores(reference, distorted_batch))


def fit_knots(values: Mapping[str, np.ndarray]) -> dict[str, tuple[float, ...]]:
    """Calibration quantiles for CALIBRATION_QUANTILES from raw metric values of a calibration set.

    Used once to freeze the constants (never at labelling time): for each metric, its
    p-quantiles for p in QUANTILES, counted from the best end (4 significant digits).
    """
    out = {}
    for m, v in values.items():
        v = np.asarray(v, dtype=np.float64)
        ps = np.array(QUANTILES)
        q = np.quantile(v, 1.0 - ps) if HIGHER_IS_BETTER[m] else np.quantile(v, ps)
        out[m] = tuple(float(f"{x:.4g}") for x in q)
    return out


def committee_info() -> dict[str, Any]:
    """What the manifest records about the labels (enough to recompute dmos from the metric columns)."""
    import piq

    return {
        "metrics": list(COMMITTEE),
        "combine": "mean of per-metric frozen piecewise-linear maps to [0, 1] (metaiqa.labels)",
        "ideal": dict(IDEAL),
        "quantiles": list(QUANTILES),
        "calibration_quantiles": {m: list(CALIBRATION_QUANTILES[m]) for m in COMMITTEE},
        "piq": piq.__version__,
        "higher_is_better": True,
    }
