"""Scorer: batching, crops, policies, per-file errors, checkpoints, import hygiene."""

import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from metaiqa.data.transforms import apply_policy, to_tensor
from metaiqa.errors import InvalidInput
from metaiqa.inference.decode import DecodeLimits, FileTooLarge, NotAnImage, TruncatedImage
from metaiqa.inference.scorer import Scorer, ScoreResult
from metaiqa.models import create_model, save_checkpoint
from tests.conftest import natural_image

PRE = {"policy": "center_crop", "size": 64}


class Recorder(nn.Module):
    """Wraps a model and records each forward call's batch shape and inference-mode state."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[tuple[int, ...], bool, bool]] = []

    def forward(self, x):
        self.calls.append((tuple(x.shape), torch.is_inference_mode_enabled(), self.training))
        return self.inner(x)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return create_model("metaiqa_tiny")


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def direct(model: nn.Module, image: np.ndarray, preprocess, crops=1) -> float:
    """Reference: score one image by hand, one view at a time."""
    model.eval()
    with torch.no_grad():
        views = apply_policy(to_tensor(image), preprocess, crops)
        return float(np.mean([float(model(v[None])) for v in views]))


def test_scores_in_unit_interval_and_match_unbatched_reference(tiny):
    images = [natural_image(96, seed=s) for s in range(3)] + [natural_image(80, seed=7)]
    scorer = Scorer(tiny, PRE)
    scores = scorer.score_arrays(images)
    assert len(scores) == 4 and all(0.0 <= s <= 1.0 for s in scores)
    ref = [direct(tiny, im, PRE) for im in images]
    np.testing.assert_allclose(scores, ref, atol=1e-5)
    assert len(set(np.round(scores, 6))) > 1  # different images, different scores


def test_one_forward_pass_for_all_views_of_all_images_in_inference_mode(tiny):
    rec = Recorder(tiny).train()
    scorer = Scorer(rec, PRE)
    scorer.score_arrays([natural_image(96, seed=s) for s in range(3)], crops=4)
    assert rec.calls == [((12, 3, 64, 64), True, False)]  # 3 images x 4 crops, inference_mode, eval


def test_crops_average_matches_reference(tiny):
    img = natural_image(128, seed=2)
    scorer = Scorer(tiny, PRE, crops=4)
    s4 = scorer.score_arrays([img])[0]
    assert s4 == pytest.approx(direct(tiny, img, PRE, crops=4), abs=1e-5)
    s1 = scorer.score_arrays([img], crops=1)[0]
    assert s1 == pytest.approx(direct(tiny, img, PRE, crops=1), abs=1e-5)
    assert s1 != pytest.approx(s4, abs=1e-7)  # the crops really differ


def test_native_policy_groups_sizes(tiny):
    rec = Recorder(tiny)
    scorer = Scorer(rec, {"policy": "native"})
    images = [natural_image(64, 1), natural_image(96, 2), natural_image(64, 3)]
    scores = scorer.score_arrays(images)
    assert sorted(c[0] for c in rec.calls) == [(1, 3, 96, 96), (2, 3, 64, 64)]
    np.testing.assert_allclose(scores, [direct(tiny, im, {"policy": "native"}) for im in images], atol=1e-5)


def test_score_bytes_and_paths_agree_with_arrays(tiny, tmp_path):
    images = [natural_image(96, seed=s) for s in range(5)]
    paths = []
    for i, im in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(im).save(paths[-1])
    scorer = Scorer(tiny, PRE)
    ref = scorer.score_arrays(images)
    np.testing.assert_allclose(scorer.score_bytes([png(im) for im in images]), ref, atol=1e-6)
    np.testing.assert_allclose(scorer.score_paths(paths, batch_size=2), ref, atol=1e-6)
    assert scorer.score_arrays([]) == [] and scorer.score_paths([]) == []


def test_safe_variants_report_errors_per_item(tiny, tmp_path):
    good = natural_image(96, seed=4)
    (tmp_path / "good.png").write_bytes(png(good))
    (tmp_path / "text.png").write_bytes(b"not an image")
    blob = png(natural_image(128, seed=5))
    (tmp_path / "cut.png").write_bytes(blob[: len(blob) // 2])
    paths = [tmp_path / "good.png", tmp_path / "text.png", tmp_path / "missing.png", tmp_path / "cut.png"]
    scorer = Scorer(tiny, PRE)
    seen = []
    res = scorer.score_paths_safe(paths, batch_size=3, progress=seen.append)
    assert seen == [3, 1]
    assert isinstance(res[0], ScoreResult) and (res[0].width, res[0].height) == (96, 96)
    assert res[0].score == pytest.approx(scorer.score_arrays([good])[0], abs=1e-6)
    assert isinstance(res[1], NotAnImage)
    assert isinstance(res[2], FileNotFoundError)
    assert isinstance(res[3], TruncatedImage)
    with pytest.raises(NotAnImage):
        scorer.score_paths(paths)
    res = scorer.score_bytes_safe([b"x" * 100, png(good)])
    assert isinstance(res[0], NotAnImage) and isinstance(res[1], ScoreResult)


def test_limits_apply_to_bytes(tiny):
    scorer = Scorer(tiny, PRE, limits=DecodeLimits(max_bytes=100))
    with pytest.raises(FileTooLarge):
        scorer.score_bytes([png(natural_image(64))])


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_crops_rejected(tiny, bad):
    with pytest.raises(InvalidInput, match="crops"):
        Scorer(tiny, PRE, crops=bad)
    with pytest.raises(InvalidInput, match="crops"):
        Scorer(tiny, PRE).score_arrays([natural_image(64)], crops=bad)


def test_bad_arrays_rejected(tiny):
    scorer = Scorer(tiny, PRE)
    with pytest.raises(InvalidInput, match="float"):
        scorer.score_arrays([natural_image(64).astype(np.float32) / 255])
    with pytest.raises(InvalidInput, match="shape"):
        scorer.score_arrays([np.zeros((64, 64), np.uint8)])


def test_from_checkpoint_uses_sidecar(tiny, tmp_path):
    tiny.eval()
    pre = {"policy": "resize", "size": 48}
    path = save_checkpoint(tmp_path / "m.safetensors", tiny, model_name="metaiqa_tiny", preprocess=pre)
    scorer = Scorer.from_checkpoint(path)
    assert scorer.name == "m" and scorer.preprocess == pre and scorer.meta["model"] == "metaiqa_tiny"
    img = natural_image(96, seed=9)
    assert scorer.score_arrays([img])[0] == pytest.approx(direct(tiny, img, pre), abs=1e-6)
    assert Scorer.from_checkpoint(path, name="x", crops=2).name == "x"


def test_threads_left_alone_unless_given(tiny):
    before = torch.get_num_threads()
    Scorer(tiny, PRE)
    assert torch.get_num_threads() == before
    Scorer(tiny, PRE, threads=1)
    assert torch.get_num_threads() == 1


def test_import_does_not_pull_training_piq_or_matplotlib():
    code = (
        "import sys, metaiqa.inference.scorer, metaiqa.inference.heatmap, metaiqa.models.pretrained\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('piq', 'matplotlib', 'service')\n"
        "       or m.startswith(('metaiqa.meta', 'metaiqa.cli', 'metaiqa.data.synth', 'metaiqa.data.tasks',\n"
        "                        'metaiqa.labels', 'metaiqa.distortions', 'metaiqa.evaluation'))]\n"
        "print(','.join(sorted(bad)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


# --- metaiqa.models.pretrained: where checkpoints come from ---------------------------------


def _ckpt(tmp_path, name):
    return save_checkpoint(tmp_path / f"{name}.safetensors", create_model("metaiqa_tiny"), model_name="metaiqa_tiny")


def test_bundled_names_and_clear_error_when_one_is_missing(tmp_path, monkeypatch):
    from metaiqa.models import pretrained
    from metaiqa.models.pretrained import (
        BUNDLED_MODELS,
        DEFAULT_MODEL,
        PRIOR_MODEL,
        ModelNotFound,
        default_checkpoint_path,
        resolve_checkpoint,
    )

    assert BUNDLED_MODELS == (DEFAULT_MODEL, PRIOR_MODEL) == ("metaiqa-default", "metaiqa-prior")
    assert default_checkpoint_path().name == "metaiqa-default.safetensors"
    assert default_checkpoint_path(PRIOR_MODEL).name == "metaiqa-prior.safetensors"
    # a build without the default file: both specs of the default fail, naming what exists instead
    weights = tmp_path / "weights"
    _ckpt(weights, PRIOR_MODEL)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights)
    assert resolve_checkpoint(PRIOR_MODEL) == weights / "metaiqa-prior.safetensors"
    for spec in (None, DEFAULT_MODEL):
        with pytest.raises(ModelNotFound, match="no default model.*not bundled.*--model metaiqa-prior") as err:
            resolve_checkpoint(spec)
        assert err.value.available == [PRIOR_MODEL]


def test_describe_model_prefers_the_sidecar():
    from metaiqa.models.pretrained import BUNDLED_DESCRIPTIONS, PRIOR_MODEL, describe_model

    assert describe_model(PRIOR_MODEL, {"note": "old note"}) == BUNDLED_DESCRIPTIONS[PRIOR_MODEL]
    assert describe_model(PRIOR_MODEL, {"description": " own words "}) == "own words"
    assert describe_model("shop-v2", {"note": "for the shop"}) == "for the shop"
    assert describe_model("shop-v2", {}) is None


def test_resolve_names_and_paths(tmp_path, monkeypatch):
    from metaiqa.models.pretrained import BUNDLED_MODELS, ModelNotFound, list_checkpoints, resolve_checkpoint

    models = tmp_path / "models"
    a = _ckpt(models, "alpha")
    b = _ckpt(models, "beta.v2")
    (models / "orphan.safetensors").write_bytes(b"x")  # no sidecar: not listed
    assert list_checkpoints(models) == {"alpha": a, "beta.v2": b}
    assert list_checkpoints(tmp_path / "nowhere") == {} and list_checkpoints(None) == {}
    assert resolve_checkpoint("alpha", models) == a
    assert resolve_checkpoint("beta.v2", models) == b
    assert resolve_checkpoint(str(a)) == a  # a path
    assert resolve_checkpoint(str(a.with_suffix(".json"))) == a  # its sidecar
    monkeypatch.chdir(models)
    assert resolve_checkpoint("alpha") == a  # "alpha" -> ./alpha.safetensors
    with pytest.raises(ModelNotFound, match="'gamma'.*available: (metaiqa-default, )?metaiqa-prior, alpha, beta.v2") as err:
        resolve_checkpoint("gamma", models)
    assert err.value.available[-2:] == ["alpha", "beta.v2"]
    assert set(err.value.available[:-2]) <= set(BUNDLED_MODELS)  # the bundled models that are present
    outside = _ckpt(tmp_path, "outside")
    assert resolve_checkpoint(str(outside), models) == outside
    for bad in ("../outside", str(outside), "/etc/passwd", ".hidden"):
        with pytest.raises(ModelNotFound):
            resolve_checkpoint(bad, models, allow_paths=False)
    with pytest.raises(ModelNotFound, match="invalid model name"):
        resolve_checkpoint("../outside", models, allow_paths=False)


def test_scorer_from_resolved_name(tmp_path):
    from metaiqa.models.pretrained import resolve_checkpoint

    _ckpt(tmp_path, "m1")
    scorer = Scorer.from_checkpoint(resolve_checkpoint("m1", tmp_path))
    assert scorer.name == "m1" and 0 <= scorer.score_arrays([natural_image(64)])[0] <= 1
