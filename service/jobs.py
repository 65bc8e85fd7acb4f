"""Background jobs (validation reports, fine-tunes): computed off the event loop, bounded in number.

One store per kind of job, each with one job thread (so a kind never takes more than one core
away from scoring; fine-tunes in particular run one at a time); at most `max_pending` jobs
queued or running (more -> 429); the oldest finished jobs beyond `keep` are deleted with their
files. Validation scores through the inference queue, in micro-batches like any request, so
a served model is only ever used by the inference thread; a fine-tune trains its own copy.
`stopping` is set at shutdown: long jobs check it (and their deadline) to give up early.

Disk: a job's unpacked input (`JOB/input`) is deleted when the job ends, whatever its outcome,
so only pending jobs hold inputs and finished ones hold just their report. `max_disk_bytes`
caps the total: finished reports are evicted oldest first to stay under it, and a new job is
refused (429) while the jobs still running fill it. Folders are deleted on a cleanup thread,
never on the event loop. Every read or change of the job table holds the lock.
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

from metaiqa.service.errors import QueueFull, ReportNotFound, TooManyJobs

from metaiqa.errors import MetaIQAError

log = logging.getLogger("metaiqa.service.jobs")

ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@dataclass
class Job:
    id: str
    model: str
    dir: Path
    kind: str = "validation"  # validation | fine-tune
    status: str = "queued"  # queued | running | done | failed
    created: str = field(default_factory=_now)
    finished: str | None = None
    error: str | None = None
    n_images: int | None = None
    report: dict[str, Any] | None = None
    files: dict[str, Path] = field(default_factory=dict)
    disk_bytes: int = 0  # what the job's folder holds (input while pending, report when done)
    progress: dict[str, Any] | None = None  # long jobs: what they are doing now
    extra: dict[str, Any] = field(default_factory=dict)  # kind-specific public fields

    def links(self, base: str) -> dict[str, str]:
        if self.kind != "validation":
            return {"self": f"{base}/v1/jobs/{self.id}"}
        links = {"self": f"{base}/v1/reports/{self.id}"}
        if self.status == "done":
            links.update(html=f"{base}/v1/reports/{self.id}/report.html", scatter=f"{base}/v1/reports/{self.id}/scatter.png")
        return links

    def public(self, base: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "model": self.model,
            "created": self.created,
            "finished": self.finished,
            "n_images": self.n_images,
            "error": self.error,
            "progress": self.progress,
            "report": self.report,
            **self.extra,
            "links": self.links(base),
        }


def folder_bytes(path: Path) -> int:
    """Bytes of the regular files under `path` (0 when it is gone)."""
    total = 0
    for f in Path(path).rglob("*"):
        try:
            if f.is_file() and not f.is_symlink():
                total += f.stat().st_size
        except OSError:
            pass
    return total


class JobStore:
    def __init__(self, root: Path, *, max_pending: int, keep: int, max_disk_bytes: int | None = None,
                 kind: str = "validation"):
        self.root = Path(root)
        self.max_pending, self.keep, self.max_disk_bytes = max_pending, keep, max_disk_bytes
        self.kind = kind
        self.noun = "report" if kind == "validation" else f"{kind} job"
        self.stopping = threading.Event()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        prefix = "metaiqa-validate" if kind == "validation" else f"metaiqa-{kind}"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=prefix)
        self._cleaner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metaiqa-cleanup")

    def _pending(self) -> int:  # caller holds the lock
        return sum(j.status in ("queued", "running") for j in self._jobs.values())

    def pending(self) -> int:
        with self._lock:
            return self._pending()

    def disk_bytes(self) -> int:
        with self._lock:
            return sum(j.disk_bytes for j in self._jobs.values())

    def check_room(self) -> None:
        """TooManyJobs (429 + Retry-After) when the backlog is full: called before an upload is read."""
        with self._lock:
            if self._pending() >= self.max_pending:
                raise TooManyJobs(f"{self._pending()} {self.kind} jobs already queued or running "
                                  f"(limit {self.max_pending}); refused before reading the upload")

    def reserve(self, model: str) -> Job:
        """A new job slot with its own folder, or TooManyJobs when the backlog or the disk is full."""
        with self._lock:
            if self._pending() >= self.max_pending:
                raise TooManyJobs(f"{self._pending()} {self.kind} jobs already queued or running (limit {self.max_pending})")
            self._evict()
            busy = sum(j.disk_bytes for j in self._jobs.values() if j.status in ("queued", "running"))
            if self.max_disk_bytes is not None and busy >= self.max_disk_bytes:
                raise TooManyJobs(f"{self.kind} storage is full: {busy} bytes held by queued/running jobs "
                                  f"(limit {self.max_disk_bytes}); retry when they finish")
            job_id = str(uuid.uuid4())
            job = Job(job_id, model, self.root / job_id, kind=self.kind)
            job.dir.mkdir(parents=True)
            self._jobs[job_id] = job
            return job

    def set_input_size(self, job: Job, nbytes: int) -> None:
        with self._lock:
            job.disk_bytes = int(nbytes)

    def start(self, job: Job, work: Callable[[Job], None]) -> None:
        self._pool.submit(self._run, job, work)

    def discard(self, job: Job) -> None:
        """Forget a reserved job whose input turned out to be unusable (its folder goes in the background)."""
        with self._lock:
            self._jobs.pop(job.id, None)
        self._remove(job.dir)

    def _remove(self, path: Path) -> None:
        try:
            self._cleaner.submit(shutil.rmtree, path, ignore_errors=True)
        except RuntimeError:  # cleaner shut down (service stopping): do it here
            shutil.rmtree(path, ignore_errors=True)

    def _set_status(self, job: Job, status: str, error: str | None = None) -> None:
        with self._lock:
            job.status, job.error = status, error

    def set_progress(self, job: Job, progress: dict[str, Any]) -> None:
        with self._lock:
            job.progress = dict(progress)

    def _run(self, job: Job, work: Callable[[Job], None]) -> None:
        self._set_status(job, "running")
        try:
            work(job)
            self._set_status(job, "done")
        except MetaIQAError as exc:
            self._set_status(job, "failed", str(exc))
            log.info("%s job %s failed: %s", self.kind, job.id, exc)
        except Exception as exc:  # noqa: BLE001  a bug must not kill the job thread
            self._set_status(job, "failed", f"internal error ({type(exc).__name__})")
            log.exception("%s job %s crashed", self.kind, job.id)
        finally:
            shutil.rmtree(job.dir / "input", ignore_errors=True)  # whatever the outcome (job thread, not the loop)
            size = folder_bytes(job.dir)
            with self._lock:
                job.finished, job.disk_bytes = _now(), size
                self._evict()

    def _evict(self) -> None:
        """Drop finished jobs beyond `keep`, then oldest first while over the disk limit (lock held)."""
        finished = [j for j in self._jobs.values() if j.status in ("done", "failed")]
        drop = finished[: max(0, len(finished) - self.keep)]
        used = sum(j.disk_bytes for j in self._jobs.values()) - sum(j.disk_bytes for j in drop)
        for job in finished[len(drop):]:
            if self.max_disk_bytes is None or used <= self.max_disk_bytes:
                break
            drop.append(job)
            used -= job.disk_bytes
        for job in drop:
            self._jobs.pop(job.id, None)
            self._remove(job.dir)

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise ReportNotFound(f"no {self.noun} with id {job_id!r} (unknown, or dropped after newer ones)")
        return job

    def find(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def shutdown(self) -> None:
        self.stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._cleaner.shutdown(wait=True)


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
    return [float(v) for v in queue.wait_results(futures)]
