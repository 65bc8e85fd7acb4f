"""The models a service instance serves: loaded once at start-up, chosen per request by name.

Request names are only ever looked up in this table (never joined to a path), so no name can
reach a file outside the models directory. A model that fails to load is reported by
`/readyz` and `/v1/models` instead of stopping the service.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaiqa.errors import MetaIQAError
from service.errors import ModelNotFound, NotReady
from service.settings import Settings

log = logging.getLogger("service.models")

_TRAINING_KEYS = ("method", "meta", "algorithm", "steps", "epochs", "shots", "seed", "lr", "inner_lr", "outer_lr")


@dataclass
class ServedModel:
    name: str
    scorer: Any  # metaiqa.inference.Scorer
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    def describe(self, default: bool) -> dict[str, Any]:
        m = self.meta
        config = m.get("config") or {}
        training = {k: config[k] for k in _TRAINING_KEYS if k in config}
        if isinstance(m.get("training"), dict):
            training.update(m["training"])
        return {
            "name": self.name,
            "default": default,
            "architecture": m.get("model"),
            "version": m.get("version") or m.get("metaiqa_version"),
            "created": m.get("created"),
            "sha256": m.get("sha256"),
            "dtype": m.get("dtype"),
            "preprocess": self.scorer.preprocess,
            "training": {"summary": training, "data": m.get("data") or {}, "metrics": m.get("metrics") or {}},
        }


@dataclass
class ModelSet:
    models: dict[str, ServedModel] = field(default_factory=dict)
    default: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return bool(self.models)

    def get(self, name: str | None) -> ServedModel:
        if not self.models:
            raise NotReady("no model is loaded: " + ("; ".join(self.errors) or "none configured"))
        key = name or self.default
        if key not in self.models:
            shown = name if len(name or "") <= 80 else name[:80] + "..."
            raise ModelNotFound(f"unknown model {shown!r}; available: {', '.join(sorted(self.models))}")
        return self.models[key]

    def describe(self) -> list[dict[str, Any]]:
        return [m.describe(name == self.default) for name, m in sorted(self.models.items())]


def _limits(settings: Settings):
    from metaiqa.inference import DecodeLimits

    return DecodeLimits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels, min_side=settings.min_side)


def _load_one(path: Path, settings: Settings) -> ServedModel:
    from metaiqa.inference import Scorer

    scorer = Scorer.from_checkpoint(path, crops=settings.crops, limits=_limits(settings), device=settings.device)
    return ServedModel(scorer.name, scorer, Path(path), dict(scorer.meta))


def load_models(settings: Settings) -> ModelSet:
    """The default model (settings.model, else the shipped prior) plus every checkpoint in models_dir."""
    from metaiqa.models.pretrained import DEFAULT_MODEL, list_checkpoints, resolve_checkpoint

    out = ModelSet()
    spec = settings.model or DEFAULT_MODEL
    try:
        path = resolve_checkpoint(spec, settings.models_dir)
        served = _load_one(path, settings)
        out.models[served.name] = served
        out.default = served.name
        log.info("default model %s loaded from %s", served.name, path)
    except (MetaIQAError, OSError) as exc:
        out.errors.append(f"default model {spec!r}: {exc}")
        log.error("cannot load default model %r: %s", spec, exc)

    if settings.models_dir is not None:
        try:
            found = list(list_checkpoints(settings.models_dir).values())
        except (MetaIQAError, OSError) as exc:
            out.errors.append(f"models dir {settings.models_dir}: {exc}")
            found = []
        loaded_paths = {m.path.resolve() for m in out.models.values()}
        for path in found:
            path = Path(path)
            if path.resolve() in loaded_paths:
                continue
            try:
                served = _load_one(path, settings)
            except (MetaIQAError, OSError) as exc:
                out.errors.append(f"{path.name}: {exc}")
                log.error("cannot load %s: %s", path, exc)
                continue
            if served.name in out.models:
                out.errors.append(f"{path}: name {served.name!r} already taken; skipped")
                continue
            out.models[served.name] = served
            log.info("model %s loaded from %s", served.name, path)
    if out.default is None and out.models:
        out.default = sorted(out.models)[0]
    return out
