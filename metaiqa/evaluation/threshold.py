"""Choosing a gate threshold from the scores of images a user accepts (and rejects). Pure maths.

A gate passes an image when `score >= threshold` (as `metaiqa gate --min-score`). Given only
GOOD scores, the threshold is a low percentile of them: that share of acceptable images
would be refused. Given BAD scores too, it is the threshold that maximises balanced accuracy,
(share of good that pass + share of bad that fail) / 2, which weighs both kinds of mistake
equally whatever the sizes of the two sets.

Thresholds are rounded to `decimals` places (what a user types), and every rate reported is
computed at the rounded threshold, so the numbers hold for the command line one runs.
No I/O, no logging, no state.
"""

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from metaiqa.errors import InvalidInput

ArrayLike = Sequence[float] | np.ndarray


class BadScores(InvalidInput):
    """Scores that cannot be used for a threshold: empty, not 1-D, or not finite."""


@dataclass(frozen=True)
class GateRates:
    """What a gate at `threshold` does to the two sets (bad_* are None without bad scores)."""

    threshold: float
    good_passed: int
    good_total: int
    bad_failed: int | None = None
    bad_total: int | None = None

    @property
    def good_pass_rate(self) -> float:
        return self.good_passed / self.good_total

    @property
    def bad_fail_rate(self) -> float | None:
        return None if not self.bad_total else self.bad_failed / self.bad_total

    @property
    def balanced_accuracy(self) -> float | None:
        fail = self.bad_fail_rate
        return None if fail is None else (self.good_pass_rate + fail) / 2

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(
            good_pass_rate=self.good_pass_rate,
            bad_fail_rate=self.bad_fail_rate,
            balanced_accuracy=self.balanced_accuracy,
        )
        return out


def as_scores(values: ArrayLike, what: str = "scores") -> np.ndarray:
    """1-D float64 array of finite scores, at least one; else BadScores naming `what`."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise BadScores(f"{what} must be a 1-D sequence, got shape {arr.shape}")
    if arr.size == 0:
        raise BadScores(f"{what}: need at least one score, got none")
    bad = arr[~np.isfinite(arr)]
    if bad.size:
        raise BadScores(f"{what} contain {bad.size} non-finite value(s), e.g. {bad[0]}")
    return arr


def gate_rates(good: ArrayLike, bad: ArrayLike | None, threshold: float) -> GateRates:
    """Counts of good scores >= threshold (pass) and bad scores < threshold (fail)."""
    g = as_scores(good, "good scores")
    t = float(threshold)
    if bad is None:
        return GateRates(t, int((g >= t).sum()), int(g.size))
    b = as_scores(bad, "bad scores")
    return GateRates(t, int((g >= t).sum()), int(g.size), int((b < t).sum()), int(b.size))


def percentile_threshold(good: ArrayLike, percentile: float = 5.0, *, decimals: int = 4) -> float:
    """The `percentile`-th percentile of the good scores (linear interpolation), rounded DOWN.

    Rounding down never refuses more good images than the unrounded percentile would.
    """
    g = as_scores(good, "good scores")
    if not 0.0 <= float(percentile) < 100.0:
        raise InvalidInput(f"percentile must be in [0, 100), got {percentile}")
    value = float(np.percentile(g, float(percentile)))
    scale = 10**decimals
    return round(math.floor(value * scale + 1e-9) / scale, decimals)


def _separating_round(low: float, high: float, value: float, decimals: int) -> float:
    """`value` rounded to the fewest places >= `decimals` that keep low < it <= high."""
    for d in range(decimals, 17):
        r = round(value, d)
        if low < r <= high:
            return r
    return value


def balanced_threshold(good: ArrayLike, bad: ArrayLike, *, decimals: int = 4) -> float:
    """The threshold maximising balanced accuracy between good (should pass) and bad (should fail).

    Candidates are the midpoints between consecutive distinct scores of both sets (any
    threshold in one gap has the same rates). Ties go to the widest gap (the largest margin),
    then to the lower threshold. With a single distinct score it is that score.
    """
    g, b = as_scores(good, "good scores"), as_scores(bad, "bad scores")
    levels = np.unique(np.concatenate([g, b]))
    if levels.size == 1:
        return float(levels[0])
    mids = (levels[:-1] + levels[1:]) / 2
    gs, bs = np.sort(g), np.sort(b)
    good_pass = (g.size - np.searchsorted(gs, mids, side="left")) / g.size
    bad_fail = np.searchsorted(bs, mids, side="left") / b.size
    accuracy = (good_pass + bad_fail) / 2
    best = np.flatnonzero(np.isclose(accuracy, accuracy.max(), rtol=0, atol=1e-12))
    gaps = np.diff(levels)[best]
    k = int(best[np.flatnonzero(np.isclose(gaps, gaps.max(), rtol=1e-9, atol=1e-12))[0]])
    return _separating_round(float(levels[k]), float(levels[k + 1]), float(mids[k]), decimals)


@dataclass(frozen=True)
class Suggestion:
    """The suggested threshold (`chosen`, by `method`) and the rates of each rule considered."""

    method: str  # "balanced_accuracy" (good and bad given) or "percentile" (good only)
    chosen: GateRates
    percentile: float
    by_percentile: GateRates
    by_balanced_accuracy: GateRates | None


def suggest_threshold(
    good: ArrayLike, bad: ArrayLike | None = None, *, percentile: float = 5.0, decimals: int = 4
) -> Suggestion:
    """Good only: the percentile rule. Good and bad: balanced accuracy (percentile rule reported too)."""
    pct = gate_rates(good, bad, percentile_threshold(good, percentile, decimals=decimals))
    if bad is None:
        return Suggestion("percentile", pct, float(percentile), pct, None)
    best = gate_rates(good, bad, balanced_threshold(good, bad, decimals=decimals))
    return Suggestion("balanced_accuracy", best, float(percentile), pct, best)
