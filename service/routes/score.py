"""POST /v1/score: one or more images -> a quality score each (higher is better, in [0, 1])."""

import time

from fastapi import APIRouter, Depends
from metaiqa.service.deps import ModelDep, QueueDep, State, Uploads, admit, decode_uploads
from metaiqa.service.errors import error_responses
from metaiqa.service.openapi import IMAGE_UPLOAD
from pydantic import BaseModel

router = APIRouter(tags=["score"])


class ScoreItem(BaseModel):
    filename: str
    score: float
    width: int
    height: int
    latency_ms: float


class ScoreResponse(BaseModel):
    model: str
    results: list[ScoreItem]


async def score_uploads(uploads, served, queue, state, *, raw: bool = False) -> list:
    """Decode + score through the batching queue; latency is per image, decode to result.

    Items carry the score rounded to 6 decimals; `raw=True` gives [(item, unrounded score)]
    for callers that compare against a threshold.
    """
    start = time.perf_counter()
    decoded = await decode_uploads(uploads, served, state)
    decode_s = time.perf_counter() - start
    scored = await queue.scores(served.scorer, [d.image for d in decoded])
    items = [
        ScoreItem(
            filename=d.filename,
            score=round(s, 6),
            width=d.width,
            height=d.height,
            latency_ms=round((decode_s + wait) * 1000, 2),
        )
        for d, (s, wait) in zip(decoded, scored, strict=True)
    ]
    return list(zip(items, (s for s, _ in scored), strict=True)) if raw else items


@router.post(
    "/score",
    dependencies=[Depends(admit)],
    response_model=ScoreResponse,
    openapi_extra=IMAGE_UPLOAD,
    responses=error_responses(404, 415, 503),
)
async def score(uploads: Uploads, served: ModelDep, queue: QueueDep, state: State) -> ScoreResponse:
    """Score images sent as multipart field `image` (repeatable) or JSON `{"images": [{filename, data}]}`."""
    return ScoreResponse(model=served.name, results=await score_uploads(uploads, served, queue, state))
