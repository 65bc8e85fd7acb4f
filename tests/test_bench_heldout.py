"""benchmarks/heldout.py's scoring maths: per-type pristine-above share and types ranked backwards."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import heldout  # noqa: E402


def _samples():
    out = []
    for ref in ("r0", "r1"):
        for kind in ("blur", "shift"):
            for level in (1, 2, 3):
                out.append(SimpleNamespace(ref_id=ref, group=kind, level=level, mos=1 - level / 5,
                                           path=Path(f"{ref}_{kind}_{level}.png")))
    return out


def test_a_type_scored_backwards_is_named_and_pulls_pristine_above_down():
    samples = _samples()
    pristine = {"r0": Path("r0.png"), "r1": Path("r1.png")}
    scores = {p: 1.0 for p in pristine.values()}
    for s in samples:  # blur: falls with the level; shift: rises above the pristine photo
        scores[s.path] = 0.9 - 0.1 * s.level if s.group == "blur" else 1.0 + 0.1 * s.level
    out = heldout.evaluate_scores(scores, samples, pristine, holdout=["shift"])
    assert out["types_backwards"] == ["shift"]
    assert out["per_type"]["blur"]["pristine_above"] == 1.0 and out["per_type"]["shift"]["pristine_above"] == 0.0
    assert out["all_types"]["pristine_above_distorted"] == pytest.approx(0.5)
    assert out["training_types"]["mean_within_group_srocc"] == pytest.approx(1.0)
    assert out["heldout_types"]["mean_within_group_srocc"] == pytest.approx(-1.0)
    assert "types ranked backwards | shift" in heldout.table(
        {"scores": {"m": out}, "seconds_per_image": {"m": 0.1}, "holdout_types": ["shift"]})


def test_pristine_above_interval_resamples_whole_scenes():
    samples = [SimpleNamespace(ref_id=f"{scene}_c{c}", content=scene, group="blur", level=level, mos=0.0,
                               path=Path(f"{scene}_c{c}_{level}.png"))
               for scene in ("good", "bad") for c in (0, 1) for level in (1, 2, 3)]
    pristine = {s.ref_id: Path(f"{s.ref_id}.png") for s in samples}
    scores = {p: 1.0 for p in pristine.values()}
    for s in samples:  # the "bad" scene scores every distorted crop above its pristine one
        scores[s.path] = 0.5 if s.content == "good" else 1.5
    out = heldout.pristine_above_by_scene(scores, samples, pristine)
    assert out["per_scene"] == {"bad": 0.0, "good": 1.0}
    # two scenes: a resample holds both (0.5), only the good one (1.0) or only the bad one (0.0)
    assert out["ci95"] == [0.0, 1.0]
    one_scene = [s for s in samples if s.content == "good"]
    assert heldout.pristine_above_by_scene(scores, one_scene, pristine)["ci95"] == [1.0, 1.0]


def test_scene_split_picks_only_that_splits_scenes():
    samples = [SimpleNamespace(content=c, ref_id=c) for c in ("a.jpg", "b.jpg", "c.jpg", "a.jpg")]
    splits = {"test": {"contents": ["a.jpg"]}, "val": {"contents": ["b.jpg", "z.jpg"]}}
    assert [s.content for s in heldout.scenes_of(samples, splits, "test")] == ["a.jpg", "a.jpg"]
    assert [s.content for s in heldout.scenes_of(samples, splits, "val")] == ["b.jpg"]
    assert len(heldout.scenes_of(samples, splits, "all")) == 4
