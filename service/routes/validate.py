"""POST /v1/validate -> a background report job; GET /v1/reports/{id}[/report.html|/scatter.png].

Input: a zip of images plus one CSV `filename,mos[,group]` (multipart field `archive`), or, only
when the operator enabled it, a server-side data-set spec `{"spec": "NAME:PATH"}` under one of
the configured roots. The archive is checked and unpacked before the answer (so traversal and
bombs get their 4xx at once); decoding and scoring run in the job thread.
"""

import dataclasses
import shutil
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse
from metaiqa.service.archive import int_field, read_archive_form, unpack_job_input
from metaiqa.service.deps import ModelDep, SettingsDep, State, _json_body
from metaiqa.service.errors import (
    BadField,
    ReportNotReady,
    UnsupportedMediaType,
    ValidationDisabled,
    error_responses,
)
from metaiqa.service.jobs import ID_PATTERN, Job, score_through_queue
from metaiqa.service.openapi import VALIDATE_UPLOAD
from metaiqa.service.settings import Settings

from metaiqa.data.samples import Sample
from metaiqa.errors import MetaIQAError

router = APIRouter(tags=["validate"])

ReportId = Annotated[str, PathParam(pattern=ID_PATTERN, description="the id POST /v1/validate returned")]
MAX_SPLITS = 100
_HTML_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _server_samples(spec: str, settings: Settings) -> list[Sample]:
    """A data-set spec on the server, confined to the configured roots."""
    from metaiqa.data.formats import parse_data_spec

    if not settings.validate_allow_server_specs:
        raise ValidationDisabled("server-side data-set specs are disabled; upload a zip archive instead")
    if not isinstance(spec, str) or not spec.strip():
        raise BadField("spec must be a non-empty string NAME:PATH or PATH")
    _, _, path_part = spec.rpartition(":") if ":" in spec else ("", "", spec)
    target = Path(path_part).resolve()
    roots = [Path(r).resolve() for r in settings.validate_data_roots]
    if not any(target.is_relative_to(r) for r in roots):
        raise BadField(f"data-set path {path_part[:200]!r} is outside the allowed roots")
    samples = parse_data_spec(spec)
    outside = [s.path for s in samples if not any(Path(s.path).resolve().is_relative_to(r) for r in roots)]
    if outside:
        raise BadField(f"data set lists {len(outside)} image(s) outside the allowed roots, e.g. {outside[0]}")
    if len(samples) > settings.validate_max_files:
        raise BadField(f"data set has {len(samples)} images; the limit is {settings.validate_max_files}")
    return samples


def _make_work(state, served, samples: list[Sample], splits: int, seed: int, input_root: Path | None):
    settings: Settings = state.settings
    chunk = settings.max_batch

    def work(job: Job) -> None:
        from metaiqa.evaluation.report import evaluate, write_report

        job.n_images = len(samples)
        preds: list[float] = []
        for start in range(0, len(samples), chunk):
            part = samples[start : start + chunk]
            images = []
            for s in part:
                try:
                    images.append(served.scorer.read(s.path).pixels)  # as the CLI reads it
                except (MetaIQAError, OSError) as exc:
                    shown = s.path.relative_to(input_root) if input_root else s.path
                    raise BadField(f"{shown}: {exc}") from None
            preds += score_through_queue(state.queue, served.scorer, images)
        shown = samples
        if input_root is not None:  # report file names as the user wrote them, not our temp paths
            shown = [dataclasses.replace(s, path=s.path.relative_to(input_root)) for s in samples]
            shutil.rmtree(input_root, ignore_errors=True)
        report = evaluate(preds, shown, splits=splits, seed=seed, bootstrap=settings.validate_bootstrap)
        report["model"] = served.name
        job.files = write_report(report, preds, shown, job.dir / "report")
        job.report = report

    return work


@router.post("/validate", status_code=202, openapi_extra=VALIDATE_UPLOAD, responses=error_responses(403, 404, 415, 429, 503))
async def validate(request: Request, served: ModelDep, state: State, settings: SettingsDep) -> JSONResponse:
    """Start a validation report; answers 202 with its id (poll GET /v1/reports/{id})."""
    if not settings.validate_enabled:
        raise ValidationDisabled("validation is disabled on this server")
    state.jobs.check_room()  # a full backlog refuses before the (up to 100 MB) archive is received
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        archive, fields = await read_archive_form(request, settings)
        spec = None
    elif ctype.startswith("application/json"):
        fields = await _json_body(request)
        if not isinstance(fields, dict) or "spec" not in fields:
            raise BadField('expected JSON {"spec": "NAME:PATH"}')
        spec, archive = fields["spec"], None
    else:
        raise UnsupportedMediaType("send multipart/form-data with a zip in field 'archive' (or JSON spec if enabled)")
    splits = int_field(fields, "splits", 1, 1, MAX_SPLITS)
    seed = int_field(fields, "seed", 0, 0, 2**31 - 1)
    if spec is not None:
        samples = await anyio.to_thread.run_sync(_server_samples, spec, settings)

    job = state.jobs.reserve(served.name)
    try:
        if archive is not None:
            data = await archive.read()
            samples = await anyio.to_thread.run_sync(unpack_job_input, data, job, state.jobs, settings)
            input_root = (job.dir / "input").resolve()
        else:
            input_root = None
    except BaseException:
        state.jobs.discard(job)  # the folder is removed on the cleanup thread, not here
        raise
    state.jobs.start(job, _make_work(state, served, samples, splits, seed, input_root))
    base = str(request.base_url).rstrip("/")
    return JSONResponse(
        {"id": job.id, "status": job.status, "n_images": len(samples), "links": job.public(base)["links"]},
        status_code=202,
        headers={"Location": f"/v1/reports/{job.id}"},
    )


@router.get("/reports/{report_id}", responses=error_responses(404))
async def report(report_id: ReportId, request: Request, state: State) -> dict[str, Any]:
    """Job status and, when done, the report (metrics, intervals, per-group table)."""
    return state.jobs.get(report_id).public(str(request.base_url).rstrip("/"))


def _file(state, report_id: str, key: str) -> Path:
    job = state.jobs.get(report_id)
    if job.status != "done":
        extra = f": {job.error}" if job.error else ""
        raise ReportNotReady(f"report {report_id} is {job.status}{extra}")
    return job.files[key]


@router.get("/reports/{report_id}/report.html", response_class=FileResponse, responses=error_responses(404, 409))
async def report_html(report_id: ReportId, state: State) -> FileResponse:
    return FileResponse(
        _file(state, report_id, "html"), media_type="text/html", headers={"Content-Security-Policy": _HTML_CSP}
    )


@router.get("/reports/{report_id}/scatter.png", response_class=FileResponse, responses=error_responses(404, 409))
async def report_scatter(report_id: ReportId, state: State) -> FileResponse:
    return FileResponse(_file(state, report_id, "scatter"), media_type="image/png")
