"""Fine-tune jobs: adapt a served model to an uploaded labelled set, validate, write, serve.

The protocol is the library's (`metaiqa.meta.finetune.fine_tune`, the few-shot path of
`metaiqa fine-tune --shots`): the epoch count is chosen by content-disjoint k-fold
cross-validation over the training images (`metaiqa.meta.selection`), then a fit on all of
them. Before that, `holdout` of the upload's contents (default 20 %) are set aside
(`few_shot_split`, content-disjoint) and never trained on: the fine-tuned model and its prior
are both scored on them (SROCC/KRCC/PLCC with bootstrap 95 % intervals, `evaluate`).

One job trains at a time, on its own thread and its own copy of the prior (loaded and
hash-verified from the prior's file), so the inference thread keeps serving; every image is
first decoded under the service's decode limits. A job fails (status "failed", never a 500)
on an unreadable image, after `finetune_max_seconds` or at shutdown (both checked after
every epoch). The result is written into the models directory as NAME, NAME.v2, NAME.v3, ...
(never replacing a file; `save_checkpoint` commits the pair atomically, sidecar last) and
the registry re-scans the folder, so it is served at once as `?model=<that name>`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaiqa.service.errors import BadField, ServiceError
from metaiqa.service.jobs import Job, JobStore
from metaiqa.service.models import ModelRegistry, ServedModel, _in_dir, family_of

from metaiqa.data.samples import Sample
from metaiqa.errors import MetaIQAError

log = logging.getLogger("metaiqa.service.finetune")

NAME_RE = re.compile(r"^[a-z0-9-]{1,40}$")
CACHE_BYTES = 1 << 30  # decoded training images kept in memory; beyond it they are decoded per use
MIN_PART = 3  # images needed on each side of the held-out split (evaluate needs 3)
SUMMARY_KEYS = ("rule", "rule_reason", "chosen_epochs", "cv_val_srocc", "cv_zero_shot_srocc", "ranking")


class FineTuneDisabled(ServiceError):
    http_status = 403


class NameTaken(ServiceError):
    """The requested model name belongs to a bundled model or one served from outside models_dir."""

    http_status = 409


class FineTuneAbandoned(MetaIQAError):
    """The job ran past its time limit, or the service is stopping."""


@dataclass(frozen=True)
class FineTuneRequest:
    prior: ServedModel
    name: str
    epochs: int
    seed: int
    holdout: float


# ---------------------------------------------------------------------------- request checks


def check_name(name: Any, state) -> str:
    """A valid family name that does not shadow a bundled model or one served from elsewhere."""
    from metaiqa.models.pretrained import BUNDLED_MODELS

    if not isinstance(name, str) or not NAME_RE.match(name):
        shown = str(name)[:60] if name is not None else "none"
        raise BadField(f"name {shown!r} is invalid: it must match [a-z0-9-]{{1,40}} (lower-case letters, "
                       "digits, '-')")
    if name in BUNDLED_MODELS:
        raise NameTaken(f"name {name!r} is a bundled model and cannot be overwritten; choose another name")
    served = state.models.models.get(name)
    if served is not None and not _in_dir(served.path, state.settings.models_dir):
        raise NameTaken(f"name {name!r} is already served from {served.path.name} outside the models "
                        "directory; choose another name")
    return name


def split_holdout(samples: list[Sample], holdout: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(training images, held-out images), content-disjoint; holdout 0 -> no held-out images."""
    from metaiqa.data.tasks import few_shot_split

    if holdout == 0:
        return list(samples), []
    n_test = max(MIN_PART, round(len(samples) * holdout))
    shots = len(samples) - n_test
    if shots < MIN_PART:
        raise BadField(f"{len(samples)} labelled images are too few to hold {n_test} out for validation and "
                       f"train on at least {MIN_PART}; upload more or send holdout=0")
    try:
        train, _, test = few_shot_split(samples, shots, seed, val_fraction=0.0)
    except MetaIQAError as exc:  # NotEnoughContents: one content holds most images
        raise BadField(f"cannot hold out whole contents for validation: {exc}; send holdout=0") from None
    if len(test) < MIN_PART or len(train) < MIN_PART:
        raise BadField(f"the content-disjoint split leaves {len(train)} training and {len(test)} held-out images "
                       f"(at least {MIN_PART} each are needed); send holdout=0 or more contents")
    return train, test


def next_version(folder: Path, family: str) -> str:
    """NAME when no file of the family exists yet in `folder`, else NAME.v(N+1) after the highest."""
    revisions = [family_of(f.name.split(".safetensors")[0].removesuffix(".json"))
                 for f in Path(folder).glob(f"{family}*") if f.suffix in (".safetensors", ".json")]
    taken = [rev for fam, rev in revisions if fam == family]
    return family if not taken else f"{family}.v{max(taken) + 1}"


# ---------------------------------------------------------------------------- the job


class _Progress:
    """on_epoch callback: publishes progress, enforces the deadline and shutdown."""

    def __init__(self, store: JobStore, job: Job, max_seconds: float):
        self.store, self.job, self.max_seconds = store, job, max_seconds
        self.started = time.monotonic()
        self.done = 0

    def check(self) -> None:
        if self.store.stopping.is_set():
            raise FineTuneAbandoned("the service is stopping; fine-tune abandoned")
        elapsed = time.monotonic() - self.started
        if elapsed > self.max_seconds:
            raise FineTuneAbandoned(f"fine-tune still running after {elapsed:.0f} s, over the limit of "
                                    f"{self.max_seconds:.0f} s (finetune_max_seconds); send fewer images or epochs")

    def stage(self, stage: str, **extra: Any) -> None:
        self.check()
        self.store.set_progress(self.job, {"stage": stage, "elapsed_s": round(time.monotonic() - self.started, 1),
                                           **extra})

    def __call__(self, event: dict[str, Any]) -> None:
        self.done += 1
        where = "final fit on all training images" if event["fold"] == 0 else f"cross-validation fold {event['fold']}"
        self.stage("training", step=where, epoch=event["epoch"], epochs=event["epochs"],
                   epochs_done=self.done, epochs_planned=event["planned"], train_loss=event["train_loss"],
                   val_srocc=event["val_srocc"])


def _read_all(samples: list[Sample], scorer, root: Path) -> None:
    """Decode every image once under the service's limits; the first bad one fails the job, named."""
    from metaiqa.inference.decode import read_file

    for s in samples:
        try:
            read_file(s.path, scorer.limits, check=scorer.check_size)
        except (MetaIQAError, OSError) as exc:
            raise BadField(f"{s.path.relative_to(root)}: {exc}") from None


def _scores(scorer, samples: list[Sample]) -> list[float]:
    out: list[float] = []
    for start in range(0, len(samples), 16):
        out += scorer.score_arrays([scorer.read(s.path).pixels for s in samples[start : start + 16]])
    return out


def _held_out(prior, tuned, test: list[Sample], root: Path, bootstrap: int) -> dict[str, Any] | None:
    """Both models on the held-out images: SROCC/KRCC/PLCC with content-bootstrap 95 % intervals."""
    from metaiqa.evaluation.report import evaluate

    if not test:
        return None
    shown = [dataclasses.replace(s, path=s.path.relative_to(root)) for s in test]

    def one(scorer) -> dict[str, Any]:
        rep = evaluate(_scores(scorer, test), shown, bootstrap=bootstrap)
        return {"overall": rep["overall"], "ci": rep["ci"]}

    return {"n": len(test), "n_contents": len({s.content or str(s.path) for s in test}),
            "fine_tuned": one(tuned), "prior": one(prior)}


def _validation(history: dict[str, Any], held_out: dict[str, Any] | None, n_train: int) -> dict[str, Any]:
    from metaiqa.evaluation.report import to_jsonable

    cv = {k: history.get(k) for k in SUMMARY_KEYS}
    cv["folds"] = len(history.get("folds") or [])
    cv["curve"] = [{"epoch": r["epoch"], "val_srocc_mean": r["val_srocc_mean"]} for r in history.get("curve") or []]
    return to_jsonable({"n_train": n_train, "cross_validation": cv, "held_out": held_out})


def _save(registry: ModelRegistry, req: FineTuneRequest, model, ckpt, job: Job, validation: dict, data: dict) -> str:
    """Write the next version of req.name into models_dir and have the registry serve it."""
    from metaiqa.evaluation.report import to_jsonable
    from metaiqa.models.checkpoint import save_checkpoint

    held = validation.get("held_out") or {}
    tuned = (held.get("fine_tuned") or {}).get("overall") or {}
    metrics = {**{k: validation["cross_validation"][k] for k in ("rule", "chosen_epochs", "cv_val_srocc")},
               "holdout_srocc": tuned.get("srocc"), "holdout_plcc": tuned.get("plcc")}
    folder = Path(registry.settings.models_dir)
    with registry.lock:
        name = next_version(folder, req.name)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            save_checkpoint(folder / f"{name}.safetensors", model, model_name=ckpt.meta["model"],
                            model_kwargs=ckpt.meta.get("model_kwargs", {}), preprocess=ckpt.preprocess,
                            config={"fine_tune": {"epochs": req.epochs, "seed": req.seed, "holdout": req.holdout}},
                            data=to_jsonable(data), metrics=to_jsonable(metrics),
                            extra={"stage": "fine-tune", "validation": validation,
                                   "prior": {"name": req.prior.name, "sha256": ckpt.meta.get("sha256")},
                                   "description": f"fine-tuned from {req.prior.name} on {data['n_train']} uploaded "
                                   f"images (job {job.id})"})
        except OSError as exc:
            raise FineTuneAbandoned(f"cannot write the model into the models directory: {exc}") from None
        changes = registry.rescan()
    if name not in changes["models"]:
        raise FineTuneAbandoned(f"model {name} was written but does not load: {'; '.join(changes['errors'])}")
    log.info("fine-tune job %s: serving %s", job.id, name)
    return name


def make_work(state, req: FineTuneRequest, train: list[Sample], test: list[Sample], root: Path):
    """The job body (runs on the fine-tune job thread)."""
    settings = state.settings

    def work(job: Job) -> None:
        from metaiqa.inference import Scorer
        from metaiqa.meta.finetune import FineTuneConfig, fine_tune
        from metaiqa.meta.images import ImageCache
        from metaiqa.models.checkpoint import load_checkpoint

        job.n_images = len(train) + len(test)
        progress = _Progress(state.finetune_jobs, job, settings.finetune_max_seconds)
        progress.stage("reading images")
        ckpt = load_checkpoint(req.prior.path)  # our own verified copy: the served one stays the inference thread's
        scorer_kw = {"crops": settings.crops, "limits": req.prior.scorer.limits}
        _read_all(train + test, req.prior.scorer, root)
        cfg = FineTuneConfig(shots=max(2, len(train)), epochs=req.epochs, seed=req.seed)
        model, history = fine_tune(ckpt.model, train, cfg, preprocess=ckpt.preprocess, progress=False,
                                   cache=ImageCache(CACHE_BYTES), on_epoch=progress)
        progress.stage("validating on held-out images", n=len(test))
        held = _held_out(Scorer(ckpt.model, ckpt.preprocess, **scorer_kw), Scorer(model, ckpt.preprocess, **scorer_kw),
                         test, root, settings.validate_bootstrap)
        validation = _validation(history, held, len(train))
        progress.stage("writing the model")
        data = {"source": "upload", "job": job.id, "n_train": len(train), "n_held_out": len(test),
                "train_files": sorted(str(s.path.relative_to(root)) for s in train)}
        name = _save(state.registry, req, model, ckpt, job, validation, data)
        job.report = validation
        job.extra["result_model"] = name
        state.finetune_jobs.set_progress(job, {"stage": "done", "elapsed_s": round(time.monotonic() - progress.started, 1)})

    return work


# ---------------------------------------------------------------------------- lifespan


def start(state, reports: Path) -> None:
    """Create the fine-tune job store and the models-dir registry (lifespan start)."""
    s = state.settings
    state.finetune_jobs = JobStore(Path(reports) / "fine-tune", max_pending=s.finetune_max_pending,
                                   keep=s.finetune_keep_jobs,
                                   max_disk_bytes=s.finetune_max_pending * s.validate_max_uncompressed_bytes,
                                   kind="fine-tune")
    state.registry = ModelRegistry(state, s)
    state.registry.start_polling(s.models_poll_s)


def stop(state) -> None:
    if state.registry is not None:
        state.registry.stop()
    if state.finetune_jobs is not None:
        state.finetune_jobs.shutdown()
