"""Validation jobs: a report per labelled upload, computed in the background, bounded in number.

One job thread (so validation never takes more than one core away from scoring); at most
`max_pending` jobs queued or running (more -> 429); the oldest finished reports beyond
`keep` are deleted with their files. Images are scored through the inference queue, in
micro-batches like any request, so the model is only ever used by the inference thread.
"""

import datetime as _dt
import logging
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaiqa.errors import MetaIQAError
from service.errors import QueueFull, ReportNotFound, TooManyJobs

log = logging.getLogger("service.jobs")

ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@dataclass
class Job:
    id: str
    model: str
    dir: Path
    status: str = "queued"  # queued | running | done | failed
    created: str = field(default_factory=_now)
    finished: str | None = None
    error: str | None = None
    n_images: int | None = None
    report: dict[str, Any] | None = None
    files: dict[str, Path] = field(default_factory=dict)

    def public(self, base: str) -> dict[str, Any]:
        links = {"self": f"{base}/v1/reports/{self.id}"}
        if self.status == "done":
            links.update(html=f"{base}/v1/reports/{self.id}/report.html", scatter=f"{base}/v1/reports/{self.id}/scatter.png")
        return {
            "id": self.id,
            "status": self.status,
            "model": self.model,
            "created": self.created,
            "finished": self.finished,
            "n_images": self.n_images,
            "error": self.error,
            "report": self.report,
            "links": links,
        }


class JobStore:
    def __init__(self, root: Path, *, max_pending: int, keep: int):
        self.root = Path(root)
        self.max_pending, self.keep = max_pending, keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metaiqa-validate")

    def pending(self) -> int:
        return sum(j.status in ("queued", "running") for j in self._jobs.values())

    def reserve(self, model: str) -> Job:
        """A new job slot with its own folder, or TooManyJobs when the backlog is full."""
        with self._lock:
            if self.pending() >= self.max_pending:
                raise TooManyJobs(f"{self.pending()} validation jobs already queued or running (limit {self.max_pending})")
            job_id = str(uuid.uuid4())
            job = Job(job_id, model, self.root / job_id)
            job.dir.mkdir(parents=True)
            self._jobs[job_id] = job
            self._evict()
            return job

    def start(self, job: Job, work: Callable[[Job], None]) -> None:
        self._pool.submit(self._run, job, work)

    def discard(self, job: Job) -> None:
        """Forget a reserved job whose input turned out to be unusable."""
        with self._lock:
            self._jobs.pop(job.id, None)
        shutil.rmtree(job.dir, ignore_errors=True)

    def _run(self, job: Job, work: Callable[[Job], None]) -> None:
        job.status = "running"
        try:
            work(job)
            job.status = "done"
        except MetaIQAError as exc:
            job.status, job.error = "failed", str(exc)
            log.info("validation job %s failed: %s", job.id, exc)
        except Exception as exc:  # noqa: BLE001  a bug must not kill the job thread
            job.status, job.error = "failed", f"internal error ({type(exc).__name__})"
            log.exception("validation job %s crashed", job.id)
        finally:
            job.finished = _now()
            with self._lock:
                self._evict()

    def _evict(self) -> None:
        finished = [j for j in self._jobs.values() if j.status in ("done", "failed")]
        for job in finished[: max(0, len(finished) - self.keep)]:
            self._jobs.pop(job.id, None)
            shutil.rmtree(job.dir, ignore_errors=True)

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise ReportNotFound(f"no report with id {job_id!r} (unknown, or dropped after newer reports)")
        return job

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class ServiceStopping(MetaIQAError):
    http_status = 503


def score_through_queue(queue, scorer, images: list, retry_s: float = 0.05) -> list[float]:
    """Score from a non-event-loop thread via the inference queue, waiting while it is full."""
    while True:
        if not queue.alive:
            raise ServiceStopping("the service is stopping; validation abandoned")
        try:
            futures = queue.submit_scores(scorer, images)
            break
        except QueueFull:
            time.sleep(retry_s)
    return [float(f.result()) for f in futures]
