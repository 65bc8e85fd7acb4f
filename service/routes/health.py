"""Liveness, readiness and Prometheus metrics (outside /v1, never behind the API key)."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from metaiqa.service.deps import State
from metaiqa.service.errors import error_responses

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers (even with no model loaded)."""
    return {"status": "ok"}


@router.get("/readyz", responses=error_responses(503))
async def readyz(state: State):
    """200 when at least one model is loaded and the inference thread runs; else 503 saying why."""
    if not state.models.ready:
        reason = "; ".join(state.models.errors) or "no model configured"
        return JSONResponse({"detail": f"not ready: no model loaded ({reason})"}, status_code=503)
    if state.queue is None or not state.queue.alive:
        return JSONResponse({"detail": "not ready: inference worker is not running"}, status_code=503)
    return {"status": "ready", "default": state.models.default, "models": sorted(state.models.models)}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: State, request: Request) -> Response:
    """Prometheus text format 0.0.4 (OpenMetrics when the Accept header asks for it)."""
    body, content_type = state.metrics.exposition(request.headers.get("accept", ""))
    return Response(body, media_type=content_type)
