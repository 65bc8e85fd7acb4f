"""The one place where errors become HTTP answers: `{"detail": "..."}`, never a traceback.

MetaIQAError subclasses carry their status in a class attribute `http_status` (decode errors:
413/415/422); those without one are client mistakes -> 422. Anything else is our bug -> 500
with an opaque id that is also in the log, and the service keeps serving.
"""

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from metaiqa.errors import MetaIQAError

log = logging.getLogger("metaiqa.service.errors")

DEFAULT_CLIENT_STATUS = 422


class ServiceError(MetaIQAError):
    """A request the service refuses; subclasses set the status."""

    http_status = 400
    headers: dict[str, str] | None = None


class ModelNotFound(ServiceError):
    http_status = 404


class NotReady(ServiceError):
    http_status = 503


class QueueFull(ServiceError):
    """The inference queue is at capacity: come back later."""

    http_status = 503

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_s)}


class TooManyJobs(ServiceError):
    http_status = 429

    def __init__(self, message: str, retry_after_s: int = 10):
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_s)}


class RequestTooLarge(ServiceError):
    http_status = 413


class TooManyImages(ServiceError):
    http_status = 413


class UnsupportedMediaType(ServiceError):
    http_status = 415


class BadField(ServiceError):
    http_status = 422


class ReportNotFound(ServiceError):
    http_status = 404


class ReportNotReady(ServiceError):
    http_status = 409


class ValidationDisabled(ServiceError):
    http_status = 403


class Unauthorized(ServiceError):
    http_status = 401

    def __init__(self, message: str):
        super().__init__(message)
        self.headers = {"WWW-Authenticate": 'Bearer realm="metaiqa", charset="UTF-8"'}


class ErrorBody(BaseModel):
    """Every error answer, 4xx and 5xx alike (422 included: not FastAPI's list of validation errors)."""

    detail: str = Field(description="what was wrong, in one line (names the field, value or limit)")


_WHEN = {
    400: "malformed request (e.g. an invalid Content-Length header)",
    401: "missing or wrong API key",
    403: "feature disabled on this server",
    404: "unknown model, report or job",
    409: "report not ready yet, or a model name that is taken (bundled or served from elsewhere)",
    413: "body, image or pixel count over a limit, or too many images",
    415: "not an accepted image format or content type",
    422: "invalid field, unreadable or corrupt image, image the model's policy refuses",
    429: "too many validation or fine-tune jobs; see Retry-After",
    503: "saturated (queue full; see Retry-After) or no model loaded",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status documented with the body `error_response` sends."""
    return {s: {"model": ErrorBody, "description": _WHEN[s]} for s in statuses}


def status_of(exc: BaseException) -> int:
    status = getattr(exc, "http_status", None)
    if isinstance(status, int) and 400 <= status < 600:
        return status
    return DEFAULT_CLIENT_STATUS


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _metaiqa_error(request: Request, exc: MetaIQAError) -> JSONResponse:
    status = status_of(exc)
    log.info("%s %s -> %d %s: %s", request.method, request.url.path, status, type(exc).__name__, exc)
    return error_response(status, str(exc), getattr(exc, "headers", None))


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path", "header", "form")]
        where = ".".join(loc) or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(422, _describe_validation(exc))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    ref = uuid.uuid4().hex[:12]
    log.error("unhandled error %s on %s %s", ref, request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal error (reference {ref}); the request was not processed")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(MetaIQAError, _metaiqa_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
