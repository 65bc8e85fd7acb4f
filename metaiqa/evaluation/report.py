"""Validation reports: correlation metrics, intervals, per-distortion tables, report files.

`evaluate` turns predictions + labelled samples into a JSON-able dict (NaN -> null);
`write_report` writes report.json, scatter.png (prediction vs MOS with the fitted VQEG
logistic) and a self-contained report.html (inline CSS, the plot embedded as base64).
The CLI (`metaiqa validate`) and the REST service both call these two functions.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metaiqa.data.samples import Sample
from metaiqa.errors import InvalidInput
from metaiqa.evaluation import metrics
from metaiqa.io import atomic_write_bytes, atomic_write_json

SPLIT_FRACTION = 0.8  # share of contents drawn into each random split
MIN_FIT = 5  # fewer pairs than this: no 4-parameter fit (it would interpolate, not fit)
NO_GROUP = "(none)"


class ReportInputError(InvalidInput):
    """Predictions and samples do not make a report: mismatched, empty or non-finite."""


# ---------------------------------------------------------------------------- helpers


def to_jsonable(obj: Any) -> Any:
    """Recursively turn numpy scalars into Python numbers and NaN/inf into None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def _content_key(s: Sample) -> str:
    """Content id for disjoint splits; a sample without one is its own content."""
    return s.content if s.content is not None else f"path:{s.path}"


def _safe(fn, p: np.ndarray, m: np.ndarray) -> float:
    """A metric, or NaN where it is undefined (too few pairs, constant side)."""
    if p.size < 3 or np.ptp(p) == 0 or np.ptp(m) == 0:
        return float("nan")
    return float(fn(p, m))


def _fit(p: np.ndarray, m: np.ndarray) -> tuple[float, float, float, float] | None:
    if p.size < MIN_FIT or np.ptp(p) == 0 or np.ptp(m) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metrics.fit_logistic4(p, m)


def _block(p: np.ndarray, m: np.ndarray, params: tuple[float, ...] | None) -> dict[str, float]:
    """Raw and after-fit metrics of one set of pairs; `params` maps predictions to MOS."""
    out = {
        "n": int(p.size),
        "srocc": _safe(metrics.srocc, p, m),
        "krcc": _safe(metrics.krcc, p, m),
        "plcc": _safe(metrics.plcc, p, m),
        "rmse": float(np.sqrt(np.mean((p - m) ** 2))) if p.size else float("nan"),
    }
    if params is None:
        out.update(srocc_fitted=float("nan"), krcc_fitted=float("nan"))
        out.update(plcc_fitted=float("nan"), rmse_fitted=float("nan"))
        return out
    q = metrics.logistic4(p, *params)
    out["srocc_fitted"] = _safe(metrics.srocc, q, m)
    out["krcc_fitted"] = _safe(metrics.krcc, q, m)
    out["plcc_fitted"] = _safe(metrics.plcc, q, m)
    out["rmse_fitted"] = float(np.sqrt(np.mean((q - m) ** 2))) if p.size else float("nan")
    return out


def _intervals(p: np.ndarray, m: np.ndarray, params, n: int, seed: int) -> dict[str, list[float]]:
    """Percentile bootstrap 95% intervals. After-fit ones keep the full-set mapping fixed
    (refitting 1000 times costs seconds and moves the interval by far less than its width)."""
    nan2 = [float("nan"), float("nan")]
    if n <= 0 or p.size < 3 or np.ptp(p) == 0 or np.ptp(m) == 0:
        return {k: nan2 for k in ("srocc", "krcc", "plcc", "plcc_fitted", "rmse_fitted")}
    ci = {
        "srocc": list(metrics.bootstrap_ci(metrics.srocc, p, m, n=n, seed=seed)),
        "krcc": list(metrics.bootstrap_ci(metrics.krcc, p, m, n=n, seed=seed)),
        "plcc": list(metrics.bootstrap_ci(metrics.plcc, p, m, n=n, seed=seed)),
    }
    if params is None:
        ci["plcc_fitted"] = ci["rmse_fitted"] = nan2
    else:
        q = metrics.logistic4(p, *params)
        ci["plcc_fitted"] = list(metrics.bootstrap_ci(metrics.plcc, q, m, n=n, seed=seed))
        ci["rmse_fitted"] = list(metrics.bootstrap_ci(metrics.rmse, q, m, n=n, seed=seed))
    return ci


def _check(preds: Sequence[float] | np.ndarray, samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(preds, dtype=np.float64).ravel()
    if p.size != len(samples):
        raise ReportInputError(f"{p.size} predictions for {len(samples)} samples; they must pair one to one")
    if p.size < 3:
        raise ReportInputError(f"need at least 3 labelled images to evaluate, got {p.size}")
    m = np.asarray([s.mos for s in samples], dtype=np.float64)
    bad = [str(samples[i].path) for i in np.flatnonzero(~np.isfinite(m))]
    if bad:
        raise ReportInputError(f"{len(bad)} sample(s) have a NaN/inf MOS label, e.g. {bad[0]}")
    bad = [str(samples[i].path) for i in np.flatnonzero(~np.isfinite(p))]
    if bad:
        raise ReportInputError(f"{len(bad)} prediction(s) are NaN/inf, e.g. for {bad[0]}")
    return p, m


def draw_splits(samples: Sequence[Sample], splits: int, seed: int, fraction: float = SPLIT_FRACTION):
    """`splits` random subsets of sample indices, each holding `fraction` of the contents
    (whole contents only, so no split mixes a reference's versions across its border)."""
    keys = [_content_key(s) for s in samples]
    contents = sorted(set(keys))
    k = max(1, round(fraction * len(contents)))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(splits):
        chosen = set(rng.choice(len(contents), size=k, replace=False).tolist())
        picked = {contents[i] for i in chosen}
        out.append(np.asarray([i for i, key in enumerate(keys) if key in picked], dtype=np.int64))
    return out


# ---------------------------------------------------------------------------- public API

SPLIT_METRICS = ("srocc", "krcc", "plcc", "plcc_fitted", "rmse_fitted")


def evaluate(
    preds: Sequence[float] | np.ndarray,
    samples: Sequence[Sample],
    *,
    splits: int = 1,
    seed: int = 0,
    bootstrap: int = 1000,
) -> dict[str, Any]:
    """Score agreement of `preds` with the samples' MOS; a JSON-able report dict.

    Keys: n, n_contents, settings, logistic (fitted parameters, full set), overall (raw and
    after-fit metrics), ci (bootstrap 95% intervals), per_group (one row per Sample.group,
    using the full-set mapping so rows are comparable) and splits (median over `splits`
    random content-disjoint subsets of 80% of the contents, plus per-split values; None
    when splits <= 1).
    """
    if splits < 1:
        raise ReportInputError(f"splits must be >= 1, got {splits}")
    if bootstrap < 0:
        raise ReportInputError(f"bootstrap must be >= 0, got {bootstrap}")
    p, m = _check(preds, samples)
    params = _fit(p, m)

    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.group if s.group is not None else NO_GROUP, []).append(i)
    per_group = {}
    for g in sorted(groups):
        idx = np.asarray(groups[g])
        row = _block(p[idx], m[idx], params)
        row["mos_mean"] = float(m[idx].mean())
        row["pred_mean"] = float(p[idx].mean())
        per_group[g] = row
    if set(groups) == {NO_GROUP}:
        per_group = {}

    split_part = None
    if splits > 1:
        values = []
        for idx in draw_splits(samples, splits, seed):
            ps, ms = p[idx], m[idx]
            values.append({k: v for k, v in _block(ps, ms, _fit(ps, ms)).items() if k in SPLIT_METRICS + ("n",)})
        median = {}
        for k in SPLIT_METRICS:
            arr = np.asarray([v[k] for v in values], dtype=np.float64)
            arr = arr[np.isfinite(arr)]
            median[k] = float(np.median(arr)) if arr.size else float("nan")
        split_part = {"count": splits, "fraction": SPLIT_FRACTION, "median": median, "values": values}

    report = {
        "n": int(p.size),
        "n_contents": len({_content_key(s) for s in samples}),
        "settings": {"splits": splits, "seed": seed, "bootstrap": bootstrap, "level": 0.95},
        "logistic": {"params": list(params) if params else None, "formula": "(b1-b2)/(1+exp(-(x-b3)/|b4|))+b2"},
        "overall": _block(p, m, params),
        "ci": _intervals(p, m, params, bootstrap, seed),
        "per_group": per_group,
        "splits": split_part,
    }
    return to_jsonable(report)


def write_report(
    report: dict[str, Any], preds, samples: Sequence[Sample], out_dir: str | Path
) -> dict[str, Path]:
    """Write report.json, scatter.png, predictions.csv and report.html to `out_dir`
    (atomically, each); returns {"json", "scatter", "predictions", "html"} -> path."""
    from metaiqa.evaluation.plots import render_html, scatter_png

    p, m = _check(preds, samples)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "report.json",
        "scatter": out / "scatter.png",
        "predictions": out / "predictions.csv",
        "html": out / "report.html",
    }
    png = scatter_png(report, p, m, [s.group if s.group is not None else NO_GROUP for s in samples])
    atomic_write_bytes(paths["scatter"], png)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "group", "ref_id", "level", "mos", "prediction"])
    for s, v in zip(samples, p, strict=True):
        w.writerow([s.path, s.group or "", s.ref_id or "", "" if s.level is None else s.level, s.mos, f"{v:.6f}"])
    atomic_write_bytes(paths["predictions"], buf.getvalue().encode())
    atomic_write_json(paths["json"], to_jsonable(report))
    atomic_write_bytes(paths["html"], render_html(report, png).encode())
    return paths
