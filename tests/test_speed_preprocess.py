"""Issue 11: preprocessing stays uint8 until the views are cut, and happens off the inference thread."""

import asyncio
import io
import threading

import pytest
import torch
from conftest import natural_image
from metaiqa.service.batching import InferenceQueue
from PIL import Image

from metaiqa.data import transforms
from metaiqa.data.transforms import apply_policy, image_views, to_tensor
from metaiqa.inference import Scorer
from metaiqa.models import create_model

VIEWS = {"policy": "views", "scale": 384, "size": 224, "max_views": 16}
CROP = {"policy": "center_crop", "size": 224}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("metaiqa_tiny").eval()


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    """A 4000x3000 JPEG (12 MP), from a small natural image scaled up."""
    img = Image.fromarray(natural_image(300, seed=3)).resize((4000, 3000), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


class FloatSpy:
    """Records the element count of every tensor converted to floating point."""

    def __init__(self, monkeypatch):
        self.sizes: list[int] = []
        real_float, real_to, real_div = torch.Tensor.float, torch.Tensor.to, torch.Tensor.div

        def spy_float(t, *a, **k):
            self.sizes.append(t.numel())
            return real_float(t, *a, **k)

        def spy_to(t, *a, **k):
            if any(x in (torch.float32, torch.float64, torch.float16) for x in (*a, k.get("dtype"))):
                self.sizes.append(t.numel())
            return real_to(t, *a, **k)

        def spy_div(t, *a, **k):  # uint8 / 255 promotes to float
            if not t.is_floating_point():
                self.sizes.append(t.numel())
            return real_div(t, *a, **k)

        monkeypatch.setattr(torch.Tensor, "float", spy_float)
        monkeypatch.setattr(torch.Tensor, "to", spy_to)
        monkeypatch.setattr(torch.Tensor, "div", spy_div)


@pytest.mark.parametrize("pre", [VIEWS, CROP], ids=["views", "center_crop"])
def test_a_12mp_jpeg_is_never_converted_to_float_at_full_size(tiny, big_jpeg, pre, monkeypatch):
    scorer = Scorer(tiny, pre)
    decoded = scorer.decode(big_jpeg)
    assert (decoded.width, decoded.height) == (4000, 3000)
    calls = []
    monkeypatch.setattr(transforms, "to_tensor", lambda *a: calls.append(a) or to_tensor(*a))
    spy = FloatSpy(monkeypatch)
    views = scorer.prepare([decoded.pixels])
    score = scorer.score_views(views)[0]
    assert 0.0 <= score <= 1.0
    assert not calls, "the whole image went through to_tensor"
    full = 4000 * 3000 * 3
    assert spy.sizes, "the spy saw no float conversion at all (it is not watching the right calls)"
    assert max(spy.sizes) <= views[0].numel() < full / 10


@pytest.mark.parametrize("crops", [1, 4])
def test_uint8_center_crops_equal_the_float_path(crops):
    img = natural_image(300, seed=5)[:, :257]
    pre = {"policy": "center_crop", "size": 96}
    assert torch.equal(image_views(img, pre, crops), apply_policy(to_tensor(img), pre, crops))


def test_uint8_resize_is_within_a_grey_level_of_the_float_path():
    img = natural_image(300, seed=6)
    pre = {"policy": "resize", "size": 96}
    fast, ref = image_views(img, pre), apply_policy(to_tensor(img), pre)
    assert fast.shape == ref.shape and fast.dtype == torch.float32
    assert float((fast - ref).abs().max()) <= 1.5 / 255


def test_small_images_still_take_the_upscaling_path():
    img = natural_image(64, seed=7)  # below the crop size: upscaled as before
    pre = {"policy": "center_crop", "size": 96}
    assert torch.equal(image_views(img, pre), apply_policy(to_tensor(img), pre))


def test_the_inference_thread_receives_ready_views(tiny):
    scorer = Scorer(tiny, VIEWS)
    seen: dict[str, list] = {"prepare": [], "score": []}
    real_prepare, real_score = scorer.prepare, scorer.score_views

    def prepare(images, crops=None):
        seen["prepare"].append(threading.current_thread().name)
        return real_prepare(images, crops)

    def score_views(views):
        seen["score"].append((threading.current_thread().name, [type(v) for v in views]))
        return real_score(views)

    scorer.prepare, scorer.score_views = prepare, score_views
    q = InferenceQueue(capacity=8, max_batch=8, max_wait_s=0.01, name="score")
    q.start()
    try:
        images = [natural_image(256, seed=s) for s in range(2)]
        got = asyncio.run(q.scores(scorer, images))
        threaded = q.wait_results(q.submit_scores(scorer, images[:1]))  # a job thread's path
    finally:
        q.stop()
    assert [s for s, _ in got] == pytest.approx(real_score(real_prepare(images)), abs=1e-6)
    assert threaded[0] == pytest.approx(got[0][0], abs=1e-6)
    assert seen["prepare"] and "metaiqa-score" not in seen["prepare"]
    assert seen["score"] and all(name == "metaiqa-score" for name, _ in seen["score"])
    assert all(t is torch.Tensor for _, types in seen["score"] for t in types)


def test_lane_threads_are_set_in_the_worker_thread():
    before = torch.get_num_threads()
    q = InferenceQueue(capacity=2, max_batch=1, max_wait_s=0.0, name="heatmap", threads=1, nice=1)
    q.start()
    try:
        assert q.wait_results([q.submit_call(torch.get_num_threads)]) == [1]
    finally:
        q.stop()
    assert torch.get_num_threads() == before  # the caller's setting is untouched
