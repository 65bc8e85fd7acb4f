"""The models a service instance serves: loaded once at start-up, chosen per request by name.

Served: the two bundled models (metaiqa-default, metaiqa-prior; unless `bundled_models` is off),
the `model` setting (default: metaiqa-default) and every checkpoint in `models_dir`. Request names
are only ever looked up in this table (never joined to a path), so no name can reach a file
outside the models directory. A model that fails to load (a bundled file missing from this
build, a bad hash, a malformed sidecar) is skipped with a logged reason and reported by
`/readyz` and `/v1/models` instead of stopping the service.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaiqa.service.errors import ModelNotFound, NotReady
from metaiqa.service.settings import Settings

from metaiqa.errors import MetaIQAError

log = logging.getLogger("metaiqa.service.models")

_TRAINING_KEYS = ("method", "meta", "algorithm", "steps", "epochs", "shots", "seed", "lr", "inner_lr", "outer_lr")


@dataclass
class ServedModel:
    name: str
    scorer: Any  # metaiqa.inference.Scorer
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    def describe(self, default: bool) -> dict[str, Any]:
        from metaiqa.models.pretrained import BUNDLED_MODELS, describe_model

        m = self.meta
        config = m.get("config") if isinstance(m.get("config"), dict) else {}
        training = {k: config[k] for k in _TRAINING_KEYS if k in config}
        if isinstance(m.get("training"), dict):
            training.update(m["training"])
        return {
            "name": self.name,
            "default": default,
            "bundled": self.name in BUNDLED_MODELS and self.path.parent.resolve() == _weights_dir(),
            "description": describe_model(self.name, m),
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


def _weights_dir() -> Path:
    from metaiqa.models.pretrained import WEIGHTS_DIR

    return WEIGHTS_DIR.resolve()


def _limits(settings: Settings):
    from metaiqa.inference import DecodeLimits

    return DecodeLimits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels, min_side=settings.min_side)


def _load_one(path: Path, settings: Settings) -> ServedModel:
    from metaiqa.inference import Scorer

    scorer = Scorer.from_checkpoint(path, crops=settings.crops, limits=_limits(settings), device=settings.device)
    return ServedModel(scorer.name, scorer, Path(path), dict(scorer.meta))


def _add(out: ModelSet, path: Path, settings: Settings, what: str) -> ServedModel | None:
    """Load one checkpoint into `out`; a failure or a taken name is logged and recorded, not raised."""
    if any(m.path.resolve() == Path(path).resolve() for m in out.models.values()):
        return next(m for m in out.models.values() if m.path.resolve() == Path(path).resolve())
    try:
        served = _load_one(path, settings)
    except (MetaIQAError, OSError) as exc:
        out.errors.append(f"{what} {Path(path).name}: {exc}")
        log.error("cannot load %s %s: %s", what, path, exc)
        return None
    if served.name in out.models:
        out.errors.append(f"{path}: name {served.name!r} already taken; skipped")
        log.error("skipping %s: name %r already taken", path, served.name)
        return None
    out.models[served.name] = served
    log.info("%s %s loaded from %s", what, served.name, path)
    return served


def _load_bundled(out: ModelSet, settings: Settings) -> None:
    """Both bundled models (a models-dir file of the same name wins); a missing file is skipped."""
    from metaiqa.models.pretrained import BUNDLED_MODELS, ModelNotFound, resolve_checkpoint

    for name in BUNDLED_MODELS:
        try:
            path = resolve_checkpoint(name, settings.models_dir)
        except ModelNotFound as exc:
            out.errors.append(f"bundled model {name!r} skipped: {exc}")
            log.warning("bundled model %s skipped: %s", name, exc)
            continue
        _add(out, path, settings, "bundled model")


def _load_default(out: ModelSet, settings: Settings) -> None:
    """The `model` setting (None: metaiqa-default); if it is unavailable, fall back and say so."""
    from metaiqa.models.pretrained import DEFAULT_MODEL, PRIOR_MODEL, resolve_checkpoint

    spec = settings.model or DEFAULT_MODEL
    try:
        served = _add(out, resolve_checkpoint(spec, settings.models_dir), settings, "default model")
    except (MetaIQAError, OSError) as exc:
        served = None
        if settings.model or not settings.bundled_models:  # else already reported by _load_bundled
            out.errors.append(f"default model {spec!r}: {exc}")
        log.error("cannot load default model %r: %s", spec, exc)
    if served is not None:
        out.default = served.name
    elif out.models:
        out.default = PRIOR_MODEL if PRIOR_MODEL in out.models else sorted(out.models)[0]
        log.warning("default model %r unavailable; requests without ?model= use %s", spec, out.default)


def load_models(settings: Settings) -> ModelSet:
    """The bundled models, the default (settings.model, else metaiqa-default) and every models_dir checkpoint."""
    from metaiqa.models.pretrained import list_checkpoints

    out = ModelSet()
    if settings.bundled_models:
        _load_bundled(out, settings)
    found: list[Path] = []
    if settings.models_dir is not None:
        try:
            found = [Path(p) for p in list_checkpoints(settings.models_dir).values()]
        except (MetaIQAError, OSError) as exc:
            out.errors.append(f"models dir {settings.models_dir}: {exc}")
    _load_default(out, settings)
    for path in found:
        _add(out, path, settings, "model")
    if out.default is None and out.models:
        out.default = sorted(out.models)[0]
    return out
