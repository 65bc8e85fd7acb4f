"""The training bars' time-budget arithmetic: the ETA follows max_minutes when it ends the run first."""

import io

import pytest
from tqdm import tqdm

from metaiqa.meta.progress import budget_estimate, follow_budget, format_duration


def test_a_budget_that_stops_the_run_first_sets_the_total_and_the_eta():
    # 10 steps in 60 s of a 100,000-step run: the step count's ETA would be ~167 hours
    est = budget_estimate(step=10, total_steps=100_000, elapsed_s=60.0, max_minutes=60)
    assert est.budget_first and est.seconds_left == pytest.approx(3540.0)
    assert est.total == 10 + 590  # 3540 s left at 6 s a step
    assert est.postfix() == {"budget": "ends in 59 min"}
    # tqdm's ETA with that total is the budget's, not days
    meter = tqdm.format_meter(n=10, total=est.total, elapsed=60.0)
    assert "59:00" in meter and "100000" not in meter


def test_steps_that_end_first_keep_the_step_count():
    est = budget_estimate(step=10, total_steps=100, elapsed_s=10.0, max_minutes=60)
    assert not est.budget_first and est.total == 100
    assert est.postfix() == {"budget": "60 min left"}


def test_no_budget_and_no_pace_yet():
    assert budget_estimate(5, 100, 50.0, None).postfix() == {}
    assert budget_estimate(5, 100, 50.0, None).total == 100
    first = budget_estimate(0, 100_000, 0.0, 30)
    assert first.total == 100_000 and not first.budget_first and first.seconds_left == 1800


def test_past_the_budget_ends_now_and_a_resumed_run_uses_its_whole_clock():
    over = budget_estimate(step=40, total_steps=1000, elapsed_s=4000.0, max_minutes=60)
    assert over.total == 40 and over.budget_first and over.seconds_left == 0
    resumed = budget_estimate(step=500, total_steps=100_000, elapsed_s=3000.0, max_minutes=60)  # 6 s a step
    assert resumed.total == 600 and resumed.postfix() == {"budget": "ends in 10 min"}


def test_follow_budget_moves_a_real_bar():
    bar = tqdm(total=100_000, file=io.StringIO())
    follow_budget(bar, budget_estimate(10, 100_000, 60.0, 60))
    assert bar.total == 600
    bar.close()


@pytest.mark.parametrize(("seconds", "text"), [(12, "12 s"), (420, "7 min"), (9000, "2.5 h")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
