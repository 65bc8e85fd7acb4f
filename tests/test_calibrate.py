"""Threshold choice (pure maths) and `metaiqa calibrate GOOD_DIR [BAD_DIR]` with a tiny model."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from metaiqa.cli import main
from metaiqa.errors import InvalidInput
from metaiqa.evaluation.threshold import (
    BadScores,
    balanced_threshold,
    gate_rates,
    percentile_threshold,
    suggest_threshold,
)
from metaiqa.models import create_model, save_checkpoint
from tests.conftest import natural_image

# --- pure maths ------------------------------------------------------------------------------


def test_percentile_threshold_is_rounded_down():
    good = np.linspace(0.1, 1.0, 10)
    t = percentile_threshold(good, 5)
    assert t == pytest.approx(0.145)  # np.percentile: 0.1 + 0.45 * 0.1
    assert gate_rates(good, None, t).good_passed == 9
    assert percentile_threshold([0.123456, 0.9], 0) == 0.1234  # down: the lowest still passes
    assert gate_rates([0.123456, 0.9], None, 0.1234).good_pass_rate == 1.0


def test_balanced_threshold_hand_computed():
    good, bad = [0.6, 0.7, 0.8, 0.9], [0.2, 0.3, 0.65]
    # gaps' midpoints 0.25 .45 .625 .675 .75 .85 -> balanced accuracy best at 0.675: 3/4 pass, 3/3 fail
    t = balanced_threshold(good, bad)
    assert t == 0.675
    r = gate_rates(good, bad, t)
    assert (r.good_passed, r.good_total, r.bad_failed, r.bad_total) == (3, 4, 3, 3)
    assert r.balanced_accuracy == pytest.approx(0.875)


def test_separable_sets_get_the_middle_of_the_gap():
    assert balanced_threshold([0.8, 0.9], [0.1, 0.5]) == 0.65


def test_ties_go_to_the_widest_gap_then_the_lower_threshold():
    # 0.2 and 0.7 both give 0.75; the gap around 0.7 (0.5..0.9) is wider
    assert balanced_threshold([0.3, 0.9], [0.1, 0.5]) == pytest.approx(0.7)
    # 0.2 and 0.8 tie with equal gaps: the lower (more lenient) one
    assert balanced_threshold([0.3, 0.9], [0.1, 0.7]) == pytest.approx(0.2)


def test_rounding_never_moves_the_threshold_across_a_score():
    good, bad = [0.50002], [0.50001]
    t = balanced_threshold(good, bad)
    assert 0.50001 < t <= 0.50002
    assert gate_rates(good, bad, t).balanced_accuracy == 1.0


def test_single_distinct_score():
    assert balanced_threshold([0.4, 0.4], [0.4]) == 0.4


@pytest.mark.parametrize("bad", [[], [0.5, float("nan")], [[0.5, 0.6]]])
def test_unusable_scores_are_refused(bad):
    with pytest.raises(BadScores):
        balanced_threshold([0.5, 0.6], bad)


def test_percentile_out_of_range():
    with pytest.raises(InvalidInput, match="percentile"):
        percentile_threshold([0.5], 100)


def test_suggest_threshold_method_by_inputs():
    good, bad = [0.6, 0.7, 0.8, 0.9], [0.2, 0.3, 0.65]
    only = suggest_threshold(good, percentile=10)
    assert only.method == "percentile" and only.by_balanced_accuracy is None
    assert only.chosen.bad_fail_rate is None and only.chosen.balanced_accuracy is None
    both = suggest_threshold(good, bad, percentile=10)
    assert both.method == "balanced_accuracy" and both.chosen.threshold == 0.675
    assert both.by_percentile.threshold == only.chosen.threshold
    assert both.by_percentile.bad_total == 3
    assert both.chosen.as_dict()["balanced_accuracy"] == pytest.approx(0.875)


# --- the command ----------------------------------------------------------------------------------


@pytest.fixture
def ckpt(tmp_path):
    """A tiny checkpoint whose last layer is scaled up so different images get clearly different scores."""
    torch.manual_seed(0)
    model = create_model("metaiqa_tiny").eval()
    with torch.no_grad():
        model.head.layers[-1].weight.mul_(300.0)
    return save_checkpoint(
        tmp_path / "models" / "tiny.safetensors",
        model,
        model_name="metaiqa_tiny",
        preprocess={"policy": "center_crop", "size": 64},
    )


@pytest.fixture
def folders(tmp_path):
    """good/ (6 smooth images, one in a sub-folder) and bad/ (4 noisy ones + an unreadable file)."""
    good, bad = tmp_path / "good", tmp_path / "bad"
    (good / "sub").mkdir(parents=True)
    bad.mkdir()
    rng = np.random.default_rng(0)
    for s in range(6):
        Image.fromarray(natural_image(96, s)).save(good / ("sub" if s == 5 else ".") / f"g{s}.png")
    for s in range(4):
        noisy = natural_image(96, 10 + s).astype(int) + rng.integers(-80, 80, (96, 96, 3))
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(bad / f"b{s}.png")
    (bad / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (good / "notes.txt").write_text("not an image: not picked up")
    return good, bad


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def test_good_only_json_uses_the_percentile(capsys, ckpt, folders):
    good, _ = folders
    code, out, _ = run(capsys, "-q", "calibrate", good, "--model", ckpt, "--format", "json", "--percentile", "20")
    assert code == 0
    report = json.loads(out)
    assert report["method"] == "percentile" and report["bad"] is None and report["balanced_accuracy"] is None
    scores = [r["score"] for r in report["results"]]
    assert len(scores) == 6 and all(r["set"] == "good" for r in report["results"])
    assert report["threshold"] == report["percentile"]["threshold"]
    # (results are rounded to 6 places, the threshold was computed from the unrounded scores)
    assert report["threshold"] == pytest.approx(percentile_threshold(scores, 20), abs=1.01e-4)
    assert report["good"]["images"] == 6
    assert report["good"]["pass_rate"] == round(gate_rates(scores, None, report["threshold"]).good_pass_rate, 4)
    assert report["model"] == "tiny" and f"--min-score {report['threshold']:g}" in report["gate_command"]


def test_good_and_bad_table_plot_and_an_unreadable_file(capsys, caplog, ckpt, folders, tmp_path):
    good, bad = folders
    plot = tmp_path / "out" / "calib.png"
    code, out, err = run(capsys, "calibrate", good, bad, "--model", ckpt, "--plot", plot)
    assert code == 0
    assert "11/11" in err  # progress bar on stderr
    assert "broken.jpg: not a recognised image" in caplog.text  # reported, and the run went on
    assert "best balanced accuracy (suggested)" in out and "percentile 5 of good" in out
    assert "bad        4 images scored (1 unreadable)" in out
    assert f"histogram: {plot}" in out and "gate with: metaiqa gate PATHS --min-score" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(plot) as im:
        assert im.width > 300


def test_good_and_bad_json_rates_match_the_scores(capsys, ckpt, folders):
    good, bad = folders
    code, out, _ = run(capsys, "-q", "calibrate", good, bad, "--model", ckpt, "--format", "json", "--crops", "2")
    assert code == 0
    report = json.loads(out)
    rows = report["results"]
    assert [r for r in rows if r["error"]] == [
        {"path": str(bad / "broken.jpg"), "set": "bad", "score": None, "error": rows[-1]["error"]}
    ]
    g = [r["score"] for r in rows if r["set"] == "good"]
    b = [r["score"] for r in rows if r["set"] == "bad" and r["score"] is not None]
    t = report["threshold"]
    assert report["method"] == "balanced_accuracy" and t == balanced_threshold(g, b)
    expected = gate_rates(g, b, t)
    got = report["balanced_accuracy"]
    assert (got["good_passed"], got["bad_failed"], got["bad_total"]) == (
        expected.good_passed,
        expected.bad_failed,
        4,
    )
    assert report["bad"]["unreadable"] == 1 and report["crops"] == 2
    assert "--crops 2" in report["gate_command"]


def test_no_readable_image_is_exit_2(capsys, ckpt, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"nope")
    code, _, err = run(capsys, "calibrate", broken, "--model", ckpt)
    assert code == 2 and "no readable image" in err


def test_bad_dir_without_readable_images_is_exit_2(capsys, ckpt, folders, tmp_path):
    good, _ = folders
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"nope")
    code, _, err = run(capsys, "-q", "calibrate", good, broken, "--model", ckpt)
    assert code == 2 and f"no readable image in {broken}" in err


@pytest.mark.parametrize("what", ["missing", "empty", "file"])
def test_folder_problems_are_usage_errors(capsys, ckpt, tmp_path, what):
    target = tmp_path / what
    if what == "empty":
        target.mkdir()
    elif what == "file":
        target.write_text("x")
    code, out, err = run(capsys, "calibrate", target, "--model", ckpt)
    assert code == 2 and out == ""
    assert "GOOD_DIR" in err and ("not a folder" in err or "no image files" in err)


def test_bad_percentile_and_unknown_model(capsys, folders, tmp_path):
    good, _ = folders
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", str(good), "--percentile", "100"])
    assert exit_info.value.code == 2
    capsys.readouterr()
    code, _, err = run(capsys, "calibrate", good, "--model", tmp_path / "nope.safetensors")
    assert code == 2 and "not found" in err
