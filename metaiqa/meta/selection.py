"""How few-shot fine-tuning chooses how long to train: k-fold cross-validation over the shots.

The rule (issue 9, "honest few-shot protocol"):

1. Only the shots are read. Nothing outside them (least of all test data) is used to
   choose anything.
2. Nothing is chosen on fewer than two contents. The shots are dealt into k folds by
   content (`metaiqa.data.tasks.content_key`): every content's images stay in one fold, and
   every fold has >= MIN_FOLD_CONTENTS contents and >= MIN_FOLD_IMAGES images.
   k = min(folds, contents // 2), lowered until every fold has enough images.
3. Each fold is held out once: a copy of the prior trains on the other folds for `epochs`
   epochs, and the held-out fold's SROCC is measured after every epoch (epoch 0 = the prior
   as it is). The fold curve is the mean SROCC over folds for each epoch count. The chosen
   budget is the epoch count with the best mean (the smallest on ties; 0 means "keep the
   prior").
4. The returned model is a fresh fit on ALL shots for the chosen number of epochs.

With too few shots to hold anything out (< MIN_IMAGES images, < MIN_CONTENTS contents, or
fewer than two usable folds) nothing is selected: the fixed budget `epochs` from the
config is used, and the history says so.

Pure functions: samples and numbers in, plans and numbers out. Deterministic for the seed
and independent of the order of the samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from metaiqa.data.samples import Sample
from metaiqa.data.tasks import content_key

MIN_IMAGES = 10
MIN_CONTENTS = 4
MIN_FOLD_CONTENTS = 2
MIN_FOLD_IMAGES = 3


@dataclass(frozen=True)
class SelectionPlan:
    """How the epoch budget will be chosen: `kfold` with its held-out folds, or `fixed`."""

    rule: Literal["kfold", "fixed"]
    reason: str
    folds: list[list[Sample]] = field(default_factory=list)

    def train_part(self, i: int) -> list[Sample]:
        """Every shot outside fold `i` (what fold i's model trains on)."""
        return [s for j, f in enumerate(self.folds) if j != i for s in f]


def _deal(keys: list[str], by_key: dict[str, list[Sample]], k: int) -> list[list[Sample]]:
    """Round-robin: fold j gets the contents at positions j, j+k, j+2k, ... of `keys`."""
    return [[s for key in keys[j::k] for s in by_key[key]] for j in range(k)]


def plan_folds(samples: Sequence[Sample], folds: int, seed: int) -> SelectionPlan:
    """Content-disjoint folds over the shots, or a `fixed` plan naming why none are possible."""
    if int(folds) != folds or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
    by_key: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: (content_key(s), str(s.path))):
        by_key.setdefault(content_key(s), []).append(s)
    n, n_contents = len(samples), len(by_key)
    if n < MIN_IMAGES or n_contents < MIN_CONTENTS:
        return SelectionPlan("fixed", f"{n} images in {n_contents} contents: selecting needs >= {MIN_IMAGES} "
                             f"images in >= {MIN_CONTENTS} contents")
    keys = sorted(by_key)
    keys = [keys[i] for i in np.random.default_rng([seed, 31]).permutation(len(keys))]
    for k in range(min(int(folds), n_contents // MIN_FOLD_CONTENTS), 1, -1):
        dealt = _deal(keys, by_key, k)
        if min(len(f) for f in dealt) >= MIN_FOLD_IMAGES:
            return SelectionPlan("kfold", f"{k}-fold cross-validation over {n_contents} contents ({n} images)",
                                 dealt)
    return SelectionPlan("fixed", f"{n} images in {n_contents} contents cannot make 2 folds of >= "
                         f"{MIN_FOLD_CONTENTS} contents and >= {MIN_FOLD_IMAGES} images each")


def fold_curve(per_fold: Sequence[Sequence[float]]) -> list[dict[str, Any]]:
    """Per epoch count e: the held-out SROCC of each fold and their mean over the finite ones.

    `per_fold[i][e]` is fold i's held-out SROCC after e epochs (NaN where undefined, e.g. constant
    predictions); every fold must have the same number of epochs.
    """
    lengths = {len(r) for r in per_fold}
    if len(lengths) != 1:
        raise ValueError(f"every fold needs the same number of epochs, got lengths {sorted(lengths)}")
    curve = []
    for e in range(lengths.pop()):
        values = [float(r[e]) for r in per_fold]
        finite = [v for v in values if math.isfinite(v)]
        curve.append({"epoch": e, "val_srocc_mean": float(np.mean(finite)) if finite else float("nan"),
                      "val_srocc_folds": values, "finite_folds": len(finite)})
    return curve


def choose_epochs(curve: Sequence[dict[str, Any]]) -> int | None:
    """The epoch count with the highest mean fold SROCC (the smallest on ties); None if none is finite."""
    best, best_epoch = -math.inf, None
    for row in curve:
        v = row["val_srocc_mean"]
        if math.isfinite(v) and v > best:
            best, best_epoch = v, int(row["epoch"])
    return best_epoch
