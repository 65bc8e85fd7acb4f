"""POST /v1/fine-tune -> a background job that adapts a served model and serves the result;
GET /v1/jobs/{id} -> the status of any job (fine-tune or validation).

Input (multipart, same limits, auth and cleanup as POST /v1/validate): field `archive`, a zip
of images plus one CSV `filename,mos[,group][,content]`; fields `name` (required, the new
model's name, [a-z0-9-]{1,40}), `prior` (a served model, default the default model),
`epochs`, `seed`, `holdout` (share of the contents kept out for validation, default 0.2).
The archive is checked, unpacked and its labels read before the answer, so a bad zip, bad
columns or NaN labels get their 4xx at once; training runs in the job (see
`metaiqa.service.finetune_job`). One fine-tune trains at a time; `finetune_max_pending`
(queued + running) more are refused with 429 + Retry-After before the upload is read.
"""

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from metaiqa.service import finetune_job
from metaiqa.service.archive import float_field, int_field, read_archive_form, unpack_job_input
from metaiqa.service.deps import SettingsDep, State
from metaiqa.service.errors import ReportNotFound, TooManyImages, UnsupportedMediaType, error_responses
from metaiqa.service.finetune_job import FineTuneDisabled, FineTuneRequest
from metaiqa.service.jobs import ID_PATTERN
from metaiqa.service.openapi import archive_form

router = APIRouter(tags=["fine-tune"])

JobId = Annotated[str, PathParam(pattern=ID_PATTERN, description="the id POST /v1/fine-tune or /v1/validate returned")]
DEFAULT_HOLDOUT = 0.2
MAX_HOLDOUT = 0.5

FINETUNE_UPLOAD = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": archive_form("filename,mos[,scene][,distortion]", {
                    "name": {"type": "string", "pattern": "^[a-z0-9-]{1,40}$",
                             "description": "new model name; versions NAME, NAME.v2, ..."},
                    "prior": {"type": "string", "description": "served model to start from (default: the default)"},
                    "epochs": {"type": "integer", "minimum": 1},
                    "seed": {"type": "integer", "minimum": 0},
                    "holdout": {"type": "number", "minimum": 0, "maximum": MAX_HOLDOUT},
                }, ["name"]),
            }
        },
    }
}


def _check_enabled(settings) -> None:
    if not settings.finetune_enabled:
        raise FineTuneDisabled("fine-tuning is disabled on this server")
    if settings.models_dir is None:
        raise FineTuneDisabled("fine-tuning needs a models directory to write new models to; the operator "
                               "must set models_dir (metaiqa serve --models-dir DIR)")


def _request(fields: dict[str, Any], state, settings) -> FineTuneRequest:
    name = finetune_job.check_name(fields.get("name"), state)
    prior = state.models.get(str(fields["prior"]) if fields.get("prior") else None)
    epochs = int_field(fields, "epochs", min(settings.finetune_default_epochs, settings.finetune_max_epochs), 1,
                       settings.finetune_max_epochs)
    seed = int_field(fields, "seed", 0, 0, 2**31 - 1)
    holdout = float_field(fields, "holdout", DEFAULT_HOLDOUT, 0.0, MAX_HOLDOUT)
    return FineTuneRequest(prior, name, epochs, seed, holdout)


@router.post("/fine-tune", status_code=202, openapi_extra=FINETUNE_UPLOAD,
             responses=error_responses(403, 404, 409, 415, 429, 503))
async def fine_tune(request: Request, state: State, settings: SettingsDep) -> JSONResponse:
    """Start a fine-tune job; answers 202 with its id (poll GET /v1/jobs/{id})."""
    _check_enabled(settings)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UnsupportedMediaType("send multipart/form-data with a zip in field 'archive' and a field 'name'")
    store = state.finetune_jobs
    store.check_room()  # a full backlog refuses before the (up to validate_max_zip_bytes) archive is received
    archive, fields = await read_archive_form(request, settings)
    req = _request(fields, state, settings)
    job = store.reserve(req.prior.name)
    try:
        samples = await anyio.to_thread.run_sync(unpack_job_input, await archive.read(), job, store, settings)
        if len(samples) > settings.finetune_max_images:
            raise TooManyImages(f"{len(samples)} labelled images; a fine-tune accepts at most "
                                f"{settings.finetune_max_images} (finetune_max_images)")
        train, test = finetune_job.split_holdout(samples, req.holdout, req.seed)
    except BaseException:
        store.discard(job)  # the folder is removed on the cleanup thread, not here
        raise
    job.extra.update(prior=req.prior.name, requested_name=req.name, epochs=req.epochs, seed=req.seed, holdout=req.holdout,
                     result_model=None)
    store.start(job, finetune_job.make_work(state, req, train, test, (job.dir / "input").resolve()))
    base = str(request.base_url).rstrip("/")
    return JSONResponse(
        {"id": job.id, "status": job.status, "prior": req.prior.name, "name": req.name, "n_images": len(samples),
         "n_train": len(train), "n_held_out": len(test), "epochs": req.epochs, "links": job.links(base)},
        status_code=202,
        headers={"Location": f"/v1/jobs/{job.id}"},
    )


@router.get("/jobs/{job_id}", responses=error_responses(404))
async def job_status(job_id: JobId, request: Request, state: State) -> dict[str, Any]:
    """Status of a fine-tune or validation job: progress while it runs; its report, and for a
    fine-tune the name of the model it registered (`result_model`), when done; `error` when failed."""
    for store in (state.finetune_jobs, state.jobs):
        job = store.find(job_id) if store is not None else None
        if job is not None:
            return job.public(str(request.base_url).rstrip("/"))
    raise ReportNotFound(f"no job with id {job_id!r} (unknown, or dropped after newer ones)")
