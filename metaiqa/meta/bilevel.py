"""Bi-level optimisation for MetaIQA: inner adaptation and MAML / FOMAML / Reptile meta-gradients.

Pure functions (no state, no I/O, no logging) over `torch.func.functional_call`, so the
adapted parameters are a functional copy and the model's own parameters are never
modified. Gradients are taken with `torch.autograd.grad`; with `create_graph=True` the inner
steps stay differentiable (second-order MAML), including the functional Adam below.

BatchNorm decision (tested in tests/test_bilevel.py):
  * every forward runs in the model's current mode; in train mode BatchNorm normalises with
    the statistics of the batch it sees (support or query);
  * inner-loop forwards run on *throw-away copies* of the buffers, so adapting to a task never
    moves the prior's running statistics;
  * the outer forward (the query batch at the adapted parameters, or the pooled batch of the
    supervised baseline) runs on a copy of the prior's buffers and returns it as
    `MetaResult.buffers`; the caller decides what to keep (the trainer averages them over
    the tasks of a meta-batch, an order-independent rule that DDP can all-reduce exactly).
  So running statistics are updated only by the outer step, once per task.
  The trainer swaps BatchNorm for Batch Renormalization in the meta-algorithms (see
  metaiqa.meta.batchnorm): same buffers, same rule, but a per-image forward.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

Params = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, Any], torch.Tensor]
INNER_OPTIMIZERS = ("sgd", "adam")


@dataclass
class MetaResult:
    """What one task contributes to a meta-update."""

    grads: Params  # per prior parameter; to be averaged over the tasks of a meta-batch
    query_loss: float  # loss on the query batch at the adapted parameters (before the meta-update)
    buffers: Params  # the prior's buffers after the outer forward (BatchNorm running stats)
    inner_losses: list[float] = field(default_factory=list)  # support loss before each inner step


def forward(model: nn.Module, params: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor], x):
    """model(x) with the given parameters and buffers (missing names fall back to the model's own)."""
    return functional_call(model, (dict(params), dict(buffers)), (x,))


def _clone(buffers: Mapping[str, torch.Tensor]) -> Params:
    return {k: v.detach().clone() for k, v in buffers.items()}


def _check_inner(steps: int, lr: float, optimizer: str) -> None:
    if optimizer not in INNER_OPTIMIZERS:
        raise ValueError(f"inner optimizer must be one of {INNER_OPTIMIZERS}, got {optimizer!r}")
    if steps < 0:
        raise ValueError(f"inner steps must be >= 0, got {steps}")
    if lr < 0:
        raise ValueError(f"inner lr must be >= 0, got {lr}")


def inner_adapt(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    support_x: torch.Tensor,
    support_y: Any,
    *,
    steps: int,
    lr: float,
    optimizer: str = "sgd",
    loss_fn: LossFn,
    create_graph: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    losses: list[float] | None = None,
) -> Params:
    """Adapt a functional copy of `params` to the support set with `steps` SGD or Adam steps.

    create_graph=True keeps the steps differentiable w.r.t. `params` (MAML); otherwise every
    step's result is detached (first order). The support losses before each step are
    appended to `losses` when given. Buffers are used via throw-away copies (see module doc).
    Adam here is differentiable: its denominator is sqrt(v_hat + eps^2) instead of
    sqrt(v_hat) + eps, which equals it up to ~eps and has a finite derivative at v = 0.
    """
    _check_inner(steps, lr, optimizer)
    names = list(params)
    if create_graph:
        current = {k: v if v.requires_grad else v.detach().requires_grad_(True) for k, v in params.items()}
    else:
        current = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    m = {k: torch.zeros_like(v) for k, v in current.items()} if optimizer == "adam" else {}
    v2 = {k: torch.zeros_like(v) for k, v in current.items()} if optimizer == "adam" else {}
    for t in range(1, steps + 1):
        with torch.enable_grad():
            loss = loss_fn(forward(model, current, _clone(buffers), support_x), support_y)
            grads = torch.autograd.grad(loss, [current[k] for k in names], create_graph=create_graph, allow_unused=True)
        if losses is not None:
            losses.append(float(loss.detach()))
        new: Params = {}
        for k, g in zip(names, grads, strict=True):
            p = current[k]
            if g is None:
                new[k] = p
                continue
            if optimizer == "sgd":
                step = lr * g
            else:
                m[k] = betas[0] * m[k] + (1 - betas[0]) * g
                v2[k] = betas[1] * v2[k] + (1 - betas[1]) * g * g
                m_hat = m[k] / (1 - betas[0] ** t)
                v_hat = v2[k] / (1 - betas[1] ** t)
                step = lr * m_hat / torch.sqrt(v_hat + eps * eps)
            new[k] = p - step if create_graph else (p - step).detach().requires_grad_(True)
        current = new
        if not create_graph and optimizer == "adam":
            m = {k: x.detach() for k, x in m.items()}
            v2 = {k: x.detach() for k, x in v2.items()}
    return current


def _outer_forward(model, params, buffers, query_x, query_y, loss_fn, grad=True) -> tuple[torch.Tensor, Params]:
    new_buffers = _clone(buffers)
    with torch.set_grad_enabled(grad):
        loss = loss_fn(forward(model, params, new_buffers, query_x), query_y)
    return loss, new_buffers


def _prior(params: Mapping[str, torch.Tensor]) -> Params:
    return {k: v.detach().requires_grad_(True) for k, v in params.items()}


def _grads(loss: torch.Tensor, wrt: Params) -> Params:
    gs = torch.autograd.grad(loss, list(wrt.values()), allow_unused=True)
    return {k: torch.zeros_like(v) if g is None else g.detach() for (k, v), g in zip(wrt.items(), gs, strict=True)}


def maml_grads(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    support: tuple[torch.Tensor, Any],
    query: tuple[torch.Tensor, Any],
    *,
    steps: int,
    lr: float,
    optimizer: str = "sgd",
    loss_fn: LossFn,
) -> MetaResult:
    """Second-order MAML: d query_loss(adapt(prior)) / d prior, through the inner steps."""
    prior = _prior(params)
    inner: list[float] = []
    adapted = inner_adapt(
        model, prior, buffers, *support, steps=steps, lr=lr, optimizer=optimizer, loss_fn=loss_fn,
        create_graph=True, losses=inner,
    )
    loss, new_buffers = _outer_forward(model, adapted, buffers, *query, loss_fn)
    return MetaResult(_grads(loss, prior), float(loss.detach()), new_buffers, inner)


def fomaml_grads(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    support: tuple[torch.Tensor, Any],
    query: tuple[torch.Tensor, Any],
    *,
    steps: int,
    lr: float,
    optimizer: str = "sgd",
    loss_fn: LossFn,
) -> MetaResult:
    """First-order MAML: the query-loss gradient at the adapted parameters, applied to the prior."""
    inner: list[float] = []
    adapted = inner_adapt(
        model, params, buffers, *support, steps=steps, lr=lr, optimizer=optimizer, loss_fn=loss_fn,
        create_graph=False, losses=inner,
    )
    loss, new_buffers = _outer_forward(model, adapted, buffers, *query, loss_fn)
    return MetaResult(_grads(loss, adapted), float(loss.detach()), new_buffers, inner)


def reptile_grads(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    support: tuple[torch.Tensor, Any],
    query: tuple[torch.Tensor, Any],
    *,
    steps: int,
    lr: float,
    optimizer: str = "sgd",
    loss_fn: LossFn,
) -> MetaResult:
    """Reptile: the 'gradient' is prior - adapted (MetaIQA's public code moves the prior toward
    the task-adapted weights). The query batch is only evaluated (loss for logging, outer
    forward for the BatchNorm statistics)."""
    inner: list[float] = []
    adapted = inner_adapt(
        model, params, buffers, *support, steps=steps, lr=lr, optimizer=optimizer, loss_fn=loss_fn,
        create_graph=False, losses=inner,
    )
    loss, new_buffers = _outer_forward(model, adapted, buffers, *query, loss_fn, grad=False)
    grads = {k: (params[k].detach() - adapted[k].detach()) for k in params}
    return MetaResult(grads, float(loss.detach()), new_buffers, inner)


def supervised_grads(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    batch: tuple[torch.Tensor, Any],
    *,
    loss_fn: LossFn,
) -> MetaResult:
    """Plain regression (the baseline): the loss gradient at the prior on one pooled batch."""
    prior = _prior(params)
    loss, new_buffers = _outer_forward(model, prior, buffers, *batch, loss_fn)
    return MetaResult(_grads(loss, prior), float(loss.detach()), new_buffers, [])


META_ALGORITHMS = {"maml": maml_grads, "fomaml": fomaml_grads, "reptile": reptile_grads}
