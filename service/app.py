"""FastAPI application factory: `create_app(settings)`; models load once, in the lifespan.

    uvicorn --factory metaiqa.service.app:create_app_from_env        (what `metaiqa serve` runs)

Layout: /v1/* (score, heatmap, gate, validate, reports, models; behind the optional API key),
/healthz, /readyz, /metrics, and the web page at / (static files, no CDN). /docs (Swagger UI) and
/redoc load their JS/CSS from /static-offline-docs (bundled by the fastapi-offline package), so they
work offline too.
"""

import logging
import shutil
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from metaiqa.service import finetune_job
from metaiqa.service.batching import InferenceQueue
from metaiqa.service.deps import ServiceState, require_api_key
from metaiqa.service.errors import error_responses, install_error_handlers
from metaiqa.service.jobs import JobStore
from metaiqa.service.metrics import ServiceMetrics
from metaiqa.service.middleware import LimitAndMeasure
from metaiqa.service.models import ModelSet, load_models
from metaiqa.service.routes import finetune, gate, health, heatmap, models, score, validate
from metaiqa.service.settings import Settings, load_settings

from metaiqa import __version__

log = logging.getLogger("metaiqa.service")

STATIC_DIR = Path(__file__).parent / "static"
VALIDATE_PATH = "/v1/validate"
UPLOAD_JOB_PATHS = (VALIDATE_PATH, "/v1/fine-tune")  # zip uploads: validate_max_zip_bytes
REPORT_DISK_ALLOWANCE = 16 * 2**20


def _start(state: ServiceState, loaded: ModelSet) -> None:
    s = state.settings
    state.models = loaded
    metrics = state.metrics

    def on_batch(scorer, scores: list[float]) -> None:
        metrics.batch_size.observe(len(scores))
        metrics.images.inc(len(scores), model=scorer.name)
        for v in scores:
            metrics.scores.observe(v, model=scorer.name)

    state.queue = InferenceQueue(
        capacity=s.queue_size,
        max_batch=s.max_batch,
        max_wait_s=s.max_wait_ms / 1000.0,
        retry_after_s=s.retry_after_s,
        on_batch=on_batch,
        on_reject=lambda: metrics.rejected.inc(),
        name="score",
        threads=s.score_threads,
    )
    state.queue.start()
    state.heatmaps = InferenceQueue(  # heatmaps in their own lane: scores never wait behind them
        capacity=s.max_pending_heatmaps, max_batch=1, max_wait_s=0.0, retry_after_s=s.retry_after_s,
        on_reject=lambda: metrics.rejected.inc(), name="heatmap", threads=s.heatmap_threads, nice=s.heatmap_nice,
    )  # fmt: skip
    state.heatmaps.start()
    state.decode_limiter = anyio.CapacityLimiter(s.max_concurrent_decodes)


def job_disk_limit(settings: Settings) -> int:
    """Disk cap of validation jobs: the inputs of the jobs allowed to run at once, plus an
    allowance per kept report (report.html embeds the scatter plot; predictions.csv has a
    row per image)."""
    return (settings.validate_max_pending * settings.validate_max_uncompressed_bytes
            + settings.validate_keep_reports * REPORT_DISK_ALLOWANCE)


def _add_gauges(metrics: ServiceMetrics, state: ServiceState) -> None:
    metrics.add_gauge("metaiqa_queue_depth", "images waiting for the inference thread", lambda: state.queue.depth if state.queue else 0)
    metrics.add_gauge("metaiqa_models_loaded", "models loaded", lambda: len(state.models.models))
    metrics.add_gauge(
        "metaiqa_validation_jobs_pending", "validation jobs queued or running", lambda: state.jobs.pending() if state.jobs else 0
    )
    metrics.add_gauge(
        "metaiqa_validation_disk_bytes", "bytes held by validation inputs and kept reports",
        lambda: state.jobs.disk_bytes() if state.jobs else 0,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """A service instance; nothing heavy happens until the lifespan starts (uvicorn / TestClient)."""
    settings = settings or load_settings()
    metrics = ServiceMetrics()
    state = ServiceState(settings=settings, metrics=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.torch_threads is not None:
            import torch

            torch.set_num_threads(settings.torch_threads)
        loaded = await anyio.to_thread.run_sync(load_models, settings)
        for err in loaded.errors:
            log.warning("model load problem: %s", err)
        _start(state, loaded)
        own_reports = settings.reports_dir is None
        reports = Path(tempfile.mkdtemp(prefix="metaiqa-reports-")) if own_reports else Path(settings.reports_dir)
        reports.mkdir(parents=True, exist_ok=True)
        state.jobs = JobStore(reports, max_pending=settings.validate_max_pending, keep=settings.validate_keep_reports,
                              max_disk_bytes=job_disk_limit(settings))
        finetune_job.start(state, reports)  # fine-tune job store + models-dir registry (re-scans, polling)
        log.info("serving models %s (default %s)", sorted(loaded.models), loaded.default)
        try:
            yield
        finally:
            finetune_job.stop(state)
            state.jobs.shutdown()
            state.queue.stop()
            state.heatmaps.stop()
            if own_reports:
                shutil.rmtree(reports, ignore_errors=True)

    app = FastAPIOffline(  # a FastAPI whose /docs and /redoc use locally served assets, no CDN
        title="metaiqa",
        version=__version__,
        description="No-reference image quality scores (MetaIQA), heatmaps, quality gates and validation reports.",
        lifespan=lifespan,
    )
    app.state.service = state
    _add_gauges(metrics, state)
    install_error_handlers(app)

    def body_limit(path: str) -> int:
        return settings.validate_max_zip_bytes if path in UPLOAD_JOB_PATHS else settings.max_upload_bytes

    templates: dict[int, str] = {}  # route object -> full path template, for metric labels

    def template_of(route) -> str | None:
        return templates.get(id(route)) or getattr(route, "path", None)

    def fixed_path(path: str) -> str | None:  # label for requests refused before routing (early 413)
        return path if path in templates.values() and "{" not in path else None

    app.add_middleware(
        LimitAndMeasure, limit_for=body_limit, metrics=metrics, template_of=template_of, fixed_path=fixed_path
    )

    # every /v1 route: a bad Content-Length (400), the API key (401), the streamed body limit (413)
    # and field validation (422) answer {"detail": "..."}; routes add their own statuses
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=error_responses(400, 401, 413, 422))
    for module in (score, heatmap, gate, validate, finetune, models):
        v1.include_router(module.router)
        templates.update({id(r): "/v1" + r.path for r in module.router.routes})
    app.include_router(v1)
    app.include_router(health.router)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:  # browsers (and /docs) ask here whatever the page links
        return FileResponse(STATIC_DIR / "favicon.ico", media_type="image/x-icon")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def create_app_from_env() -> FastAPI:
    """For `uvicorn --factory` (and `metaiqa serve`, which passes its flags as METAIQA_* env)."""
    return create_app(load_settings())
