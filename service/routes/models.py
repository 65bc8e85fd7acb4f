"""GET /v1/models: what this instance serves, with checkpoint provenance."""

from typing import Any

from fastapi import APIRouter
from metaiqa.service.deps import State

router = APIRouter(tags=["models"])


@router.get("/models")
async def models(state: State) -> dict[str, Any]:
    """Loaded models (name, version, sha256, training summary from the sidecar) and load errors."""
    return {"default": state.models.default, "models": state.models.describe(), "errors": state.models.errors}
