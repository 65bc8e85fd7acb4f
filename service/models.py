"""The models a service instance serves: loaded once at start-up, chosen per request by name.

Served: the two bundled models (metaiqa-default, metaiqa-prior; unless `bundled_models` is off),
the `model` setting (default: metaiqa-default) and every checkpoint in `models_dir`. Request names
are only ever looked up in this table (never joined to a path), so no name can reach a file
outside the models directory. A model that fails to load (a bundled file missing from this
build, a bad hash, a malformed sidecar) is skipped with a logged reason and reported by
`/readyz` and `/v1/models` instead of stopping the service.

Without a restart (`ModelRegistry`): the models directory is re-scanned when its listing
changes (polled every `models_poll_s`) or on `POST /v1/models/reload`, and after a fine-tune
job writes a checkpoint there. New files are loaded, changed ones reloaded, vanished ones
dropped (the default model excepted), and a file that fails verification is skipped and
listed in `errors`. The table is replaced whole (copy-on-write), so a request sees the old
table or the new one, never half of each.

Versions: fine-tuning NAME writes `NAME.safetensors` (revision 1), then `NAME.v2`, `NAME.v3`,
... (`NAME.vN.safetensors`), never replacing a file; each is served under its own name.
"""

import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaiqa.service.errors import ModelNotFound, NotReady
from metaiqa.service.settings import Settings

from metaiqa.errors import MetaIQAError

log = logging.getLogger("metaiqa.service.models")

#: revision N >= 2 of model family NAME is served as NAME.vN (revision 1 is plain NAME)
_REVISION = re.compile(r"^(?P<family>.+)\.v(?P<rev>[1-9][0-9]*)$")
_TRAINING_KEYS = ("method", "meta", "algorithm", "steps", "epochs", "shots", "seed", "lr", "inner_lr", "outer_lr")


@dataclass
class ServedModel:
    name: str
    scorer: Any  # metaiqa.inference.Scorer
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)
    stamp: tuple | None = None  # the files' (mtime, size) when loaded: a re-scan reloads on change

    def describe(self, default: bool) -> dict[str, Any]:
        from metaiqa.models.pretrained import BUNDLED_MODELS, describe_model

        m = self.meta
        config = m.get("config") if isinstance(m.get("config"), dict) else {}
        training = {k: config[k] for k in _TRAINING_KEYS if k in config}
        if isinstance(m.get("training"), dict):
            training.update(m["training"])
        family, revision = family_of(self.name)
        return {
            "name": self.name,
            "family": family,
            "revision": revision,
            "default": default,
            "bundled": self.name in BUNDLED_MODELS and self.path.parent.resolve() == _weights_dir(),
            "description": describe_model(self.name, m),
            "architecture": m.get("model"),
            "version": m.get("version") or m.get("metaiqa_version"),
            "created": m.get("created"),
            "sha256": m.get("sha256"),
            "dtype": m.get("dtype"),
            "backend": self.scorer.backend.name,  # what runs its scores: torch, onnx or onnx-int8
            "preprocess": self.scorer.preprocess,
            "training": {"summary": training, "data": m.get("data") or {}, "metrics": m.get("metrics") or {}},
            "validation": m.get("validation") if isinstance(m.get("validation"), dict) else None,
        }


def family_of(name: str) -> tuple[str, int]:
    """("shop", 2) for "shop.v2"; (name, 1) for any other name."""
    m = _REVISION.match(name)
    return (m["family"], int(m["rev"])) if m and int(m["rev"]) >= 2 else (name, 1)


@dataclass
class ModelSet:
    models: dict[str, ServedModel] = field(default_factory=dict)
    default: str | None = None
    errors: list[str] = field(default_factory=list)
    base_errors: list[str] = field(default_factory=list)  # those not about models_dir files (kept by a re-scan)

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

    def versions(self) -> dict[str, dict[str, Any]]:
        """{family: {"latest": name, "versions": [names, oldest first]}}."""
        fams: dict[str, list[tuple[int, str]]] = {}
        for name in self.models:
            family, rev = family_of(name)
            fams.setdefault(family, []).append((rev, name))
        return {f: {"latest": max(v)[1], "versions": [n for _, n in sorted(v)]} for f, v in sorted(fams.items())}


def _weights_dir() -> Path:
    from metaiqa.models.pretrained import WEIGHTS_DIR

    return WEIGHTS_DIR.resolve()


def _limits(settings: Settings):
    from metaiqa.inference import DecodeLimits

    return DecodeLimits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels, min_side=settings.min_side)


def file_stamp(path: Path) -> tuple | None:
    """(mtime_ns, size) of a checkpoint's tensor file and sidecar; None when either is gone."""
    from metaiqa.models.checkpoint import checkpoint_paths

    try:
        return tuple((st.st_mtime_ns, st.st_size) for st in (p.stat() for p in checkpoint_paths(path)))
    except OSError:
        return None


def _load_one(path: Path, settings: Settings) -> ServedModel:
    from metaiqa.inference import Scorer

    stamp = file_stamp(Path(path))
    scorer = Scorer.from_checkpoint(path, crops=settings.crops, limits=_limits(settings), device=settings.device,
                                    backend=settings.backend, backend_threads=settings.score_threads)
    return ServedModel(scorer.name, scorer, Path(path), dict(scorer.meta), stamp)


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


def _in_dir(path: Path, folder: Path | None) -> bool:
    return folder is not None and Path(path).resolve().parent == Path(folder).resolve()


def _base_models(settings: Settings) -> ModelSet:
    """The bundled models and the default; everything the models directory does not hold."""
    out = ModelSet()
    if settings.bundled_models:
        _load_bundled(out, settings)
    _load_default(out, settings)
    return out


def _scan_dir(out: ModelSet, settings: Settings, previous: ModelSet | None = None) -> dict[str, list[str]]:
    """Add every models_dir checkpoint to `out`; one loaded before with unchanged files is kept
    as it is (not re-read). Returns the names added and reloaded."""
    from metaiqa.models.pretrained import list_checkpoints

    changes: dict[str, list[str]] = {"added": [], "reloaded": []}
    if settings.models_dir is None:
        return changes
    try:
        found = list_checkpoints(settings.models_dir)
    except (MetaIQAError, OSError) as exc:
        out.errors.append(f"models dir {settings.models_dir}: {exc}")
        log.error("cannot list models dir %s: %s", settings.models_dir, exc)
        return changes
    before = {m.path.resolve(): m for m in (previous.models.values() if previous else ())}
    for path in found.values():
        old = before.get(path.resolve())
        if old is not None and old.stamp is not None and old.stamp == file_stamp(path):
            if old.name not in out.models:
                out.models[old.name] = old
            continue
        served = _add(out, path, settings, "model")
        if served is not None and (old is None or served is not old):
            changes["reloaded" if old is not None else "added"].append(served.name)
    return changes


def load_models(settings: Settings) -> ModelSet:
    """The bundled models, the default (settings.model, else metaiqa-default) and every models_dir checkpoint."""
    out = _base_models(settings)
    out.base_errors = list(out.errors)
    _scan_dir(out, settings)
    if out.default is None and out.models:
        out.default = sorted(out.models)[0]
    return out


class ModelRegistry:
    """Keeps `state.models` in step with the models directory, without a restart.

    `rescan()` builds a new table from the current one: models outside the folder are kept,
    folder files are loaded (new), kept (unchanged (mtime, size)), reloaded (changed) or dropped
    (gone; never the default model, which stays served from memory). A file that does not load
    (a bad hash: tampered or half-copied; a malformed sidecar) is skipped, logged and listed
    in `errors`; the service carries on. Writers hold `lock`; readers just read `state.models`.
    """

    def __init__(self, state: Any, settings: Settings):
        self.state, self.settings = state, settings
        self.lock = threading.RLock()
        self._seen = self._listing()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rescan(self) -> dict[str, Any]:
        """Re-read the models directory now; returns what changed and the current errors."""
        with self.lock:
            self._seen = self._listing()
            old: ModelSet = self.state.models
            folder = self.settings.models_dir
            new = ModelSet(default=old.default, errors=list(old.base_errors), base_errors=list(old.base_errors))
            new.models = {n: m for n, m in old.models.items() if not _in_dir(m.path, folder)}
            changes = _scan_dir(new, self.settings, old)
            if old.default in old.models and old.default not in new.models:
                new.models[old.default] = old.models[old.default]
                new.errors.append(f"default model {old.default}: its file changed or is gone; "
                                  "still serving the copy loaded before")
            if new.default not in new.models:
                new.default = sorted(new.models)[0] if new.models else None
            removed = sorted(set(old.models) - set(new.models))
            for name in removed:
                log.warning("model %s is no longer served (its file is gone or no longer loads)", name)
            self.state.models = new
            return {**changes, "removed": removed, "models": sorted(new.models), "errors": list(new.errors)}

    def _listing(self) -> tuple:
        """What the poller compares: name, mtime and size of every checkpoint file in the folder."""
        folder = self.settings.models_dir
        try:
            files = [f for f in Path(folder).iterdir() if f.suffix in (".safetensors", ".json")] if folder else []
            return tuple(sorted((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files))
        except OSError:
            return ()

    def start_polling(self, every_s: float) -> None:
        """Re-scan whenever the folder's listing changes, checked every `every_s` seconds (0: off)."""
        if every_s <= 0 or self.settings.models_dir is None:
            return
        self._thread = threading.Thread(target=self._poll, args=(every_s,), name="metaiqa-models-poll", daemon=True)
        self._thread.start()

    def _poll(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            if self._listing() != self._seen:
                try:
                    changes = self.rescan()
                except Exception:  # noqa: BLE001  the poller must outlive any one bad scan
                    log.exception("models dir re-scan failed")
                    continue
                log.info("models dir changed: added %s, reloaded %s, removed %s",
                         changes["added"], changes["reloaded"], changes["removed"])

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
