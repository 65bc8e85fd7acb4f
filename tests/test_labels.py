"""The label committee: fixed maps, identity, batching independence, and the issue's
requirement that the label falls as the level rises, for every registered type."""

import numpy as np
import pytest
import torch
from conftest import natural_image

from metaiqa.distortions import LEVELS, apply, list_distortions
from metaiqa.labels import (
    COMMITTEE,
    IDEAL,
    LabelInputError,
    combine,
    committee_info,
    committee_scores,
    fit_knots,
    knots,
    label,
    to_quality,
)

SIZE = 128


@pytest.fixture(scope="module")
def series():
    """{(type, seed): labels of levels 1..5} on two natural images; one batched committee call each."""
    out = {}
    for seed in (0, 1):
        img = natural_image(SIZE, seed=seed)
        names = list_distortions()
        stack = np.stack(
            [apply(n, img, lvl, np.random.default_rng([seed, i])) for i, n in enumerate(names) for lvl in LEVELS]
        )
        labels = label(img, stack).reshape(len(names), len(LEVELS))
        out.update({(n, seed): labels[i] for i, n in enumerate(names)})
    return out


@pytest.mark.parametrize("name", list_distortions())
def test_label_falls_as_level_rises(series, name):
    for seed in (0, 1):
        labels = series[(name, seed)]
        assert np.all((labels >= 0) & (labels <= 1))
        assert np.all(np.diff(labels) < 0), f"{name} seed {seed}: labels by level {np.round(labels, 4)}"
        assert labels[0] - labels[-1] > 0.1, f"{name} seed {seed}: total drop only {labels[0] - labels[-1]:.3f}"


def test_identical_image_gets_label_one_and_ideal_metrics():
    img = natural_image(64, seed=2)
    scores = committee_scores(img, img[None])
    for m in COMMITTEE:
        assert scores[m][0] == pytest.approx(IDEAL[m], abs=1e-5)
    assert combine(scores)[0] == pytest.approx(1.0, abs=1e-4)


def test_label_of_an_image_does_not_depend_on_its_batch():
    """Fixed maps: adding images (a bigger data set, a resumed run) never changes a label."""
    img = natural_image(64, seed=4)
    stack = np.stack([apply(n, img, 3, np.random.default_rng(0)) for n in ("jpeg", "white_noise", "darken")])
    together = label(img, stack)
    alone = np.array([label(img, stack[i : i + 1])[0] for i in range(3)])
    chunked = combine(committee_scores(img, stack, chunk=2))
    np.testing.assert_allclose(together, alone, atol=1e-6)
    np.testing.assert_allclose(together, chunked, atol=1e-6)


def test_numpy_uint8_and_torch_float_inputs_agree():
    img = natural_image(64, seed=5)
    dist = apply("gaussian_blur", img, 3, np.random.default_rng(0))[None]
    t_ref = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    t_dist = torch.from_numpy(dist).permute(0, 3, 1, 2).float() / 255
    a, b = committee_scores(img, dist), committee_scores(t_ref, t_dist)
    for m in COMMITTEE:
        np.testing.assert_allclose(a[m], b[m], atol=1e-6)


@pytest.mark.parametrize("metric", COMMITTEE)
def test_each_map_is_monotone_from_one_to_zero(metric):
    xs, ys = knots(metric)
    assert np.all(np.diff(xs) >= 0)
    worst, best = (xs[0], xs[-1]) if ys[0] < ys[-1] else (xs[-1], xs[0])
    grid = np.linspace(xs[0], xs[-1], 200)
    q = to_quality(metric, grid)
    assert np.all((q >= 0) & (q <= 1))
    assert to_quality(metric, np.array([best]))[0] == 1.0 and to_quality(metric, np.array([worst]))[0] == 0.0
    step = np.diff(q) if ys[-1] > ys[0] else -np.diff(q)  # quality rises towards the ideal end
    assert np.all(step >= 0)


def test_fit_knots_recovers_the_quantiles_of_a_uniform_sample():
    v = np.linspace(0.0, 1.0, 100001)
    k = fit_knots({"gmsd": v, "haarpsi": v})
    np.testing.assert_allclose(k["gmsd"][:3], [0.05, 0.1, 0.15], atol=1e-3)  # lower = better
    np.testing.assert_allclose(k["haarpsi"][:3], [0.95, 0.9, 0.85], atol=1e-3)  # higher = better


def test_bad_inputs_are_refused():
    img = natural_image(64, seed=0)
    with pytest.raises(LabelInputError, match="64, 64"):
        committee_scores(img, natural_image(96, seed=0)[None])
    with pytest.raises(LabelInputError, match="uint8"):
        committee_scores(img.astype(np.float32), img[None])
    with pytest.raises(LabelInputError, match="lack"):
        combine({"haarpsi": np.ones(2)})


def test_committee_info_is_json_ready_and_complete():
    import json

    info = json.loads(json.dumps(committee_info()))
    assert info["metrics"] == list(COMMITTEE)
    assert set(info["calibration_quantiles"]) == set(COMMITTEE)
