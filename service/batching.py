"""Inference off the event loop: a worker thread per lane, a bounded queue, micro-batches.

Requests that arrive together for the same model are scored in one forward pass (up to
`max_batch` images, waiting at most `max_wait_s` for company). The worker only runs forward
passes: each image's views (resize and crops in uint8, float views) are built before queueing,
on the request's side (`scores` runs `scorer.prepare` in a worker thread of the event loop's
pool; `submit_scores` in the calling thread). The service runs two lanes, each an
`InferenceQueue` with its own thread, capacity and intra-op threads: scores, and heatmaps
(plain calls, which register hooks and need gradients), so a score request never waits behind
a heatmap; torch's eager model is safe to run from two threads at once in inference (no
module state is changed). A full queue refuses new work immediately (`QueueFull` -> 503 +
Retry-After) instead of letting latency grow without bound.

Nothing can hang on a dead worker: the worker loop survives any exception (the batch it was
working on gets it), if the thread still ends abnormally every queued future fails with
`InferenceUnavailable` and new work is refused, and every await has a timeout
(`InferenceTimeout`), all 503s.
"""

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
from metaiqa.service.errors import QueueFull, ServiceError

log = logging.getLogger("metaiqa.service.batching")

#: How long a request waits for the inference thread before giving up (a heatmap of the largest
#: allowed image takes seconds; this only bounds waits on a thread that is stuck).
RESULT_TIMEOUT_S = 300.0


class InferenceUnavailable(ServiceError):
    """The inference thread is not running (it died or never started): no request can be served."""

    http_status = 503


class InferenceTimeout(ServiceError):
    """The inference thread did not deliver a result in time."""

    http_status = 503

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_s)}


@dataclass(eq=False)
class _Item:
    future: Future
    scorer: Any = None  # score items: the Scorer; call items: None
    views: Any = None  # score items: the image's float views, from scorer.prepare
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
        result_timeout_s: float = RESULT_TIMEOUT_S,
        name: str = "inference",
        threads: int | None = None,
        nice: int = 0,
    ):
        self.capacity, self.max_batch, self.max_wait_s = capacity, max_batch, max_wait_s
        self.name, self.threads, self.nice = name, threads, nice
        self.admitted = 0  # requests of this lane being received, decoded or served (event loop only)
        self.retry_after_s, self.result_timeout_s = retry_after_s, result_timeout_s
        self._dead: str | None = None  # why the worker thread ended abnormally
        self._on_batch, self._on_reject = on_batch, on_reject
        self._items: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"metaiqa-{self.name}", daemon=True)
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
    def _refuse_unless_room(self, n: int, why: str = "") -> None:
        """(Holding the lock) QueueFull / InferenceUnavailable unless `n` more items fit now."""
        if self._stopping:
            raise QueueFull("the service is shutting down", self.retry_after_s)
        if self._dead is not None:
            raise InferenceUnavailable(f"the inference worker is not running ({self._dead})")
        if len(self._items) + n > self.capacity:
            self.reject(f"inference queue full ({len(self._items)} waiting, capacity {self.capacity}, "
                        f"this request needs {n}){why}; retry later")

    def reject(self, message: str) -> None:
        """Count a refusal (on_reject) and raise QueueFull with Retry-After."""
        if self._on_reject:
            self._on_reject()
        raise QueueFull(message, self.retry_after_s)

    def check_room(self) -> None:
        """Admission before a request's body is read: QueueFull (503 + Retry-After) when the queue
        is already full, so a saturated service refuses without receiving or decoding the upload."""
        with self._cond:
            self._refuse_unless_room(1, ", refused before reading the upload")

    def _put(self, items: list[_Item]) -> None:
        with self._cond:
            self._refuse_unless_room(len(items))
            self._items.extend(items)
            self._cond.notify_all()

    def submit_scores(self, scorer: Any, images: list[np.ndarray]) -> list[Future]:
        """Queue all images of one request, or none of them (raises QueueFull); their views are
        built here, in the calling thread (never call this on the event loop: use `scores`)."""
        with self._cond:
            self._refuse_unless_room(len(images))
        return self.submit_views(scorer, scorer.prepare(images))

    def submit_views(self, scorer: Any, views: list[Any]) -> list[Future]:
        """Queue images already turned into views by `scorer.prepare` (all or none: QueueFull)."""
        items = [_Item(Future(), scorer=scorer, views=v) for v in views]
        self._put(items)
        return [it.future for it in items]

    def submit_call(self, fn: Callable[[], Any]) -> Future:
        item = _Item(Future(), call=fn)
        self._put([item])
        return item.future

    async def scores(self, scorer: Any, images: list[np.ndarray]) -> list[tuple[float, float]]:
        """Await the scores of `images`: [(score, seconds from enqueue to result)].

        The views are built off the event loop and off the inference thread (a worker thread of
        anyio's pool), after a capacity check so a full queue costs no preprocessing.
        """
        with self._cond:
            self._refuse_unless_room(len(images))
        views = await anyio.to_thread.run_sync(scorer.prepare, images)
        futures = self.submit_views(scorer, views)
        done_at: dict[int, float] = {}
        for i, fut in enumerate(futures):
            fut.add_done_callback(lambda _f, i=i: done_at.__setitem__(i, time.perf_counter()))
        start = time.perf_counter()
        results = await self._wait(asyncio.gather(*(asyncio.wrap_future(f) for f in futures)), futures)
        return [(float(s), done_at.get(i, time.perf_counter()) - start) for i, s in enumerate(results)]

    async def call(self, fn: Callable[[], Any]) -> Any:
        future = self.submit_call(fn)
        return await self._wait(asyncio.wrap_future(future), [future])

    async def _wait(self, awaitable, futures: list[Future]) -> Any:
        try:
            return await asyncio.wait_for(awaitable, self.result_timeout_s)
        except TimeoutError:
            for f in futures:
                f.cancel()  # still queued: skipped by the worker; already running: finishes unseen
            raise InferenceTimeout(
                f"no result from the inference worker within {self.result_timeout_s:g} s; retry later",
                self.retry_after_s,
            ) from None

    def wait_results(self, futures: list[Future]) -> list[Any]:
        """Blocking version for worker threads (validation jobs): results, or InferenceTimeout."""
        deadline = time.monotonic() + self.result_timeout_s
        try:
            return [f.result(max(0.0, deadline - time.monotonic())) for f in futures]
        except FutureTimeout:
            for f in futures:
                f.cancel()
            raise InferenceTimeout(f"no result from the inference worker within {self.result_timeout_s:g} s",
                                   self.retry_after_s) from None

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

    def _setup_thread(self) -> None:
        """Per-lane thread settings, applied in the worker thread itself: torch's intra-op thread
        count is per thread (OpenMP), and a Linux nice value is per thread and inherited by the
        OpenMP workers this thread starts."""
        if self.threads is not None:
            import torch

            torch.set_num_threads(int(self.threads))
        if self.nice and hasattr(os, "setpriority"):
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + self.nice)
            except OSError as exc:  # not permitted here (e.g. a negative value without privileges)
                log.warning("%s lane: cannot change thread priority by %+d (%s)", self.name, self.nice, exc)

    def _run(self) -> None:
        batch: list[_Item] = []
        try:
            self._setup_thread()
            while True:
                batch = self._take_batch() or []
                if not batch:
                    return
                try:
                    self._run_batch(batch)
                except Exception as exc:  # a bug here must not end the thread and hang every request
                    log.exception("inference worker: unexpected error; failing this batch and carrying on")
                    self._fail(batch, exc)
        except BaseException as exc:
            self._die(f"{type(exc).__name__}: {exc}", batch)
            raise

    def _run_batch(self, batch: list[_Item]) -> None:
        live = [it for it in batch if it.future.set_running_or_notify_cancel()]
        if not live:
            return
        if live[0].call is not None:
            self._run_call(live[0])
        else:
            self._run_scores(live)

    @staticmethod
    def _fail(items: list[_Item], exc: BaseException) -> None:
        for it in items:
            if not it.future.done():
                try:
                    if it.future.running() or it.future.set_running_or_notify_cancel():
                        it.future.set_exception(exc)
                except Exception:  # InvalidStateError: settled meanwhile
                    pass

    def _die(self, reason: str, current: list[_Item]) -> None:
        """The thread is ending abnormally: refuse new work, fail the current batch and everything queued."""
        with self._cond:
            self._dead = reason
            items, self._items = [*current, *self._items], deque()
        log.error("inference worker died (%s); failing %d waiting item(s)", reason, len(items))
        self._fail(items, InferenceUnavailable(f"the inference worker stopped ({reason})"))

    @staticmethod
    def _run_call(item: _Item) -> None:
        try:
            item.future.set_result(item.call())
        except BaseException as exc:  # delivered to the awaiting request, which maps it
            item.future.set_exception(exc)

    def _run_scores(self, items: list[_Item]) -> None:
        scorer = items[0].scorer
        try:
            scores = scorer.score_views([it.views for it in items])
        except Exception as exc:
            if len(items) == 1:
                items[0].future.set_exception(exc)
                return
            log.warning("batch of %d failed (%s); scoring one by one", len(items), exc)
            for it in items:
                self._run_scores_single(it)
            return
        self._report(scorer, [float(s) for s in scores])  # before the results: a client never sees stale metrics
        for it, s in zip(items, scores, strict=True):
            it.future.set_result(float(s))

    def _run_scores_single(self, item: _Item) -> None:
        try:
            s = float(item.scorer.score_views([item.views])[0])
        except Exception as exc:
            item.future.set_exception(exc)
            return
        self._report(item.scorer, [s])
        item.future.set_result(s)

    def _report(self, scorer: Any, scores: list[float]) -> None:
        if self._on_batch:
            try:
                self._on_batch(scorer, scores)
            except Exception:  # metrics must never break scoring
                log.exception("batch hook failed")
