"""Training losses for quality regression: MSE on the label + a pairwise ranking hinge.

Pure functions. TRAINING-NOTES (recipe B) measured that ranking versions of the *same*
content against each other, on top of MSE, is what makes from-scratch training learn
distortion rather than content shortcuts (JPEG was ranked backwards with MSE alone).

Where every image is its own content (authentic photos with opinion scores, e.g. BIQ2021),
the within-content term has no pair at all; labels are comparable across images there, so
the hinge ranks every pair of the batch instead (`across=True`, or `content=None`).
Fine-tuning decides which by the data (`metaiqa.meta.finetune.rank_across_images`).
"""

from functools import partial
from typing import NamedTuple

import torch
from torch.nn import functional as F


class Target(NamedTuple):
    """Labels of a batch plus, for the ranking term, an integer content id per image."""

    y: torch.Tensor  # (N,) float labels in [0, 1], higher is better
    content: torch.Tensor | None = None  # (N,) long: images with equal ids show the same content


def ranking_hinge(
    pred: torch.Tensor, y: torch.Tensor, content: torch.Tensor | None, *, margin: float = 0.05, min_diff: float = 0.02
) -> torch.Tensor:
    """Mean of hinge(margin - (p_i - p_j) * sign(y_i - y_j)) over pairs with |y_i - y_j| > min_diff.

    Pairs are the same-content ones when `content` is given, every pair of the batch (across
    images) when it is None. Zero (still attached to the graph) when the batch holds no such pair.
    """
    dy = y[:, None] - y[None, :]
    dp = pred[:, None] - pred[None, :]
    mask = dy.abs() > min_diff
    if content is not None:
        mask &= content[:, None] == content[None, :]
    mask = torch.triu(mask, diagonal=1)
    if not bool(mask.any()):
        return pred.sum() * 0.0
    return F.relu(margin - dp[mask] * torch.sign(dy[mask])).mean()


def iqa_loss(
    pred: torch.Tensor, target: Target | torch.Tensor, *, ranking_weight: float = 0.0, margin: float = 0.05,
    min_diff: float = 0.02, across: bool = False,
) -> torch.Tensor:
    """MSE(pred, y) + ranking_weight * ranking_hinge; computed in float32 whatever autocast did.

    across=True ranks all pairs of the batch whatever `target.content` says (each image its own content).
    """
    if not isinstance(target, Target):
        target = Target(target)
    pred = pred.float()
    y = target.y.to(pred.device, torch.float32)
    loss = F.mse_loss(pred, y)
    if ranking_weight > 0:
        content = None if across or target.content is None else target.content.to(pred.device)
        loss = loss + ranking_weight * ranking_hinge(pred, y, content, margin=margin, min_diff=min_diff)
    return loss


def make_loss(ranking_weight: float = 0.0, margin: float = 0.05, min_diff: float = 0.02):
    """A picklable `loss_fn(pred, target)` for the bi-level functions."""
    return partial(iqa_loss, ranking_weight=ranking_weight, margin=margin, min_diff=min_diff)
