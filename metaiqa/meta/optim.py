"""Optimiser pieces shared by fine-tuning and joint training: parameter groups, lr schedule."""

from __future__ import annotations

import math

from torch import nn


def adam_param_groups(model: nn.Module, lr: float, head_lr: float, *, freeze_backbone: bool = False) -> list[dict]:
    """Two groups: the regression head (`head_lr`) and everything else (`lr`); empty groups dropped.

    Each group records `initial_lr` so a schedule can scale it.
    """
    head = set(model.head_parameter_names()) if hasattr(model, "head_parameter_names") else set()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if n in head], "lr": head_lr, "initial_lr": head_lr},
        {"params": [p for n, p in params if n not in head], "lr": lr, "initial_lr": lr},
    ]
    if freeze_backbone:
        for p in groups[1]["params"]:
            p.requires_grad_(False)
        groups = groups[:1]
    return [g for g in groups if g["params"]]


def cosine_factor(step: int, total: int, warmup: int = 0, floor: float = 0.05) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay from 1 to `floor` at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
