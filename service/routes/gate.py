"""POST /v1/gate: pass/fail per image against a threshold, for upload pipelines and CI steps."""

import math
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from metaiqa.service.deps import ModelDep, QueueDep, SettingsDep, State, Uploads, admit, request_fields
from metaiqa.service.errors import BadField, error_responses
from metaiqa.service.openapi import GATE_UPLOAD
from metaiqa.service.routes.score import ScoreItem, score_uploads
from metaiqa.service.settings import Settings
from pydantic import BaseModel

router = APIRouter(tags=["gate"])


class GateItem(ScoreItem):
    passed: bool


class GateResponse(BaseModel):
    model: str
    threshold: float
    policy: str | None
    passed: bool
    failures: int
    results: list[GateItem]


def _short(value) -> str:
    """A value for an error message, bounded (repr/str of a huge integer would itself fail)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<integer of {value.bit_length()} bits>"
    return (value if isinstance(value, str) else repr(value))[:40]


def choose_threshold(threshold, policy, settings: Settings) -> tuple[float, str | None]:
    """An explicit threshold, a named policy from settings, or the configured default."""
    if threshold is not None and policy is not None:
        raise BadField("give either threshold or policy, not both")
    if policy is not None:
        policy = str(policy)
        if policy not in settings.policies:
            raise BadField(f"unknown policy {policy[:80]!r}; configured: {', '.join(sorted(settings.policies)) or 'none'}")
        return settings.policies[policy], policy
    if threshold is None:
        if settings.default_threshold is None:
            raise BadField("no threshold: give threshold (0..1) or policy (" + ", ".join(sorted(settings.policies)) + ")")
        return settings.default_threshold, None
    try:
        t = float(threshold)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond float range
        raise BadField(f"threshold {_short(threshold)!r} is not a number") from None
    if not math.isfinite(t) or not 0.0 <= t <= 1.0:
        raise BadField(f"threshold {t} is outside [0, 1]")
    return t, None


@router.post(
    "/gate",
    dependencies=[Depends(admit)],
    response_model=GateResponse,
    openapi_extra=GATE_UPLOAD,
    responses=error_responses(404, 415, 503),
)
async def gate(
    request: Request,
    uploads: Uploads,
    served: ModelDep,
    queue: QueueDep,
    state: State,
    settings: SettingsDep,
    threshold: Annotated[str | None, Query(description="minimum score to pass, 0..1")] = None,
    policy: Annotated[str | None, Query(description="named threshold from the service settings")] = None,
) -> GateResponse:
    """Pass = score >= threshold. Threshold/policy come from the query, form fields or JSON keys."""
    fields = await request_fields(request, settings)
    threshold = threshold if threshold is not None else fields.get("threshold")
    policy = policy if policy is not None else fields.get("policy")
    t, policy = choose_threshold(threshold, policy, settings)
    scored = await score_uploads(uploads, served, queue, state, raw=True)
    # compare the raw score, as `metaiqa gate` does (the reported one is rounded to 6 decimals)
    results = [GateItem(**item.model_dump(), passed=raw >= t) for item, raw in scored]
    failures = sum(not r.passed for r in results)
    return GateResponse(
        model=served.name, threshold=t, policy=policy, passed=failures == 0, failures=failures, results=results
    )
