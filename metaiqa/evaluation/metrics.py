"""Pure IQA metrics: no state, no I/O, no logging.

All take two 1-D sequences (predictions, opinion scores) of equal length >= 3.
"""

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from metaiqa.errors import InvalidInput

ArrayLike = Sequence[float] | np.ndarray


def _pair(pred: ArrayLike, mos: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64).ravel()
    m = np.asarray(mos, dtype=np.float64).ravel()
    if p.shape != m.shape:
        raise InvalidInput(f"predictions and scores differ in length: {p.size} vs {m.size}")
    if p.size < 3:
        raise InvalidInput(f"need at least 3 pairs to correlate, got {p.size}")
    if not (np.isfinite(p).all() and np.isfinite(m).all()):
        raise InvalidInput("predictions or scores contain NaN/inf")
    return p, m


def _nan_if_constant(p: np.ndarray, m: np.ndarray) -> bool:
    return bool(np.ptp(p) == 0 or np.ptp(m) == 0)


def srocc(pred: ArrayLike, mos: ArrayLike) -> float:
    """Spearman rank-order correlation (NaN when either side is constant)."""
    p, m = _pair(pred, mos)
    return float("nan") if _nan_if_constant(p, m) else float(stats.spearmanr(p, m).statistic)


def krcc(pred: ArrayLike, mos: ArrayLike) -> float:
    """Kendall rank correlation (tau-b)."""
    p, m = _pair(pred, mos)
    return float("nan") if _nan_if_constant(p, m) else float(stats.kendalltau(p, m).statistic)


def plcc(pred: ArrayLike, mos: ArrayLike) -> float:
    """Pearson linear correlation."""
    p, m = _pair(pred, mos)
    return float("nan") if _nan_if_constant(p, m) else float(stats.pearsonr(p, m).statistic)


def rmse(pred: ArrayLike, mos: ArrayLike) -> float:
    p, m = _pair(pred, mos)
    return float(np.sqrt(np.mean((p - m) ** 2)))


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG 4-parameter logistic: (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2 (increasing iff b1 > b2)."""
    z = np.clip(-(np.asarray(x, dtype=np.float64) - b3) / (abs(b4) + 1e-12), -60, 60)
    return (b1 - b2) / (1 + np.exp(z)) + b2


class LogisticFitError(InvalidInput):
    """No increasing logistic maps the predictions onto the opinion scores (see LogisticFit.reason)."""


@dataclass(frozen=True)
class LogisticFit:
    """A fitted `logistic4`: `params` (b1, b2, b3, b4) with b1 >= b2, i.e. non-decreasing.

    `ok` is False when the fit failed (no convergence, non-finite numbers) or came out flat
    (no increasing map explains the scores, e.g. an anti-correlated predictor); then `params`
    must not be used as a mapping and `reason` says why.
    """

    params: tuple[float, float, float, float] | None
    ok: bool
    reason: str | None = None


def _increasing(x: np.ndarray, b2: float, d: float, b3: float, b4: float) -> np.ndarray:
    return logistic4(x, b2 + d, b2, b3, b4)


FLAT_FIT = 1e-6  # amplitude (in MOS standard deviations) below which a fitted logistic is flat


def fit_logistic(pred: ArrayLike, mos: ArrayLike) -> LogisticFit:
    """Least-squares fit of an increasing `logistic4` mapping predictions onto the opinion scale.

    The amplitude b1 - b2 is constrained to be >= 0 (a quality metric must not be rewarded for
    ranking backwards), and the fit runs on standardised data so the scale of either side
    (0..1, 1..100, 1e9) does not matter. A failed or flat fit is returned with ok=False.
    """
    p, m = _pair(pred, mos)
    if _nan_if_constant(p, m):
        return LogisticFit(None, False, "predictions or scores are constant")
    with np.errstate(all="ignore"):
        mp, sp, mm, sm = float(p.mean()), float(p.std()), float(m.mean()), float(m.std())
    if not all(math.isfinite(v) and v > 0 for v in (sp, sm)):
        return LogisticFit(None, False, "predictions or scores span too wide a range to fit")
    x, y = (p - mp) / sp, (m - mm) / sm
    x0 = [float(y.min()), float(np.ptp(y)), 0.0, 0.5]
    bounds = ([-np.inf, 0.0, -np.inf, 1e-6], [np.inf, np.inf, np.inf, np.inf])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = optimize.curve_fit(_increasing, x, y, p0=x0, bounds=bounds, maxfev=20000)
    except (RuntimeError, ValueError, FloatingPointError, optimize.OptimizeWarning) as exc:
        return LogisticFit(None, False, f"the fit did not converge ({exc})")
    b2, d, b3, b4 = (float(v) for v in params)
    out = (mm + sm * (b2 + d), mm + sm * b2, mp + sp * b3, sp * b4)
    if not all(math.isfinite(v) for v in out):
        return LogisticFit(None, False, "the fit produced non-finite parameters")
    if d < FLAT_FIT or np.ptp(_increasing(x, b2, d, b3, b4)) < FLAT_FIT:
        return LogisticFit(out, False, "the best increasing logistic is flat: the predictions do not rise "
                                       "with the scores (unrelated or anti-correlated)")
    return LogisticFit(out, True)


def fit_logistic4(pred: ArrayLike, mos: ArrayLike) -> tuple[float, float, float, float]:
    """The parameters of `fit_logistic`; LogisticFitError (with the reason) when the fit failed."""
    fit = fit_logistic(pred, mos)
    if not fit.ok or fit.params is None:
        raise LogisticFitError(f"no increasing logistic fit: {fit.reason}")
    return fit.params


def mapped(pred: ArrayLike, mos: ArrayLike) -> np.ndarray:
    """Predictions after the fitted increasing 4-parameter logistic (for PLCC/RMSE 'after fit')."""
    p, m = _pair(pred, mos)
    return logistic4(p, *fit_logistic4(p, m))


class _Clusters:
    """Pairs grouped by key (first-seen order), drawn whole: `draw` gives the pair indices of
    len(groups) groups picked with replacement (vectorised: one allocation per draw)."""

    def __init__(self, groups: ArrayLike, size: int):
        keys = list(np.asarray(groups, dtype=object).ravel())
        if len(keys) != size:
            raise InvalidInput(f"groups has {len(keys)} entries for {size} pairs; give one group key per pair")
        index: dict[object, list[int]] = {}
        for i, k in enumerate(keys):
            index.setdefault(k, []).append(i)
        self.order = np.fromiter((i for v in index.values() for i in v), dtype=np.int64, count=size)
        self.lengths = np.asarray([len(v) for v in index.values()], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])

    def __len__(self) -> int:
        return int(self.lengths.size)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        picked = rng.integers(0, len(self), len(self))
        lens = self.lengths[picked]
        ends = np.cumsum(lens)
        offsets = np.repeat(self.starts[picked] - (ends - lens), lens) + np.arange(int(ends[-1]))
        return self.order[offsets]


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    pred: ArrayLike,
    mos: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    n: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `metric`.

    `groups` (one key per pair, e.g. the content an image shows): resample whole groups with
    replacement, keeping each group's pairs together. Pairs of one content are not independent
    (same scene, shared biases), so resampling single pairs understates the spread; with
    groups the interval reflects how the metric varies from one set of contents to another.
    Without `groups` every pair is its own group. Fewer than 2 groups give (NaN, NaN).
    """
    p, m = _pair(pred, mos)
    clusters = None if groups is None else _Clusters(groups, p.size)
    if clusters is not None and len(clusters) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.full(n, np.nan)
    for b in range(n):
        idx = rng.integers(0, p.size, p.size) if clusters is None else clusters.draw(rng)
        ps, ms = p[idx], m[idx]
        if ps.size >= 3 and np.ptp(ps) and np.ptp(ms):
            values[b] = metric(ps, ms)
    arr = values[np.isfinite(values)]
    if arr.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(arr, alpha)), float(np.quantile(arr, 1 - alpha))


def grouped_share_ci(
    hits: ArrayLike, totals: ArrayLike, *, n: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of a pooled share (sum hits / sum totals) over groups.

    One entry per group (e.g. per scene: pairs scored in the right order, pairs checked);
    whole groups are resampled with replacement, so the interval shows how the share moves
    with the set of contents, not with single pairs. Fewer than 2 groups give (share, share).
    """
    h, t = np.asarray(hits, dtype=np.float64), np.asarray(totals, dtype=np.float64)
    if h.shape != t.shape or h.ndim != 1 or not h.size or (t <= 0).any() or (h < 0).any() or (h > t).any():
        raise InvalidInput(f"grouped_share_ci needs one (hits <= totals, totals > 0) per group, got {h} / {t}")
    if h.size < 2:
        return float(h[0] / t[0]), float(h[0] / t[0])
    picks = np.random.default_rng(seed).integers(0, h.size, (n, h.size))
    shares = h[picks].sum(axis=1) / t[picks].sum(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(shares, alpha)), float(np.quantile(shares, 1 - alpha))
