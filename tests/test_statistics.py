"""Issue 12, items 13/14: bootstrap intervals resample contents, the VQEG logistic is increasing,
failed fits are flagged, and an anti-correlated predictor cannot look good after the fit."""

import json
from pathlib import Path

import numpy as np
import pytest

from metaiqa.data.samples import Sample
from metaiqa.evaluation import metrics
from metaiqa.evaluation.report import ReportInputError, evaluate, write_report

CONTENTS, PER_CONTENT = 12, 25


def _corr(a: np.ndarray, b: np.ndarray) -> float:  # the cheap PLCC, for the simulation's speed
    return float(np.corrcoef(a, b)[0, 1])


def _clustered(rng: np.random.Generator, contents: int = CONTENTS, per: int = PER_CONTENT):
    """Images of one content share a prediction bias (a scene the model misjudges as a whole)."""
    mos = rng.random((contents, per))
    pred = mos + rng.normal(0, 0.25, (contents, 1)) + rng.normal(0, 0.1, (contents, per))
    return pred.ravel(), mos.ravel(), np.repeat(np.arange(contents), per)


def test_content_bootstrap_is_wider_and_covers_the_truth_more_often():
    """The issue's simulation: 12 contents x 25 images, seeded (about a second)."""
    big_p, big_m, _ = _clustered(np.random.default_rng(123), contents=20000)
    truth = _corr(big_p, big_m)
    reps, cover, width = 40, {"pair": 0, "content": 0}, {"pair": [], "content": []}
    for r in range(reps):
        p, m, g = _clustered(np.random.default_rng(r))
        for kind, groups in (("pair", None), ("content", g)):
            lo, hi = metrics.bootstrap_ci(_corr, p, m, groups=groups, n=150, seed=r)
            cover[kind] += lo <= truth <= hi
            width[kind].append(hi - lo)
    assert np.mean(width["content"]) > 1.8 * np.mean(width["pair"])
    assert cover["pair"] / reps <= 0.6  # the old interval: far below its nominal 95 %
    assert cover["content"] / reps >= 0.7


def test_group_bootstrap_keeps_groups_whole_and_singletons_equal_pairs():
    rng = np.random.default_rng(0)
    m = rng.random(40)
    p = m + rng.normal(0, 0.2, 40)
    pairs = metrics.bootstrap_ci(metrics.plcc, p, m, n=100, seed=5)
    assert metrics.bootstrap_ci(metrics.plcc, p, m, groups=list(range(40)), n=100, seed=5) == pairs
    assert all(np.isnan(metrics.bootstrap_ci(metrics.plcc, p, m, groups=["one"] * 40, n=10)))
    with pytest.raises(metrics.InvalidInput, match="one group key per pair"):
        metrics.bootstrap_ci(metrics.plcc, p, m, groups=[1, 2], n=10)
    clusters = metrics._Clusters(["a", "b", "a", "c", "b"], 5)
    for seed in range(20):
        drawn = clusters.draw(np.random.default_rng(seed)).tolist()
        # whole groups only: 0 and 2 ("a") always travel together, as do 1 and 4 ("b")
        assert drawn.count(0) == drawn.count(2) and drawn.count(1) == drawn.count(4)


def _samples(pred, mos, contents):
    return [Sample(Path(f"img/{i}.png"), float(v), None, f"C{c}") for i, (v, c) in enumerate(zip(mos, contents, strict=True))]


def test_report_intervals_resample_contents():
    p, m, g = _clustered(np.random.default_rng(7))
    rep = evaluate(p, _samples(p, m, g), bootstrap=100, seed=2)
    assert rep["settings"]["bootstrap_unit"] == "content" and rep["n_contents"] == CONTENTS
    expected = metrics.bootstrap_ci(metrics.srocc, p, m, groups=[f"C{c}" for c in g], n=100, seed=2)
    assert rep["ci"]["srocc"] == pytest.approx(list(expected))
    pairs = metrics.bootstrap_ci(metrics.srocc, p, m, n=100, seed=2)
    assert rep["ci"]["srocc"][1] - rep["ci"]["srocc"][0] > pairs[1] - pairs[0]


def test_anti_correlated_predictor_shows_negative_plcc_and_no_flattering_fit():
    rng = np.random.default_rng(1)
    m = rng.random(300)
    p = -m + rng.normal(0, 0.1, 300)
    rep = evaluate(p, _samples(p, m, range(300)), bootstrap=100)
    ov = rep["overall"]
    assert ov["plcc"] < -0.9 and ov["srocc"] < -0.9
    assert ov["plcc_fitted"] is None or ov["plcc_fitted"] < 0
    assert "srocc_fitted" not in ov and "krcc_fitted" not in ov
    assert rep["logistic"]["fit_ok"] is False and "anti-correlated" in rep["logistic"]["reason"]
    assert rep["logistic"]["params"] is None
    assert rep["ci"]["plcc"][1] < 0


def test_logistic_is_increasing_and_matches_a_good_predictor():
    rng = np.random.default_rng(2)
    m = rng.random(200)
    p = 0.2 + 0.5 * m + rng.normal(0, 0.05, 200)
    fit = metrics.fit_logistic(p, m)
    assert fit.ok and fit.params[0] > fit.params[1]
    q = metrics.logistic4(p, *fit.params)
    assert np.all(np.diff(q[np.argsort(p)]) >= 0)
    rep = evaluate(p, _samples(p, m, range(200)), bootstrap=0)
    assert rep["logistic"]["fit_ok"] is True and rep["overall"]["plcc_fitted"] > 0.9
    # the scale of either side does not matter (fit on standardised data)
    big = metrics.fit_logistic(p * 1e6, m * 100 + 1)
    assert big.ok and metrics.plcc(metrics.logistic4(p * 1e6, *big.params), m) == pytest.approx(
        metrics.plcc(q, m), abs=1e-6)


def test_failed_fit_is_flagged_not_replaced_by_the_initial_guess(monkeypatch, tmp_path):
    rng = np.random.default_rng(3)
    m = rng.random(50)
    p = m + rng.normal(0, 0.1, 50)

    def no_convergence(*_a, **_k):
        raise RuntimeError("Optimal parameters not found: maxfev reached")

    monkeypatch.setattr(metrics.optimize, "curve_fit", no_convergence)
    fit = metrics.fit_logistic(p, m)
    assert not fit.ok and fit.params is None and "converge" in fit.reason
    with pytest.raises(metrics.LogisticFitError, match="converge"):
        metrics.fit_logistic4(p, m)
    samples = _samples(p, m, range(50))
    rep = evaluate(p, samples, bootstrap=20, splits=3)
    assert rep["logistic"] == {**rep["logistic"], "fit_ok": False, "params": None}
    assert rep["overall"]["plcc_fitted"] is None and rep["ci"]["plcc_fitted"] == [None, None]
    assert rep["overall"]["plcc"] > 0.8 and rep["splits"]["fit_failures"] == 3
    page = write_report(rep, p, samples, tmp_path)["html"].read_text()
    assert "No logistic fit" in page
    json.dumps(rep, allow_nan=False)


@pytest.mark.parametrize("value", [1e308, -1e308, 1e13])
def test_extreme_labels_are_an_input_error(value):
    p = np.linspace(0, 1, 6)
    mos = [0.1, 0.2, value, 0.4, 0.5, 0.6]
    with pytest.raises(ReportInputError, match="MOS label.*beyond"):
        evaluate(p, _samples(p, mos, range(6)), bootstrap=10)
