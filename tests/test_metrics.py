import numpy as np
import pytest
from scipy import stats

from metaiqa.errors import InvalidInput
from metaiqa.evaluation import metrics


def test_correlations_agree_with_scipy():
    rng = np.random.default_rng(0)
    m = rng.random(50)
    p = m + rng.normal(0, 0.2, 50)
    assert metrics.srocc(p, m) == pytest.approx(stats.spearmanr(p, m).statistic)
    assert metrics.krcc(p, m) == pytest.approx(stats.kendalltau(p, m).statistic)
    assert metrics.plcc(p, m) == pytest.approx(stats.pearsonr(p, m).statistic)
    assert metrics.rmse(p, m) == pytest.approx(np.sqrt(np.mean((p - m) ** 2)))


def test_logistic_fit_recovers_known_parameters():
    x = np.linspace(-3, 3, 200)
    true = (5.0, 1.0, 0.3, 0.7)
    y = metrics.logistic4(x, *true)
    fit = metrics.fit_logistic4(x, y)
    assert np.allclose(metrics.logistic4(x, *fit), y, atol=1e-4)
    assert fit[0] == pytest.approx(5.0, abs=1e-2) and fit[2] == pytest.approx(0.3, abs=1e-2)


def test_bootstrap_interval_contains_point_estimate():
    rng = np.random.default_rng(1)
    m = rng.random(80)
    p = m + rng.normal(0, 0.1, 80)
    lo, hi = metrics.bootstrap_ci(metrics.srocc, p, m, n=200)
    assert lo < metrics.srocc(p, m) < hi


def test_bad_input_is_rejected():
    with pytest.raises(InvalidInput, match="length"):
        metrics.srocc([1, 2, 3], [1, 2])
    with pytest.raises(InvalidInput, match="NaN"):
        metrics.plcc([1, 2, np.nan], [1, 2, 3])
    assert np.isnan(metrics.srocc([1, 1, 1], [1, 2, 3]))


def test_grouped_share_interval_resamples_whole_groups():
    # one group entirely right, one entirely wrong: resamples give 0, 1/2 or 1
    assert metrics.grouped_share_ci([5, 0], [5, 5]) == (0.0, 1.0)
    lo, hi = metrics.grouped_share_ci([29, 30, 28, 30, 30, 20], [30] * 6)
    assert lo < 167 / 180 < hi and hi <= 1.0
    assert metrics.grouped_share_ci([3], [4]) == (0.75, 0.75)
    with pytest.raises(InvalidInput, match="hits <= totals"):
        metrics.grouped_share_ci([6], [5])
