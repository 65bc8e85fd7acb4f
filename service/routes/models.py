"""GET /v1/models: what this instance serves, with versions and validation figures;
POST /v1/models/reload: re-scan the models directory now."""

from typing import Any

import anyio
from fastapi import APIRouter
from metaiqa.service.deps import State

router = APIRouter(tags=["models"])


@router.get("/models")
async def models(state: State) -> dict[str, Any]:
    """Loaded models (name, family and revision, sha256, training summary and validation figures
    from the sidecar), versions per family (NAME, NAME.v2, ...), and load errors (skipped files)."""
    table = state.models  # one snapshot: a re-scan swaps the whole table
    return {"default": table.default, "models": table.describe(), "versions": table.versions(),
            "errors": table.errors}


@router.post("/models/reload")
async def reload(state: State) -> dict[str, Any]:
    """Re-scan the models directory: new checkpoints are served, changed ones reloaded, vanished
    ones dropped; files that fail verification are skipped and listed in `errors`."""
    if state.registry is None:
        return {"added": [], "reloaded": [], "removed": [], "models": sorted(state.models.models),
                "errors": state.models.errors}
    return await anyio.to_thread.run_sync(state.registry.rescan)
