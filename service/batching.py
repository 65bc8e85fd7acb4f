"""Inference off the event loop: one worker thread, a bounded queue, micro-batches.

Requests that arrive together for the same model are scored in one forward pass (up to
`max_batch` images, waiting at most `max_wait_s` for company). Everything else that touches a
model (heatmaps register hooks and need gradients) runs on the same thread as a plain call, so
the model is never used by two threads at once. A full queue refuses new work immediately
(`QueueFull` -> 503 + Retry-After) instead of letting latency grow without bound.
"""

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import QueueFull

log = logging.getLogger("service.batching")


@dataclass(eq=False)
class _Item:
    future: Future
    scorer: Any = None  # score items: the Scorer; call items: None
    image: np.ndarray | None = None
    call: Callable[[], Any] | None = None
    enqueued: float = field(default_factory=time.perf_counter)


BatchHook = Callable[[Any, list[float]], None]


class InferenceQueue:
    """A bounded FIFO served by one daemon thread."""

    def __init__(
        self,
        *,
        capacity: int,
        max_batch: int,
        max_wait_s: float,
        retry_after_s: int = 1,
        on_batch: BatchHook | None = None,
        on_reject: Callable[[], None] | None = None,
    ):
        self.capacity, self.max_batch, self.max_wait_s = capacity, max_batch, max_wait_s
        self.retry_after_s = retry_after_s
        self._on_batch, self._on_reject = on_batch, on_reject
        self._items: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="metaiqa-inference", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish queued work, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def depth(self) -> int:
        return len(self._items)

    # submission --------------------------------------------------------------------------
    def _put(self, items: list[_Item]) -> None:
        with self._cond:
            if self._stopping:
                raise QueueFull("the service is shutting down", self.retry_after_s)
            if len(self._items) + len(items) > self.capacity:
                if self._on_reject:
                    self._on_reject()
                raise QueueFull(
                    f"inference queue full ({len(self._items)} waiting, capacity {self.capacity}, "
                    f"this request needs {len(items)}); retry later",
                    self.retry_after_s,
                )
            self._items.extend(items)
            self._cond.notify_all()

    def submit_scores(self, scorer: Any, images: list[np.ndarray]) -> list[Future]:
        """Queue all images of one request, or none of them (raises QueueFull)."""
        items = [_Item(Future(), scorer=scorer, image=img) for img in images]
        self._put(items)
        return [it.future for it in items]

    def submit_call(self, fn: Callable[[], Any]) -> Future:
        item = _Item(Future(), call=fn)
        self._put([item])
        return item.future

    async def scores(self, scorer: Any, images: list[np.ndarray]) -> list[tuple[float, float]]:
        """Await the scores of `images`: [(score, seconds from enqueue to result)]."""
        futures = self.submit_scores(scorer, images)
        done_at: dict[int, float] = {}
        for i, fut in enumerate(futures):
            fut.add_done_callback(lambda _f, i=i: done_at.__setitem__(i, time.perf_counter()))
        start = time.perf_counter()
        results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        return [(float(s), done_at.get(i, time.perf_counter()) - start) for i, s in enumerate(results)]

    async def call(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.wrap_future(self.submit_call(fn))

    # worker ------------------------------------------------------------------------------
    def _take_batch(self) -> list[_Item] | None:
        """Block for the next unit of work: one call item or up to max_batch score items of one model."""
        with self._cond:
            while not self._items:
                if self._stopping:
                    return None
                self._cond.wait()
            first = self._items.popleft()
            if first.call is not None:
                return [first]
            batch = [first]
            deadline = time.perf_counter() + self.max_wait_s
            while len(batch) < self.max_batch:
                for it in list(self._items):
                    if it.call is None and it.scorer is first.scorer and len(batch) < self.max_batch:
                        self._items.remove(it)
                        batch.append(it)
                remaining = deadline - time.perf_counter()
                if len(batch) >= self.max_batch or remaining <= 0 or self._stopping:
                    break
                self._cond.wait(remaining)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            live = [it for it in batch if it.future.set_running_or_notify_cancel()]
            if not live:
                continue
            if live[0].call is not None:
                self._run_call(live[0])
            else:
                self._run_scores(live)

    @staticmethod
    def _run_call(item: _Item) -> None:
        try:
            item.future.set_result(item.call())
        except BaseException as exc:  # delivered to the awaiting request, which maps it
            item.future.set_exception(exc)

    def _run_scores(self, items: list[_Item]) -> None:
        scorer = items[0].scorer
        try:
            scores = scorer.score_arrays([it.image for it in items])
        except Exception as exc:
            if len(items) == 1:
                items[0].future.set_exception(exc)
                return
            log.warning("batch of %d failed (%s); scoring one by one", len(items), exc)
            for it in items:
                self._run_scores_single(it)
            return
        for it, s in zip(items, scores, strict=True):
            it.future.set_result(float(s))
        self._report(scorer, [float(s) for s in scores])

    def _run_scores_single(self, item: _Item) -> None:
        try:
            s = float(item.scorer.score_arrays([item.image])[0])
        except Exception as exc:
            item.future.set_exception(exc)
            return
        item.future.set_result(s)
        self._report(item.scorer, [s])

    def _report(self, scorer: Any, scores: list[float]) -> None:
        if self._on_batch:
            try:
                self._on_batch(scorer, scores)
            except Exception:  # metrics must never break scoring
                log.exception("batch hook failed")
