"""The inference queue: micro-batches, bounded capacity, per-model grouping, failure isolation."""

import asyncio
import threading

import numpy as np
import pytest
from metaiqa.service.batching import InferenceQueue
from metaiqa.service.errors import QueueFull


class RecordingScorer:
    """Scores an image by its mean; records the size of every forward pass."""

    def __init__(self, name="m", fail_on=None):
        self.name, self.batches, self.fail_on = name, [], fail_on

    def prepare(self, images):  # the views of an image: here the image itself
        return list(images)

    def score_views(self, images):
        self.batches.append(len(images))
        if self.fail_on is not None and any(int(im[0, 0, 0]) == self.fail_on for im in images):
            raise ValueError("bad image in batch")
        return [float(im.mean()) / 255 for im in images]


def img(v: int) -> np.ndarray:
    return np.full((4, 4, 3), v, np.uint8)


@pytest.fixture
def gate_queue():
    """A started queue whose worker is parked on a call until `release` is set."""
    q = InferenceQueue(capacity=16, max_batch=4, max_wait_s=0.1)
    q.start()
    release, running = threading.Event(), threading.Event()
    q.submit_call(lambda: (running.set(), release.wait(10)))
    assert running.wait(10)
    yield q, release
    release.set()
    q.stop()


def test_requests_arriving_together_share_forward_passes(gate_queue):
    q, release = gate_queue
    scorer = RecordingScorer()
    futures = [f for v in range(6) for f in q.submit_scores(scorer, [img(v * 10)])]
    release.set()
    results = [f.result(10) for f in futures]
    assert results == pytest.approx([v * 10 / 255 for v in range(6)])
    assert scorer.batches == [4, 2]  # max_batch 4, then the rest


def test_models_are_never_mixed_in_one_batch(gate_queue):
    q, release = gate_queue
    a, b = RecordingScorer("a"), RecordingScorer("b")
    fa = q.submit_scores(a, [img(1), img(2)])
    fb = q.submit_scores(b, [img(3)])
    fa += q.submit_scores(a, [img(4)])
    release.set()
    assert [f.result(10) for f in fa + fb] == pytest.approx([1 / 255, 2 / 255, 4 / 255, 3 / 255])
    assert a.batches == [3] and b.batches == [1]


def test_lone_request_waits_at_most_max_wait():
    q = InferenceQueue(capacity=4, max_batch=4, max_wait_s=0.02)
    q.start()
    try:
        scorer = RecordingScorer()
        (f,) = q.submit_scores(scorer, [img(9)])
        assert f.result(5) == pytest.approx(9 / 255)
        assert scorer.batches == [1]
    finally:
        q.stop()


def test_capacity_is_all_or_nothing_per_request(gate_queue):
    q, release = gate_queue
    scorer = RecordingScorer()
    q.submit_scores(scorer, [img(1)] * 14)
    with pytest.raises(QueueFull, match="capacity 16, this request needs 3"):
        q.submit_scores(scorer, [img(1)] * 3)
    assert q.depth == 14  # nothing of the refused request was queued
    q.submit_scores(scorer, [img(1)] * 2)
    assert q.depth == 16


def test_one_bad_image_does_not_fail_its_batch_mates(gate_queue):
    q, release = gate_queue
    scorer = RecordingScorer(fail_on=66)
    good = q.submit_scores(scorer, [img(1)])
    bad = q.submit_scores(scorer, [img(66)])
    good += q.submit_scores(scorer, [img(2)])
    release.set()
    assert [f.result(10) for f in good] == pytest.approx([1 / 255, 2 / 255])
    with pytest.raises(ValueError, match="bad image"):
        bad[0].result(10)


def test_cancelled_items_are_skipped(gate_queue):
    q, release = gate_queue
    scorer = RecordingScorer()
    (gone,) = q.submit_scores(scorer, [img(5)])
    (kept,) = q.submit_scores(scorer, [img(6)])
    assert gone.cancel()
    release.set()
    assert kept.result(10) == pytest.approx(6 / 255)
    assert scorer.batches == [1]


def test_async_scores_and_batch_hook():
    seen = []
    q = InferenceQueue(capacity=8, max_batch=8, max_wait_s=0.05, on_batch=lambda s, xs: seen.append((s.name, xs)))
    q.start()
    try:
        scorer = RecordingScorer("hooked")

        async def main():
            return await asyncio.gather(q.scores(scorer, [img(10), img(20)]), q.scores(scorer, [img(30)]))

        first, second = asyncio.run(main())
        assert [s for s, _ in first] == pytest.approx([10 / 255, 20 / 255])
        assert all(t >= 0 for _, t in first + second)
        assert sum(len(xs) for _, xs in seen) == 3 and all(name == "hooked" for name, _ in seen)
    finally:
        q.stop()
    assert not q.alive
    with pytest.raises(QueueFull, match="shutting down"):
        q.submit_call(lambda: None)
