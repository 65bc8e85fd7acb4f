"""POST /v1/heatmap: where the model sees damage, as a PNG overlay or a JSON grid.

Methods (metaiqa/inference/heatmap.py): `views` (the default for whole-image models): local
view scores on the fixed 0-1 score scale (red = bad, blue = good); `gradient` (the default for
centre-crop models) and `gradcam`: sensitivity maps normalised within the image (relative).
The score answered with a map is the Scorer's score for that image, from the views the map
explains; the PNG carries a colour bar and that score below the image.

Heatmaps run in their own lane (`state.heatmaps`: own thread, queue and intra-op threads,
admitted up to `max_pending_heatmaps` requests, else 503 + Retry-After before the upload is
read), so /v1/score never waits behind one.
"""

from collections.abc import AsyncIterator
from enum import StrEnum
from typing import Annotated
from urllib.parse import quote

import anyio
import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from metaiqa.service.deps import ModelDep, SettingsDep, State, Uploads, admission, decode_uploads
from metaiqa.service.errors import TooManyImages, error_responses
from metaiqa.service.openapi import IMAGE_UPLOAD
from PIL import Image
from pydantic import BaseModel

router = APIRouter(tags=["heatmap"])


class Method(StrEnum):
    views = "views"
    gradient = "gradient"
    gradcam = "gradcam"


class Scale(StrEnum):
    absolute = "absolute"
    relative = "relative"


METHOD_HELP = (
    "views (local scores on the fixed 0-1 scale; default for whole-image models), gradient "
    "(|d score/d pixel|, relative; default for centre-crop models) or gradcam (coarse, relative)"
)


class HeatmapResponse(BaseModel):
    model: str
    filename: str
    method: Method
    scale: Scale
    legend: str
    views: int
    score: float
    width: int
    height: int
    grid: list[list[float]]
    grid_width: int
    grid_height: int


def downsample(heat: np.ndarray, long_side: int) -> np.ndarray:
    """Box-average a HxW map so its longer side is at most `long_side` (keeps the aspect ratio)."""
    h, w = heat.shape
    scale = min(1.0, long_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray(np.asarray(heat, dtype=np.float32), mode="F")
    return np.asarray(img.resize(size, Image.Resampling.BOX), dtype=np.float32)


async def admit_heatmap(state: State) -> AsyncIterator[None]:
    """Admission to the heatmap lane, before the body is read: at most `max_pending_heatmaps`
    heatmap requests at once (received, decoded, queued or computed); more -> 503 + Retry-After."""
    lane, limit = state.heatmaps, state.settings.max_pending_heatmaps
    if lane is None:
        yield
        return
    with admission(lane, lane, limit, "heatmap", f"max_pending_heatmaps = {limit}"):
        yield


def _wants_png(request: Request) -> bool:
    return "image/png" in request.headers.get("accept", "").lower()


@router.post(
    "/heatmap",
    dependencies=[Depends(admit_heatmap)],
    openapi_extra=IMAGE_UPLOAD,
    response_model=HeatmapResponse,
    responses={
        200: {"content": {"image/png": {}}, "description": "overlay PNG when Accept: image/png"},
        **error_responses(404, 415, 503),
    },
)
async def heatmap(
    request: Request,
    uploads: Uploads,
    served: ModelDep,
    state: State,
    settings: SettingsDep,
    method: Annotated[Method | None, Query(description=METHOD_HELP)] = None,
):
    """One image -> its score and heat map (`Accept: image/png` -> overlay PNG, else JSON grid)."""
    from metaiqa.inference.heatmap import explain, overlay_png

    if len(uploads) != 1:
        raise TooManyImages(f"heatmap takes exactly one image, got {len(uploads)}")
    (item,) = await decode_uploads(uploads, served, state, full_resolution=True)
    scorer = served.scorer
    png = _wants_png(request)

    def work():
        res = explain(scorer.model, item.image, scorer.preprocess, method, crops=scorer.crops)
        # the map is drawn by the float32 torch model; the score shown with it comes from the backend
        # /v1/score uses (e.g. int8, within 0.01 of the map's own forward pass), so the two agree
        score = res.score if scorer.backend.name == "torch" else scorer.score_arrays([item.image])[0]
        return res, score, (overlay_png(item.image, res.heat, method=res.method, score=score) if png else None)

    res, score, overlay = await state.heatmaps.call(work)
    state.metrics.scores.observe(score, model=served.name)
    if png:
        headers = {"X-Score": f"{score:.6f}", "X-Model": quote(served.name), "X-Heatmap-Method": res.method,
                   "X-Heatmap-Scale": res.scale, "X-Heatmap-Views": str(res.views)}  # fmt: skip
        return Response(overlay, media_type="image/png", headers=headers)
    grid = await anyio.to_thread.run_sync(downsample, res.heat, settings.heatmap_grid)  # the map can be large
    return HeatmapResponse(
        model=served.name,
        filename=item.filename,
        method=Method(res.method),
        scale=Scale(res.scale),
        legend=res.legend,
        views=res.views,
        score=round(score, 6),
        width=item.width,
        height=item.height,
        grid=np.round(grid, 4).tolist(),
        grid_height=grid.shape[0],
        grid_width=grid.shape[1],
    )
