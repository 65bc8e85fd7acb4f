"""POST /v1/heatmap: where the model sees damage, as a PNG overlay or a JSON grid."""

from enum import StrEnum
from typing import Annotated
from urllib.parse import quote

import anyio
import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from PIL import Image
from pydantic import BaseModel

from service.deps import ModelDep, QueueDep, SettingsDep, State, Uploads, decode_uploads
from service.errors import TooManyImages
from service.openapi import IMAGE_UPLOAD

router = APIRouter(tags=["heatmap"])


class Method(StrEnum):
    gradient = "gradient"
    gradcam = "gradcam"


class HeatmapResponse(BaseModel):
    model: str
    filename: str
    method: Method
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


def _wants_png(request: Request) -> bool:
    return "image/png" in request.headers.get("accept", "").lower()


@router.post(
    "/heatmap",
    openapi_extra=IMAGE_UPLOAD,
    response_model=HeatmapResponse,
    responses={200: {"content": {"image/png": {}}, "description": "overlay PNG when Accept: image/png"}},
)
async def heatmap(
    request: Request,
    uploads: Uploads,
    served: ModelDep,
    queue: QueueDep,
    state: State,
    settings: SettingsDep,
    method: Annotated[Method, Query(description="gradient (default, as in the MetaIQA paper) or gradcam")] = Method.gradient,
):
    """One image -> its score and heat map (`Accept: image/png` -> overlay PNG, else JSON grid)."""
    from metaiqa.inference.heatmap import compute_heatmap, overlay_png

    if len(uploads) != 1:
        raise TooManyImages(f"heatmap takes exactly one image, got {len(uploads)}")
    (item,) = await decode_uploads(uploads, served, state, full_resolution=True)
    scorer = served.scorer
    png = _wants_png(request)

    def work():
        heat = compute_heatmap(scorer.model, item.image, scorer.preprocess, method.value)
        score = float(scorer.score_arrays([item.image])[0])
        return heat, score, (overlay_png(item.image, heat) if png else None)

    heat, score, overlay = await queue.call(work)
    state.metrics.scores.observe(score, model=served.name)
    if png:
        return Response(
            overlay,
            media_type="image/png",
            headers={"X-Score": f"{score:.6f}", "X-Model": quote(served.name), "X-Heatmap-Method": method.value},
        )
    grid = await anyio.to_thread.run_sync(downsample, heat, settings.heatmap_grid)  # the map can be large
    return HeatmapResponse(
        model=served.name,
        filename=item.filename,
        method=method,
        score=round(score, 6),
        width=item.width,
        height=item.height,
        grid=np.round(grid, 4).tolist(),
        grid_height=grid.shape[0],
        grid_width=grid.shape[1],
    )
