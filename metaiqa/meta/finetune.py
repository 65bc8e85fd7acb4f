"""Few-shot adaptation of a quality prior to an unseen distortion or a user's labelled images.

The point of MetaIQA: a meta-learned prior should reach a good model from a few labelled
images. `fine_tune` trains a copy of a model with Adam on random crops + flips (MSE + the
ranking hinge of `metaiqa.meta.losses`: within content for synthetic data with several
levels per content, across images when every image is its own content).

How long to train is the only thing chosen, and it is chosen honestly (see
`metaiqa.meta.selection`): k-fold cross-validation over the shots with content-disjoint
folds picks the epoch count (0 = keep the prior), then a final fit on ALL shots runs that
many epochs. Too few shots to hold any out: a fixed budget (`epochs`), no selection. No data
beyond the shots is ever read. `fine_tune_checkpoint` wraps it for the CLI: load, draw the
shots content-disjointly from the rest, tune, save with the rule and fold curve recorded.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from metaiqa.config import ConfigError, StrictModel, dump_config
from metaiqa.data.samples import DatasetError, Sample
from metaiqa.data.tasks import content_key, reference_key
from metaiqa.data.transforms import image_views, resize_short_side, to_tensor
from metaiqa.errors import InvalidInput
from metaiqa.evaluation import metrics
from metaiqa.meta.images import ImageCache, task_batch
from metaiqa.meta.losses import iqa_loss
from metaiqa.meta.optim import adam_param_groups
from metaiqa.meta.selection import SelectionPlan, choose_epochs, fold_curve, plan_folds

log = logging.getLogger(__name__)

#: Keys of the former early-stopping protocol, with what replaced them.
REMOVED_KEYS = {
    "patience": "the epoch count is now chosen by k-fold cross-validation over the shots (set 'folds')",
    "min_delta": "the epoch count is now chosen by k-fold cross-validation over the shots (set 'folds')",
    "val_fraction": "no share of the shots is held out any more: k-fold cross-validation uses all of them "
    "(set 'folds')",
}


class FineTuneConfig(StrictModel):
    """configs/fine_tune/fewshot.yaml; every key validated, unknown keys are errors."""

    shots: int = Field(50, ge=2, description="labelled images used for adaptation (all of them are trained on)")
    folds: int = Field(4, ge=2, description="k of the content-disjoint k-fold cross-validation choosing the epochs")
    epochs: int = Field(30, ge=1, description="largest epoch count tried by k-fold; the fixed budget with too "
                        "few shots to select")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-4, ge=0.0, description="Adam lr of the backbone")
    head_lr: float = Field(1e-3, ge=0.0, description="Adam lr of the regression head")
    weight_decay: float = Field(1e-4, ge=0.0)
    crop_size: int | None = Field(None, ge=16, description="training crop; None = the checkpoint's size")
    flip: bool = True
    ranking_weight: float = Field(1.0, ge=0.0, description="weight of the ranking hinge (within content, or "
                                  "across images when every image is its own content)")
    ranking_margin: float = Field(0.05, ge=0.0)
    freeze_backbone: bool = False
    batchnorm: Literal["frozen", "train"] = Field(
        "frozen", description="frozen: keep the prior's running statistics (few images estimate them badly)"
    )
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="torch threads; None = leave as is")

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        for key in sorted(set(data) & set(REMOVED_KEYS)) if isinstance(data, dict) else ():
            raise ConfigError(f"fine-tune key {key!r} (got {data[key]!r}) was removed: {REMOVED_KEYS[key]}")
        return data


@dataclass
class FineTuneResult:
    path: Path
    history: dict[str, Any]
    data: dict[str, Any]
    metrics: dict[str, Any]
    #: set when `out` could not be written: (the path asked for, why); `path` is then where the
    #: trained weights were saved instead (see `save_or_rescue`)
    rescued_from: tuple[str, str] | None = None


def save_or_rescue(out: str | Path, model: nn.Module, **save_kw: Any) -> tuple[Path, tuple[str, str] | None]:
    """save_checkpoint to `out`; if that fails with an OSError (folder gone, no permission, a file
    in the way, disk full), save to a fresh folder from `metaiqa.io.rescue_dir` instead so the
    trained weights are not lost. Returns (tensor path, None or (out, reason))."""
    from metaiqa.io import rescue_dir
    from metaiqa.models.checkpoint import checkpoint_paths, save_checkpoint

    try:
        return save_checkpoint(out, model, **save_kw), None
    except OSError as exc:
        reason = f"{type(exc).__name__}: {exc.strerror or exc}"
    target = rescue_dir("fine-tune-") / checkpoint_paths(out)[0].name
    path = save_checkpoint(target, model, **save_kw)
    log.warning("could not write %s (%s); saved the fine-tuned checkpoint to %s instead", out, reason, path)
    return path, (str(out), reason)


# ---------------------------------------------------------------------------- data


def check_samples(samples: Sequence[Sample], what: str) -> None:
    """Non-empty, every label a finite number (a NaN would silently poison the MSE)."""
    if len(samples) == 0:
        raise DatasetError(f"{what}: no labelled images (0 samples)")
    for s in samples:
        try:
            ok = math.isfinite(float(s.mos))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise DatasetError(f"{what}: image {s.path} has no finite MOS label (got {s.mos!r})")


def rank_across_images(samples: Sequence[Sample]) -> bool:
    """True when no reference has two images (each image its own content, e.g. BIQ2021):
    the within-content ranking term would have no pair, so the hinge ranks across images."""
    refs = [reference_key(s) for s in samples]
    return len(set(refs)) == len(refs)


def predict(model: nn.Module, images: Sequence[np.ndarray], preprocess: dict, batch_size: int = 16) -> np.ndarray:
    """Scores as the Scorer computes them (policy views, averaged per image), in eval mode, no grad."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            views = [image_views(im, preprocess, 1) for im in images[start : start + batch_size]]
            if len({tuple(v.shape[1:]) for v in views}) == 1:
                scores = model(torch.cat(views).to(device)).reshape(-1).double().cpu()
                owners = torch.repeat_interleave(torch.arange(len(views)), torch.tensor([v.shape[0] for v in views]))
                sums = torch.zeros(len(views), dtype=torch.float64).index_add_(0, owners, scores)
                out += (sums / torch.bincount(owners, minlength=len(views))).tolist()
            else:
                out += [float(model(v.to(device)).mean()) for v in views]
    model.train(was_training)
    return np.asarray(out, dtype=np.float64)


def _val_metrics(pred: np.ndarray, mos: np.ndarray) -> dict[str, float]:
    ok = pred.size >= 3 and np.ptp(pred) > 0 and np.ptp(mos) > 0
    return {
        "val_srocc": metrics.srocc(pred, mos) if ok else float("nan"),
        "val_plcc": metrics.plcc(pred, mos) if ok else float("nan"),
        "val_mse": float(np.mean((pred - mos) ** 2)) if pred.size else float("nan"),
    }


class _ResizedCache:
    """For the "resize" scoring policy: training crops come from images at the scale the Scorer sees."""

    def __init__(self, cache: ImageCache, size: int):
        self.cache, self.size, self._store = cache, size, {}

    def get(self, path) -> np.ndarray:
        key = str(path)
        if key not in self._store:
            x = resize_short_side(to_tensor(self.cache.get(path)), self.size)
            self._store[key] = (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        return self._store[key]


def _set_batchnorm(model: nn.Module, mode: str) -> None:
    if mode == "frozen":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


# ---------------------------------------------------------------------------- one fit


@dataclass
class _Setup:
    """What every fit of one `fine_tune` call shares."""

    cfg: FineTuneConfig
    preprocess: dict[str, Any]
    size: int
    cache: Any  # ImageCache (or anything with .get(path) -> uint8 HxWx3): scoring
    train_cache: Any  # the same, or the "resize" policy's rescaled images: training crops
    across: bool  # rank across images (every image its own content)
    bar: Any = None
    #: called after every epoch with {"fold" (0 = final fit), "epoch", "epochs", "planned",
    #: "train_loss", "val_srocc"}; it may raise to abandon the fine-tune (a deadline, a shutdown)
    on_epoch: Callable[[dict[str, Any]], None] | None = None
    planned: int = 0  # epochs the bar expects: cfg.epochs per fold + cfg.epochs for the final fit


def _optimizer(net: nn.Module, cfg: FineTuneConfig) -> torch.optim.Optimizer:
    groups = adam_param_groups(net, cfg.lr, cfg.head_lr, freeze_backbone=cfg.freeze_backbone)
    if not groups:
        raise InvalidInput("model has no trainable parameters to fine-tune")
    return torch.optim.Adam(groups, weight_decay=cfg.weight_decay)


def train_epoch(net: nn.Module, opt: torch.optim.Optimizer, samples: Sequence[Sample], setup: _Setup,
                rng: np.random.Generator) -> float | None:
    """One pass over `samples` in a random order; the mean training loss (None if no step ran)."""
    cfg = setup.cfg
    device = next(net.parameters()).device
    net.train()
    _set_batchnorm(net, cfg.batchnorm)
    order = rng.permutation(len(samples))
    losses = []
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        if len(idx) < 2 and len(order) > 1 and cfg.batchnorm == "train":
            continue  # BatchNorm cannot train on a single image
        # task_batch: one crop box + flip per reference, so ranked pairs show the same patch
        x, tgt = task_batch([samples[i] for i in idx], setup.train_cache, crop_size=setup.size, rng=rng,
                            flip=cfg.flip)
        loss = iqa_loss(net(x.to(device)), tgt, ranking_weight=cfg.ranking_weight, margin=cfg.ranking_margin,
                        across=setup.across)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return float(np.mean(losses)) if losses else None


def fit(model: nn.Module, train: Sequence[Sample], setup: _Setup, epochs: int, key: int,
        val: Sequence[Sample] = ()) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Train a float32 copy of `model` on `train` for `epochs` epochs; randomness from (seed, key).

    Rows: one per epoch (epoch 0 = the untouched copy), with val metrics after each when `val` is given.
    """
    net = copy.deepcopy(model).float()
    opt = _optimizer(net, setup.cfg)
    rng = np.random.default_rng([setup.cfg.seed, key])
    torch.manual_seed(int(np.random.SeedSequence([setup.cfg.seed, key]).generate_state(1)[0]))
    val_imgs = [setup.cache.get(s.path) for s in val]
    y_val = np.asarray([float(s.mos) for s in val], dtype=np.float64)

    def row(epoch: int, loss: float | None, t0: float) -> dict[str, Any]:
        out: dict[str, Any] = {"epoch": epoch, "train_loss": loss}
        if len(val):
            out.update(_val_metrics(predict(net, val_imgs, setup.preprocess), y_val))
        return {**out, "seconds": round(time.perf_counter() - t0, 3)}

    rows = [row(0, None, time.perf_counter())]
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        rows.append(row(epoch, train_epoch(net, opt, list(train), setup, rng), t0))
        if setup.bar is not None:
            setup.bar.update(1)
            setup.bar.set_postfix(fold=key or "final", loss=rows[-1]["train_loss"], val=rows[-1].get("val_srocc"))
        if setup.on_epoch is not None:
            setup.on_epoch({"fold": key, "epoch": epoch, "epochs": epochs, "planned": setup.planned,
                            "train_loss": rows[-1]["train_loss"], "val_srocc": rows[-1].get("val_srocc")})
    net.eval()
    return net, rows


# ---------------------------------------------------------------------------- the protocol


def _cross_validate(model: nn.Module, plan: SelectionPlan, setup: _Setup) -> list[dict[str, Any]]:
    """Fold i trains on the other folds for cfg.epochs epochs, its held-out SROCC recorded per epoch."""
    out = []
    for i, held_out in enumerate(plan.folds):
        train = plan.train_part(i)
        _, rows = fit(model, train, setup, setup.cfg.epochs, key=i + 1, val=held_out)
        out.append({"fold": i, "n_train": len(train), "n_val": len(held_out),
                    "contents": sorted({content_key(s) for s in held_out}), "epochs": rows})
    return out


def fine_tune(
    model: nn.Module,
    samples: Sequence[Sample],
    cfg: FineTuneConfig,
    *,
    preprocess: dict[str, Any] | None = None,
    progress: bool = True,
    cache: Any = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune a COPY of `model` (left untouched) on the labelled `samples` (the shots); returns (copy, history).

    The epoch count comes from content-disjoint k-fold cross-validation over `samples`
    (`metaiqa.meta.selection`), or is cfg.epochs when there are too few shots to select;
    the copy is then fitted on all of `samples` for that many epochs. Only `samples` are
    read. `preprocess` is the checkpoint's scoring policy (held-out folds are scored the way
    the Scorer will); `cache` (an ImageCache) lets repeated calls decode each image once;
    `on_epoch` sees every finished epoch (see `_Setup.on_epoch`; the service's job progress).
    Deterministic for cfg.seed whatever the order of `samples`; the caller's global torch RNG
    state is restored afterwards.
    """
    from tqdm import tqdm

    check_samples(samples, "fine-tune shots")
    samples = sorted(samples, key=lambda s: (content_key(s), str(s.path)))  # the result ignores the input order
    preprocess = dict(preprocess or {"policy": "center_crop", "size": 224})
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cache = cache if cache is not None else ImageCache()
    size = int(cfg.crop_size or preprocess.get("size", 224))
    train_cache = _ResizedCache(cache, int(preprocess.get("size", size))) if preprocess.get("policy") == "resize" \
        else cache
    setup = _Setup(cfg, preprocess, size, cache, train_cache, rank_across_images(samples), on_epoch=on_epoch)
    plan = plan_folds(samples, cfg.folds, cfg.seed)
    setup.planned = cfg.epochs * (len(plan.folds) + 1)
    setup.bar = tqdm(total=setup.planned, desc="fine-tune", unit="epoch",
                     disable=not progress, leave=False)
    try:
        with torch.random.fork_rng(devices=[]):
            folds = _cross_validate(model, plan, setup) if plan.rule == "kfold" else []
            curve = fold_curve([[r["val_srocc"] for r in f["epochs"]] for f in folds]) if folds else []
            chosen = choose_epochs(curve)
            rule, reason = plan.rule, plan.reason
            if chosen is None:
                chosen = cfg.epochs
                if rule == "kfold":
                    rule, reason = "fixed", f"{reason}; but no fold had a defined SROCC (constant labels or scores)"
            net, final = fit(model, samples, setup, chosen, key=0)
    finally:
        setup.bar.close()
    history = _history(rule, reason, folds, curve, chosen, final, setup)
    log.info("fine-tune: %s (%s) -> %d epochs on all %d shots", rule, reason, chosen, len(samples))
    return net, history


def _history(rule: str, reason: str, folds: list[dict[str, Any]], curve: list[dict[str, Any]], chosen: int,
             final: list[dict[str, Any]], setup: _Setup) -> dict[str, Any]:
    """What the sidecar records: the rule, why, the per-fold rows, the fold curve, the choice and the final fit."""
    kfold = rule == "kfold"
    return {
        "rule": rule,
        "rule_reason": reason,
        "criterion": "mean held-out-fold SROCC" if kfold else "none (fixed budget)",
        "folds": folds,
        "curve": curve,
        "chosen_epochs": chosen,
        "cv_val_srocc": curve[chosen]["val_srocc_mean"] if kfold else None,  # optimistic: the selected maximum
        "cv_zero_shot_srocc": curve[0]["val_srocc_mean"] if kfold else None,  # the prior, not fine-tuned
        "final": final,
        "ranking": "across images" if setup.across else "within content",
        "crop_size": setup.size,
    }


# ---------------------------------------------------------------------------- checkpoint in, checkpoint out


def _summary(samples: Sequence[Sample]) -> dict[str, Any]:
    return {
        "n": len(samples),
        "contents": sorted({content_key(s) for s in samples}),
        "groups": sorted({s.group for s in samples if s.group is not None}),
        "paths": [str(s.path) for s in samples],
    }


def fine_tune_checkpoint(
    prior: str | Path,
    samples: Sequence[Sample],
    cfg: FineTuneConfig,
    out: str | Path,
    *,
    data_spec: str | None = None,
    progress: bool = True,
) -> FineTuneResult:
    """Load `prior`, draw cfg.shots labelled images content-disjointly from `samples` (few_shot_split;
    the other contents stay untouched), fine-tune on them, save to `out` with a sidecar holding the
    resolved config, the data summary (shots, content ids, paths), the selection rule and its fold curve."""
    from metaiqa.data.tasks import few_shot_split
    from metaiqa.evaluation.report import to_jsonable
    from metaiqa.models.checkpoint import load_checkpoint

    check_samples(samples, "fine-tune data")
    ckpt = load_checkpoint(prior)
    shots, _, untouched = few_shot_split(samples, cfg.shots, cfg.seed, val_fraction=0.0)
    log.info("fine-tune: %d shots (%d images left untouched)", len(shots), len(untouched))
    model, history = fine_tune(ckpt.model, shots, cfg, preprocess=ckpt.preprocess, progress=progress)
    result_metrics = {k: history[k] for k in ("rule", "chosen_epochs", "cv_val_srocc", "cv_zero_shot_srocc")}
    result_metrics["folds"] = len(history["folds"])
    data = {
        "spec": data_spec,
        "shots": cfg.shots,
        "train": _summary(shots),
        "test_contents": len({s.content or str(s.path) for s in untouched}),
        "test_images": len(untouched),
    }
    config = {"fine_tune": dump_config(cfg), "prior_config": ckpt.meta.get("config", {})}
    prior_info = {"path": str(ckpt.path), "sha256": ckpt.meta.get("sha256"), "model": ckpt.meta.get("model")}
    path, rescued = save_or_rescue(
        out,
        model,
        model_name=ckpt.meta["model"],
        model_kwargs=ckpt.meta.get("model_kwargs", {}),
        preprocess=ckpt.preprocess,
        config=to_jsonable(config),
        data=to_jsonable(data),
        metrics=to_jsonable(result_metrics),
        extra={"stage": "fine-tune", "prior": prior_info, "history": to_jsonable(history)},
    )
    return FineTuneResult(path, to_jsonable(history), to_jsonable(data), to_jsonable(result_metrics), rescued)
