"""Few-shot adaptation of a quality prior to an unseen distortion or a user's labelled images.

The point of MetaIQA: a meta-learned prior should reach a good model from a few labelled
images. `fine_tune` trains a copy of a model with Adam on random crops + flips (MSE +
the within-content ranking hinge of `metaiqa.meta.losses`) and keeps the weights with the
best validation SROCC, stopping early when it stops improving. The prior itself (epoch 0)
is a candidate too, so fine-tuning never returns something worse on validation.
`fine_tune_checkpoint` wraps it for the CLI: load, content-disjoint split, tune, save.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from metaiqa.config import StrictModel, dump_config
from metaiqa.data.samples import DatasetError, Sample
from metaiqa.data.transforms import image_views, resize_short_side, to_tensor
from metaiqa.errors import InvalidInput
from metaiqa.evaluation import metrics
from metaiqa.meta.images import ImageCache, task_batch

log = logging.getLogger(__name__)


class FineTuneConfig(StrictModel):
    """configs/fine_tune/fewshot.yaml; every key validated, unknown keys are errors."""

    shots: int = Field(50, ge=2, description="labelled images used for adaptation (train + val)")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="share of the shots held out for early stopping")
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-4, ge=0.0, description="Adam lr of the backbone")
    head_lr: float = Field(1e-3, ge=0.0, description="Adam lr of the regression head")
    weight_decay: float = Field(1e-4, ge=0.0)
    crop_size: int | None = Field(None, ge=16, description="training crop; None = the checkpoint's size")
    flip: bool = True
    ranking_weight: float = Field(1.0, ge=0.0, description="weight of the within-content ranking hinge")
    ranking_margin: float = Field(0.05, ge=0.0)
    patience: int = Field(5, ge=1, description="epochs without a val improvement before stopping")
    min_delta: float = Field(0.0, ge=0.0, description="smallest val gain that counts as improvement")
    freeze_backbone: bool = False
    batchnorm: Literal["frozen", "train"] = Field(
        "frozen", description="frozen: keep the prior's running statistics (few images estimate them badly)"
    )
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="torch threads; None = leave as is")


@dataclass
class FineTuneResult:
    path: Path
    history: dict[str, Any]
    data: dict[str, Any]
    metrics: dict[str, Any]


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


# ---------------------------------------------------------------------------- training


def fine_tune(
    model: nn.Module,
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    cfg: FineTuneConfig,
    *,
    preprocess: dict[str, Any] | None = None,
    progress: bool = True,
    cache: ImageCache | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune a COPY of `model` (the argument is left untouched); returns (best copy, history).

    Early stopping watches val SROCC (val MSE when val has < 3 images or constant labels);
    with no val samples all epochs run and the last weights are kept. `preprocess` is the
    checkpoint's scoring policy (validation scores images the way the Scorer will).
    `cache` (an ImageCache) lets repeated calls (benchmarks) decode each image once.
    Deterministic for cfg.seed; the caller's global torch RNG state is restored afterwards.
    """
    from tqdm import tqdm

    from metaiqa.meta.losses import iqa_loss

    check_samples(train_samples, "fine-tune train set")
    if len(val_samples):
        check_samples(val_samples, "fine-tune val set")
    preprocess = dict(preprocess or {"policy": "center_crop", "size": 224})
    size = int(cfg.crop_size or preprocess.get("size", 224))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cache = cache if cache is not None else ImageCache()
    train_samples = list(train_samples)
    val_imgs = [cache.get(s.path) for s in val_samples]
    train_cache = cache
    if preprocess.get("policy") == "resize":
        train_cache = _ResizedCache(cache, int(preprocess.get("size", size)))
    # authentic sets (no reference ids): MOS are comparable across images, so rank all pairs
    rank_all = all(s.ref_id is None for s in train_samples)
    y_val = np.asarray([float(s.mos) for s in val_samples], dtype=np.float64)
    use_srocc = len(val_samples) >= 3 and np.ptp(y_val) > 0
    criterion = "val_srocc" if use_srocc else ("val_mse" if len(val_samples) else "none")

    def score_of(row: dict[str, float]) -> float:
        v = row.get(criterion, float("nan"))
        v = -v if criterion == "val_mse" else v
        return v if math.isfinite(v) else -math.inf

    net = copy.deepcopy(model).float()
    device = next(net.parameters()).device  # runs where the caller put the model (CPU or CUDA)
    head = set(net.head_parameter_names()) if hasattr(net, "head_parameter_names") else set()
    groups = [
        {"params": [p for n, p in net.named_parameters() if n in head], "lr": cfg.head_lr},
        {"params": [p for n, p in net.named_parameters() if n not in head], "lr": cfg.lr},
    ]
    if cfg.freeze_backbone:
        for p in groups[1]["params"]:
            p.requires_grad_(False)
        groups = groups[:1]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise InvalidInput("model has no trainable parameters to fine-tune")
    opt = torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)

    history: dict[str, Any] = {"criterion": criterion, "epochs": [], "stopped_early": False}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        row0 = {"epoch": 0, "train_loss": None, **_val_metrics(predict(net, val_imgs, preprocess), y_val)}
        history["epochs"].append(row0)
        best, best_epoch, best_state, bad = score_of(row0), 0, copy.deepcopy(net.state_dict()), 0
        bar = tqdm(range(1, cfg.epochs + 1), desc="fine-tune", unit="epoch", disable=not progress, leave=False)
        for epoch in bar:
            t0 = time.perf_counter()
            net.train()
            _set_batchnorm(net, cfg.batchnorm)
            order = rng.permutation(len(train_samples))
            losses = []
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                if len(idx) < 2 and len(order) > 1 and cfg.batchnorm == "train":
                    continue  # BatchNorm cannot train on a single image
                # C's task_batch: one crop box + flip per reference, so ranked pairs show the same patch
                x, tgt = task_batch([train_samples[i] for i in idx], train_cache, crop_size=size, rng=rng, flip=cfg.flip)
                if rank_all:
                    tgt = tgt._replace(content=None)
                loss = iqa_loss(net(x.to(device)), tgt, ranking_weight=cfg.ranking_weight, margin=cfg.ranking_margin)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
            row = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else None,
                   **_val_metrics(predict(net, val_imgs, preprocess), y_val),
                   "seconds": round(time.perf_counter() - t0, 3)}
            history["epochs"].append(row)
            if criterion == "none" or score_of(row) > best + cfg.min_delta:
                best, best_epoch, best_state, bad = score_of(row), epoch, copy.deepcopy(net.state_dict()), 0
            else:
                bad += 1
            bar.set_postfix(loss=row["train_loss"], val=row.get(criterion), best=best_epoch)
            if bad >= cfg.patience:
                history["stopped_early"] = True
                break
        bar.close()
    net.load_state_dict(best_state)
    net.eval()
    best_row = history["epochs"][best_epoch]
    history.update(best_epoch=best_epoch, best=best_row, zero_shot=row0, crop_size=size)
    log.info("fine-tune: best epoch %d of %d, %s %s (zero-shot %s)", best_epoch, len(history["epochs"]) - 1,
             criterion, best_row.get(criterion), row0.get(criterion))
    return net, history


# ---------------------------------------------------------------------------- checkpoint in, checkpoint out


def _summary(samples: Sequence[Sample]) -> dict[str, Any]:
    from metaiqa.data.tasks import content_key

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
    """Load `prior`, split `samples` content-disjointly (few_shot_split: cfg.shots images as
    train + val, the rest untouched as test), fine-tune, save to `out` with a sidecar holding
    the resolved config, the data summary (shots, content ids, paths) and val metrics."""
    from metaiqa.data.tasks import few_shot_split
    from metaiqa.evaluation.report import to_jsonable
    from metaiqa.models.checkpoint import load_checkpoint, save_checkpoint

    check_samples(samples, "fine-tune data")
    ckpt = load_checkpoint(prior)
    train, val, test = few_shot_split(samples, cfg.shots, cfg.seed, cfg.val_fraction)
    log.info("fine-tune: %d train + %d val images (%d left untouched)", len(train), len(val), len(test))
    model, history = fine_tune(ckpt.model, train, val, cfg, preprocess=ckpt.preprocess, progress=progress)
    best = history["best"]
    result_metrics = {
        "criterion": history["criterion"],
        "best_epoch": history["best_epoch"],
        "val_srocc": best.get("val_srocc"),
        "val_plcc": best.get("val_plcc"),
        "val_mse": best.get("val_mse"),
        "zero_shot_val_srocc": history["zero_shot"].get("val_srocc"),
    }
    data = {
        "spec": data_spec,
        "shots": cfg.shots,
        "train": _summary(train),
        "val": _summary(val),
        "test_contents": len({s.content or str(s.path) for s in test}),
        "test_images": len(test),
    }
    config = {"fine_tune": dump_config(cfg), "prior_config": ckpt.meta.get("config", {})}
    prior_info = {"path": str(ckpt.path), "sha256": ckpt.meta.get("sha256"), "model": ckpt.meta.get("model")}
    path = save_checkpoint(
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
    return FineTuneResult(path, to_jsonable(history), to_jsonable(data), to_jsonable(result_metrics))
