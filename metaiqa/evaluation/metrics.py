"""Pure IQA metrics: no state, no I/O, no logging.

All take two 1-D sequences (predictions, opinion scores) of equal length >= 3.
"""

from collections.abc import Callable, Sequence

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
    """VQEG 4-parameter logistic: (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2."""
    z = np.clip(-(x - b3) / (abs(b4) + 1e-12), -60, 60)
    return (b1 - b2) / (1 + np.exp(z)) + b2


def fit_logistic4(pred: ArrayLike, mos: ArrayLike) -> tuple[float, float, float, float]:
    """Least-squares fit of `logistic4` mapping predictions onto the opinion scale."""
    p, m = _pair(pred, mos)
    sign = 1.0 if np.corrcoef(p, m)[0, 1] >= 0 or _nan_if_constant(p, m) else -1.0
    b1, b2 = (m.max(), m.min()) if sign > 0 else (m.min(), m.max())
    x0 = [b1, b2, float(np.mean(p)), float(np.std(p) or 1.0) / 2]
    try:
        params, _ = optimize.curve_fit(logistic4, p, m, p0=x0, maxfev=20000)
    except (RuntimeError, optimize.OptimizeWarning):
        params = np.asarray(x0)
    return tuple(float(v) for v in params)  # type: ignore[return-value]


def mapped(pred: ArrayLike, mos: ArrayLike) -> np.ndarray:
    """Predictions after the fitted 4-parameter logistic (for PLCC/RMSE 'after fit')."""
    p, m = _pair(pred, mos)
    return logistic4(p, *fit_logistic4(p, m))


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    pred: ArrayLike,
    mos: ArrayLike,
    *,
    n: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `metric` over resampled pairs."""
    p, m = _pair(pred, mos)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, p.size, p.size)
        v = metric(p[idx], m[idx]) if np.ptp(p[idx]) and np.ptp(m[idx]) else np.nan
        values.append(v)
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(arr, alpha)), float(np.quantile(arr, 1 - alpha))
