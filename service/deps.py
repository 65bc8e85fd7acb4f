"""Request dependencies (FastAPI `Depends`): service state, auth, the chosen model, uploaded images.

Tests replace any of these through `app.dependency_overrides`.
"""

import base64
import binascii
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
import numpy as np
from fastapi import Depends, Query, Request
from metaiqa.service.batching import InferenceQueue
from metaiqa.service.errors import BadField, TooManyImages, Unauthorized, UnsupportedMediaType
from metaiqa.service.metrics import ServiceMetrics
from metaiqa.service.models import ModelSet, ServedModel
from metaiqa.service.settings import Settings
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from metaiqa.errors import MetaIQAError

IMAGE_FIELD = "image"
MAX_FILENAME = 255


@dataclass
class ServiceState:
    """Everything the lifespan builds; one per app instance."""

    settings: Settings
    metrics: ServiceMetrics
    models: ModelSet = field(default_factory=ModelSet)
    queue: InferenceQueue | None = None  # the score lane
    heatmaps: InferenceQueue | None = None  # the heatmap lane (own thread, queue and limit)
    jobs: Any = None  # service.jobs.JobStore
    finetune_jobs: Any = None  # service.jobs.JobStore of kind "fine-tune"
    registry: Any = None  # service.models.ModelRegistry: re-scans models_dir, swaps `models`
    decode_limiter: anyio.CapacityLimiter | None = None
    admitted: int = 0  # image requests past `admit` and not finished (event loop only, no lock needed)


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


State = Annotated[ServiceState, Depends(get_state)]


def get_settings(state: State) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def _presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def require_api_key(request: Request, settings: SettingsDep) -> None:
    """Off when no keys are configured; else X-API-Key or `Authorization: Bearer` must match one."""
    if not settings.api_keys:
        return
    key = _presented_key(request)
    if key is None:
        raise Unauthorized("missing API key: send header X-API-Key or Authorization: Bearer <key>")
    if not any(secrets.compare_digest(key.encode(), k.encode()) for k in settings.api_keys):
        raise Unauthorized("invalid API key")


def get_model(
    state: State,
    model: Annotated[str | None, Query(max_length=200, description="model name (GET /v1/models)")] = None,
) -> ServedModel:
    return state.models.get(model)


ModelDep = Annotated[ServedModel, Depends(get_model)]


def get_queue(state: State) -> InferenceQueue:
    return state.queue


QueueDep = Annotated[InferenceQueue, Depends(get_queue)]


@contextmanager
def admission(lane: InferenceQueue | None, holder: Any, limit: int, what: str, limit_text: str) -> Iterator[None]:
    """Admission to a lane before a request's body is read (score and heatmap routes): 503 +
    Retry-After when the lane's queue is full or `limit` requests of this kind are already in
    progress; `holder.admitted` counts them (event loop only, no lock needed)."""
    if lane is not None:
        lane.check_room()
        if holder.admitted >= limit:
            lane.reject(f"{holder.admitted} {what} requests in progress (limit {limit_text}), "
                        "refused before reading the upload; retry later")
    holder.admitted += 1
    try:
        yield
    finally:
        holder.admitted -= 1


async def admit(state: State) -> AsyncIterator[None]:
    """Route dependency of the image routes, resolved before the body is read: under saturation
    (inference queue full, or `max_pending_requests` image requests already being received,
    decoded or scored) answer 503 + Retry-After at once instead of after the upload and decode."""
    limit = state.settings.max_pending_requests or state.settings.queue_size
    with admission(state.queue, state, limit, "image", str(limit)):
        yield


# ---------------------------------------------------------------------------- uploads


@dataclass
class Upload:
    filename: str
    data: bytes


class _JSONImage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filename: str | None = Field(None, max_length=MAX_FILENAME)
    data: str


class _JSONImages(BaseModel):
    model_config = ConfigDict(extra="allow")  # gate/heatmap options may ride along
    images: list[_JSONImage] = Field(min_length=1)


def _clean_name(name: str | None, i: int) -> str:
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:MAX_FILENAME] or f"image{i}"


async def read_form(request: Request, settings: Settings):
    try:
        return await request.form(max_files=settings.max_images_per_request, max_fields=50, max_part_size=64 * 1024)
    except StarletteHTTPException as exc:  # starlette's multipart limits -> our wording/status
        if "files" in str(exc.detail).lower():
            raise TooManyImages(
                f"too many files in one request; the limit is {settings.max_images_per_request}"
            ) from None
        raise BadField(f"malformed multipart body: {exc.detail}") from None


async def request_fields(request: Request, settings: Settings) -> dict[str, Any]:
    """Non-file form fields, or the extra top-level keys of a JSON body."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await read_form(request, settings)
        return {k: v for k, v in form.multi_items() if not isinstance(v, UploadFile)}
    if ctype.startswith("application/json"):
        body = await _json_body(request)
        return {k: v for k, v in body.items() if k != "images"} if isinstance(body, dict) else {}
    return {}


async def _json_body(request: Request) -> Any:
    """The parsed JSON body (once per request); any body json cannot parse is a 422, including
    nesting deeper than the interpreter's recursion limit and integers over 4300 digits."""
    if not hasattr(request.state, "json_body"):
        raw = await request.body()
        try:
            request.state.json_body = json.loads(raw)
        except RecursionError:
            raise BadField("request body is not valid JSON: nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError and int-digit limits are ValueErrors
            raise BadField(f"request body is not valid JSON: {str(exc)[:200]}") from None
    return request.state.json_body


async def read_uploads(request: Request, settings: SettingsDep) -> list[Upload]:
    """Images from multipart field `image` (repeatable) or JSON `{"images": [{"filename", "data"}]}`."""
    ctype = request.headers.get("content-type", "")
    limit = settings.max_images_per_request
    if ctype.startswith("multipart/form-data"):
        form = await read_form(request, settings)
        files = [v for k, v in form.multi_items() if isinstance(v, UploadFile) and k == IMAGE_FIELD]
        if not files:
            names = sorted({k for k, _ in form.multi_items()})
            raise BadField(
                f"no file in multipart field {IMAGE_FIELD!r}"
                + (f" (got fields: {', '.join(names)})" if names else " (the form is empty)")
            )
        return [Upload(_clean_name(f.filename, i), await f.read()) for i, f in enumerate(files)]
    if ctype.startswith("application/json"):
        body = await _json_body(request)
        try:
            parsed = _JSONImages.model_validate(body)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"]) or "body"
            raise BadField(f"invalid JSON body at {where}: {err['msg']}") from None
        if len(parsed.images) > limit:
            raise TooManyImages(f"{len(parsed.images)} images in one request; the limit is {limit}")
        out = []
        for i, img in enumerate(parsed.images):
            try:
                data = base64.b64decode(img.data, validate=True)
            except (binascii.Error, ValueError):
                raise BadField(f"images[{i}].data is not valid base64") from None
            out.append(Upload(_clean_name(img.filename, i), data))
        return out
    raise UnsupportedMediaType(
        f"content type {ctype.split(';')[0] or 'none'!r} not supported; send multipart/form-data "
        f"with field {IMAGE_FIELD!r} or application/json with base64 images"
    )


Uploads = Annotated[list[Upload], Depends(read_uploads)]


@dataclass
class Decoded:
    """One decoded upload: pixels (maybe at reduced scale, see Scorer.decode) and its full size."""

    filename: str
    image: np.ndarray
    width: int
    height: int


def _decode_for(scorer, data: bytes, full_resolution: bool):
    return scorer.decode(data, full_resolution=full_resolution)  # heatmaps draw on the image as uploaded


async def decode_uploads(
    uploads: list[Upload], served: ServedModel, state: ServiceState, *, full_resolution: bool = False
) -> list[Decoded]:
    """Decode off the event loop (at most `max_concurrent_decodes` at once); first bad file -> its 4xx.

    Decoding goes through the model's scorer: its limits, its policy's decode scale (a large JPEG
    may be decoded at reduced scale for the "views" policy unless `full_resolution`), and its
    refusal of images it cannot score (ExtremeAspectRatio -> 422 naming the limit), all before
    the image reaches the inference queue.
    """
    out = []
    for up in uploads:
        try:
            img = await anyio.to_thread.run_sync(
                _decode_for, served.scorer, up.data, full_resolution, limiter=state.decode_limiter
            )
        except MetaIQAError as exc:
            exc.args = (f"{up.filename}: {exc}",)
            raise
        out.append(Decoded(up.filename, img.pixels, img.width, img.height))
    return out
