"""Validate a model on labelled images: score them the way the service does, then report.

Scoring goes through `metaiqa.inference.Scorer`, i.e. the checkpoint's own serving
preprocessing and decoder, so a validation number describes what users will get.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metaiqa.data.samples import DatasetError, Sample
from metaiqa.errors import InvalidInput, MetaIQAError
from metaiqa.evaluation.report import evaluate, write_report

log = logging.getLogger(__name__)


class UnreadableImage(DatasetError):
    """A labelled image of the validation set could not be read or decoded (message names it)."""


def _check_args(samples: Sequence[Sample], splits: int, bootstrap: int, batch_size: int) -> None:
    """Fail before minutes of scoring, not after."""
    if len(samples) == 0:
        raise DatasetError("validation set is empty (0 labelled images)")
    for name, value, lo in (("splits", splits, 1), ("bootstrap", bootstrap, 0), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise InvalidInput(f"{name} must be an integer >= {lo}, got {value!r}")


def _score_chunk(scorer, paths: list[Path], crops: int, batch_size: int) -> list[float]:
    try:
        return scorer.score_paths(paths, crops=crops, batch_size=batch_size)
    except (MetaIQAError, OSError):
        pass
    # find the culprit so the message names the file, not just the failing batch
    out = []
    for p in paths:
        try:
            out += scorer.score_paths([p], crops=crops, batch_size=1)
        except (MetaIQAError, OSError) as exc:
            raise UnreadableImage(f"cannot score {p}: {type(exc).__name__}: {exc}") from exc
    return out


def score_samples(
    scorer, samples: Sequence[Sample], *, crops: int = 1, batch_size: int = 16, progress: bool = True
) -> list[float]:
    """Scores for `samples` in order, with a progress bar; an unreadable image raises UnreadableImage."""
    from tqdm import tqdm

    paths = [Path(s.path) for s in samples]
    out: list[float] = []
    with tqdm(total=len(paths), desc="scoring", unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            out += _score_chunk(scorer, chunk, crops, batch_size)
            bar.update(len(chunk))
    return out


def validate_scorer(
    scorer,
    samples: Sequence[Sample],
    *,
    splits: int = 1,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    crops: int = 1,
    bootstrap: int = 1000,
    progress: bool = True,
    batch_size: int = 16,
    model_info: dict[str, Any] | None = None,
    training_overlap: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score `samples` with an already loaded `Scorer`, evaluate, optionally write report files.

    The returned report (see `report.evaluate`) gains "model" (name, architecture, sha256,
    preprocess, crops, plus `model_info`), "training_overlap" (`overlap.training_overlap`;
    computed from the recorded names when not given), "timing" and, when `out_dir` is given,
    "files" (kind -> path). The service calls this with the Scorers it already holds.
    """
    from metaiqa.evaluation.overlap import training_overlap as check_overlap

    _check_args(samples, splits, bootstrap, batch_size)
    meta = getattr(scorer, "meta", None) or {}
    if training_overlap is None:  # warn before minutes of scoring
        training_overlap = check_overlap(meta, samples, model=getattr(scorer, "name", "the model"))
    t0 = time.perf_counter()
    preds = score_samples(scorer, samples, crops=crops, batch_size=batch_size, progress=progress)
    t_score = time.perf_counter() - t0
    report = evaluate(preds, samples, splits=splits, seed=seed, bootstrap=bootstrap)
    report["model"] = {
        "name": getattr(scorer, "name", "model"),
        "architecture": meta.get("model"),
        "sha256": meta.get("sha256"),
        "preprocess": dict(getattr(scorer, "preprocess", None) or {}),
        "crops": crops,
        **(model_info or {}),
    }
    report["training_overlap"] = training_overlap
    report["timing"] = {"score_seconds": round(t_score, 3), "ms_per_image": round(1000 * t_score / len(samples), 2)}
    if out_dir is not None:
        files = write_report(report, preds, samples, Path(out_dir))
        report["files"] = {k: str(v) for k, v in files.items()}
        log.info("wrote report files to %s", out_dir)
    return report


def validate_checkpoint(
    ckpt_path: str | os.PathLike,
    samples: Sequence[Sample],
    *,
    splits: int = 1,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    crops: int = 1,
    progress: bool = True,
    bootstrap: int = 1000,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Load a checkpoint (hash-verified) as a Scorer and validate it (see `validate_scorer`); the
    training-overlap check also reads a recorded training data spec when it exists here."""
    from metaiqa.evaluation.overlap import training_overlap
    from metaiqa.inference.scorer import Scorer

    _check_args(samples, splits, bootstrap, batch_size)
    scorer = Scorer.from_checkpoint(ckpt_path, crops=crops)
    overlap = training_overlap(scorer.meta, samples, load_specs=True, model=scorer.name)
    return validate_scorer(
        scorer, samples, splits=splits, seed=seed, out_dir=out_dir, crops=crops, bootstrap=bootstrap,
        progress=progress, batch_size=batch_size, model_info={"path": str(ckpt_path)}, training_overlap=overlap,
    )
