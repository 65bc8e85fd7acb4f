import base64
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from metaiqa.data.samples import Sample
from metaiqa.evaluation import metrics
from metaiqa.evaluation.report import ReportInputError, draw_splits, evaluate, write_report

GROUPS = ("gaussian_blur", "jpeg", "white_noise")


def synthetic(n_refs=8, noise=0.05, seed=0, group_none=False):
    """Labels fall with level; predictions are a noisy monotone function of the labels."""
    rng = np.random.default_rng(seed)
    samples, preds = [], []
    for g in GROUPS:
        for r in range(n_refs):
            for level in range(1, 5):
                mos = float(np.clip(1 - 0.2 * level + rng.normal(0, 0.03), 0, 1))
                samples.append(Sample(Path(f"img/I{r:02d}_{g}_{level}.png"), mos, None if group_none else g,
                                      f"I{r:02d}", level))
                preds.append(0.2 + 0.5 * mos + rng.normal(0, noise))
    return np.asarray(preds), samples


def _all_numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _all_numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _all_numbers(v)
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        yield obj


def test_overall_metrics_match_scipy_and_fit():
    preds, samples = synthetic()
    mos = np.asarray([s.mos for s in samples])
    rep = evaluate(preds, samples, bootstrap=200)
    ov = rep["overall"]
    assert ov["n"] == rep["n"] == len(samples)
    assert ov["srocc"] == pytest.approx(stats.spearmanr(preds, mos).statistic)
    assert ov["krcc"] == pytest.approx(stats.kendalltau(preds, mos).statistic)
    assert ov["plcc"] == pytest.approx(stats.pearsonr(preds, mos).statistic)
    assert ov["rmse"] == pytest.approx(np.sqrt(np.mean((preds - mos) ** 2)))
    mapped = metrics.logistic4(preds, *rep["logistic"]["params"])
    assert ov["plcc_fitted"] == pytest.approx(stats.pearsonr(mapped, mos).statistic)
    # the fit maps predictions onto the MOS scale: the error must shrink versus raw
    assert ov["rmse_fitted"] < ov["rmse"]
    for key in ("srocc", "krcc", "plcc", "plcc_fitted", "rmse_fitted"):
        lo, hi = rep["ci"][key]
        value = ov[key]
        assert lo <= value <= hi, key


def test_per_group_table_and_json_able():
    preds, samples = synthetic()
    rep = evaluate(preds, samples, bootstrap=50)
    assert sorted(rep["per_group"]) == sorted(GROUPS)
    for g in GROUPS:
        idx = [i for i, s in enumerate(samples) if s.group == g]
        row = rep["per_group"][g]
        assert row["n"] == len(idx)
        assert row["srocc"] == pytest.approx(stats.spearmanr(preds[idx], [samples[i].mos for i in idx]).statistic)
    text = json.dumps(rep, allow_nan=False)  # raises if a NaN slipped through
    assert all(math.isfinite(v) for v in _all_numbers(json.loads(text)))


def test_undefined_metrics_become_null_not_nan():
    preds, samples = synthetic()
    # one group whose predictions are constant: its correlations are undefined
    preds = preds.copy()
    for i, s in enumerate(samples):
        if s.group == "jpeg":
            preds[i] = 0.5
    rep = evaluate(preds, samples, bootstrap=0)
    assert rep["per_group"]["jpeg"]["srocc"] is None
    assert rep["per_group"]["gaussian_blur"]["srocc"] is not None
    assert rep["ci"]["srocc"] == [None, None]  # bootstrap switched off
    json.dumps(rep, allow_nan=False)


def test_no_groups_gives_no_group_table():
    preds, samples = synthetic(group_none=True)
    assert evaluate(preds, samples, bootstrap=0)["per_group"] == {}


def test_splits_are_content_disjoint_subsets_and_median_is_reported():
    preds, samples = synthetic(n_refs=10)
    idx_sets = draw_splits(samples, 5, seed=3)
    for idx in idx_sets:
        chosen = {samples[i].ref_id for i in idx}
        assert len(chosen) == 8  # 80% of 10 contents
        # whole contents only: every sample of a chosen content is in the split
        assert len(idx) == sum(1 for s in samples if s.ref_id in chosen)
    assert len({tuple(i) for i in idx_sets}) > 1
    rep = evaluate(preds, samples, splits=5, seed=3, bootstrap=0)
    sp = rep["splits"]
    assert sp["count"] == 5 and len(sp["values"]) == 5
    sroccs = [v["srocc"] for v in sp["values"]]
    assert sp["median"]["srocc"] == pytest.approx(float(np.median(sroccs)))
    assert evaluate(preds, samples, splits=5, seed=3, bootstrap=0) == rep  # deterministic by seed
    assert evaluate(preds, samples, bootstrap=0)["splits"] is None


def test_bad_input_is_rejected_with_the_culprit_named():
    preds, samples = synthetic()
    bad = list(samples)
    bad[4] = Sample(Path("img/nan_label.png"), float("nan"), "jpeg", "I00", 1)
    with pytest.raises(ReportInputError, match="nan_label.png"):
        evaluate(preds, bad)
    with pytest.raises(ReportInputError, match="pair"):
        evaluate(preds[:-1], samples)
    with pytest.raises(ReportInputError, match="at least 3"):
        evaluate([], [])
    p2 = preds.copy()
    p2[0] = np.inf
    with pytest.raises(ReportInputError, match="prediction"):
        evaluate(p2, samples)
    with pytest.raises(ReportInputError, match="splits"):
        evaluate(preds, samples, splits=0)


def test_write_report_files(tmp_path):
    preds, samples = synthetic()
    rep = evaluate(preds, samples, splits=3, bootstrap=50)
    paths = write_report(rep, preds, samples, tmp_path / "out")
    for key in ("json", "scatter", "html", "predictions"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0
    assert json.loads(paths["json"].read_text()) == rep
    png = paths["scatter"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    page = paths["html"].read_text()
    assert "data:image/png;base64," + base64.b64encode(png).decode() in page
    for g in GROUPS:
        assert g in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    rows = paths["predictions"].read_text().splitlines()
    assert len(rows) == len(samples) + 1 and rows[0].startswith("path,")


def test_html_names_the_model_whether_given_as_dict_or_name(tmp_path):
    preds, samples = synthetic()
    rep = evaluate(preds, samples, bootstrap=0)
    rep["model"] = "my-model"  # the service stores just the served name
    page = write_report(rep, preds, samples, tmp_path / "a")["html"].read_text()
    assert "my-model" in page
    rep["model"] = {"name": "ckpt-7", "architecture": "metaiqa_tiny", "crops": 1}
    page = write_report(rep, preds, samples, tmp_path / "b")["html"].read_text()
    assert "ckpt-7" in page and "metaiqa_tiny" in page
