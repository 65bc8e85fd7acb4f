"""Validation of a prior during meta-training: zero-shot, and after a short adaptation.

MetaIQA's prior is not meant to be used as it is but adapted to a task from a few labelled
images, so the prior worth keeping is the one that adapts best. Besides the zero-shot SROCC
on the validation references, each validation type (distortion group) becomes one fixed
task: the images of `support_contents` of its contents are the support set, the images of
its other contents the query (disjoint contents, as in meta-training). A copy of the prior
takes a few plain gradient steps on the support (`bilevel.inner_adapt`, the meta-training
inner loop: train mode, throw-away BatchNorm buffers) and scores the query in eval mode;
`val_srocc_adapted` is the mean query SROCC over the types, and
`val_srocc_query_zero_shot` the same figure before adapting (what the steps gained).

Nothing here touches the trainer's state: the model is deep-copied, the adaptation runs on
functional parameters, its dropout draws from a forked torch RNG seeded from (seed, task)
and its crops from its own numpy generator, so training is bit-for-bit the same with or
without it. Tasks and crops are the same at every validation, so figures from different
iterations compare like with like.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from metaiqa.data.samples import Sample
from metaiqa.data.tasks import content_key
from metaiqa.evaluation.metrics import srocc
from metaiqa.meta import bilevel
from metaiqa.meta.images import eval_batch, task_batch


@dataclass(frozen=True)
class AdaptTask:
    """One validation type: adapt on `support`, score the validation images at positions `query`."""

    group: str
    support: list[Sample]
    query: list[int]


@dataclass(frozen=True)
class AdaptSettings:
    steps: int
    lr: float
    optimizer: str
    crop_size: int
    flip: bool
    max_images: int | None
    seed: int
    batch_size: int
    channels_last: bool = False


def adaptation_tasks(val: Sequence[Sample], support_contents: int, seed: int) -> list[AdaptTask]:
    """Per validation type: `support_contents` seeded contents (at most half of the type's) as support,
    the other contents as query. Types with < 2 contents, or a query of < 3 images or constant labels,
    make no task."""
    by_group: dict[str, list[int]] = {}
    for i, s in enumerate(val):
        by_group.setdefault(str(s.group), []).append(i)
    tasks = []
    for gi, g in enumerate(sorted(by_group)):
        idx = by_group[g]
        keys = sorted({content_key(val[i]) for i in idx})
        n_support = min(int(support_contents), len(keys) // 2)
        if n_support < 1:
            continue
        picked = np.random.default_rng([seed, 77, gi]).choice(len(keys), n_support, replace=False)
        chosen = {keys[j] for j in picked}
        query = [i for i in idx if content_key(val[i]) not in chosen]
        if len(query) < 3 or np.ptp([val[i].mos for i in query]) == 0:
            continue
        tasks.append(AdaptTask(g, [val[i] for i in idx if content_key(val[i]) in chosen], query))
    return tasks


@torch.no_grad()
def score_samples(model: nn.Module, samples: Sequence[Sample], cache, preprocess: dict, *, batch_size: int,
                  device: torch.device, channels_last: bool = False, autocast: Any = None,
                  params: dict[str, torch.Tensor] | None = None,
                  buffers: dict[str, torch.Tensor] | None = None) -> list[float]:
    """Scoring view of each sample through `model` in eval mode (with `params`/`buffers` when given)."""
    bs = 1 if preprocess["policy"] == "native" else batch_size
    was_training = model.training
    model.eval()
    preds: list[float] = []
    try:
        for start in range(0, len(samples), bs):
            x = eval_batch(samples[start : start + bs], cache, preprocess).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast if autocast is not None else nullcontext():
                out = model(x) if params is None else bilevel.forward(model, params, buffers or {}, x)
            preds += out.float().reshape(-1).cpu().tolist()
    finally:
        model.train(was_training)
    return preds


def zero_shot_metrics(preds: Sequence[float], val: Sequence[Sample]) -> dict[str, float]:
    """Pooled SROCC over all validation images and the mean of the per-type SROCCs."""
    mos = [s.mos for s in val]
    per_type = []
    for g in sorted({str(s.group) for s in val}):
        idx = [i for i, s in enumerate(val) if str(s.group) == g]
        if len(idx) >= 3:
            per_type.append(srocc([preds[i] for i in idx], [mos[i] for i in idx]))
    finite = [v for v in per_type if np.isfinite(v)]
    return {"val_srocc": srocc(preds, mos), "val_srocc_type_mean": float(np.mean(finite)) if finite else float("nan")}


def _seed(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def adapted_metrics(model: nn.Module, val: Sequence[Sample], tasks: Sequence[AdaptTask], zero_shot: Sequence[float],
                    cache, preprocess: dict, settings: AdaptSettings, loss_fn: Callable,
                    device: torch.device) -> dict[str, float]:
    """Mean query SROCC over `tasks` after adapting a copy of `model` on each support set, and before."""
    net = copy.deepcopy(model).train()
    params = {n: p for n, p in net.named_parameters() if p.requires_grad}
    buffers = dict(net.named_buffers())
    devices = [device.index or 0] if device.type == "cuda" else []
    after, before = [], []
    for k, task in enumerate(tasks):
        rng = np.random.default_rng([settings.seed, 77, k])
        x, t = task_batch(task.support, cache, crop_size=settings.crop_size, rng=rng, flip=settings.flip,
                          max_images=settings.max_images)
        x = x.to(device).contiguous(memory_format=torch.channels_last) if settings.channels_last else x.to(device)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(_seed(settings.seed, 77, k))
            adapted = bilevel.inner_adapt(net, params, buffers, x, t._replace(y=t.y.to(device),
                                          content=t.content.to(device)), steps=settings.steps, lr=settings.lr,
                                          optimizer=settings.optimizer, loss_fn=loss_fn)
        query = [val[i] for i in task.query]
        mos = [s.mos for s in query]
        preds = score_samples(net, query, cache, preprocess, batch_size=settings.batch_size, device=device,
                              channels_last=settings.channels_last, params=adapted, buffers=buffers)
        after.append(srocc(preds, mos))
        before.append(srocc([zero_shot[i] for i in task.query], mos))

    def mean(v: list[float]) -> float:
        finite = [x for x in v if np.isfinite(x)]
        return float(np.mean(finite)) if finite else float("nan")

    return {"val_srocc_adapted": mean(after), "val_srocc_query_zero_shot": mean(before)}
