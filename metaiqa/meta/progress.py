"""Progress-bar arithmetic for runs with a step count and a time budget (`max_minutes`).

A bar that counts steps shows the ETA of the step count: 75 hours for a run whose time budget
stops it after one. `budget_estimate` says where the run will really end, so the bar's total
(and with it tqdm's own ETA) can follow the budget, plus a "budget ends in" text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BudgetEstimate:
    """total: the step the run is expected to stop at (the bar's total); budget_first: the time
    budget, not the step count, ends the run; seconds_left: until the budget ends (None: no budget)."""

    total: int
    budget_first: bool
    seconds_left: float | None

    def postfix(self) -> dict[str, str]:
        """What to add to the bar's postfix: {} without a budget."""
        if self.seconds_left is None:
            return {}
        return {"budget": f"ends in {format_duration(self.seconds_left)}" if self.budget_first
                else f"{format_duration(self.seconds_left)} left"}


def budget_estimate(step: int, total_steps: int, elapsed_s: float, max_minutes: float | None) -> BudgetEstimate:
    """Where a run at `step` of `total_steps`, `elapsed_s` seconds into its clock (the one
    `max_minutes` is compared with; after a resume it includes the earlier processes' time, as
    `step` includes their steps), will stop. The pace is elapsed_s / step, validation included;
    before the first step it is unknown and the step count stands.
    """
    if max_minutes is None:
        return BudgetEstimate(total_steps, False, None)
    left = max(0.0, 60.0 * max_minutes - elapsed_s)
    if step <= 0 or elapsed_s <= 0:
        return BudgetEstimate(total_steps, False, left)
    end = min(total_steps, step + math.ceil(left * step / elapsed_s))
    return BudgetEstimate(end, end < total_steps, left)


def format_duration(seconds: float) -> str:
    """12 s, 7 min, 2.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def follow_budget(bar: Any, estimate: BudgetEstimate) -> None:
    """Set a tqdm bar's total to the estimated last step (its ETA then counts to the budget)."""
    if bar.total != estimate.total:
        bar.total = estimate.total
