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
MAX_ABS_VALUE = 1e12  # larger labels/predictions overflow squared errors and the fit; no scale needs them


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


def _fit(p: np.ndarray, m: np.ndarray) -> metrics.LogisticFit:
    """The increasing VQEG logistic, or a not-ok fit saying why none was made or it failed."""
    if p.size < MIN_FIT:
        return metrics.LogisticFit(None, False, f"{p.size} pairs; at least {MIN_FIT} are needed for a 4-parameter fit")
    return metrics.fit_logistic(p, m)


def _block(p: np.ndarray, m: np.ndarray, fit: metrics.LogisticFit) -> dict[str, float]:
    """Raw and after-fit metrics of one set of pairs; `fit` maps predictions to MOS.

    After the fit only PLCC and RMSE are reported: SROCC/KRCC cannot change under an
    increasing map, and a failed/flat fit gives NaN rather than numbers from a guessed curve.
    """
    out = {
        "n": int(p.size),
        "srocc": _safe(metrics.srocc, p, m),
        "krcc": _safe(metrics.krcc, p, m),
        "plcc": _safe(metrics.plcc, p, m),
        "rmse": float(np.sqrt(np.mean((p - m) ** 2))) if p.size else float("nan"),
        "plcc_fitted": float("nan"),
        "rmse_fitted": float("nan"),
    }
    if fit.ok and fit.params is not None and p.size:
        q = metrics.logistic4(p, *fit.params)
        out["plcc_fitted"] = _safe(metrics.plcc, q, m)
        out["rmse_fitted"] = float(np.sqrt(np.mean((q - m) ** 2)))
    return out


def _intervals(p: np.ndarray, m: np.ndarray, fit: metrics.LogisticFit, n: int, seed: int,
               contents: Sequence[str]) -> dict[str, list[float]]:
    """Percentile bootstrap 95% intervals, resampling whole contents (all images of a scene stay
    together; images of one content are not independent). After-fit ones keep the full-set
    mapping fixed (refitting 1000 times costs seconds and moves the interval by far less than
    its width)."""
    nan2 = [float("nan"), float("nan")]
    keys = ("srocc", "krcc", "plcc", "plcc_fitted", "rmse_fitted")
    if n <= 0 or p.size < 3 or np.ptp(p) == 0 or np.ptp(m) == 0:
        return {k: nan2 for k in keys}
    kw = {"groups": list(contents), "n": n, "seed": seed}
    ci = {k: list(metrics.bootstrap_ci(getattr(metrics, k), p, m, **kw)) for k in ("srocc", "krcc", "plcc")}
    if fit.ok and fit.params is not None:
        q = metrics.logistic4(p, *fit.params)
        ci["plcc_fitted"] = list(metrics.bootstrap_ci(metrics.plcc, q, m, **kw))
        ci["rmse_fitted"] = list(metrics.bootstrap_ci(metrics.rmse, q, m, **kw))
    else:
        ci["plcc_fitted"] = ci["rmse_fitted"] = nan2
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
    for what, values in (("MOS label", m), ("prediction", p)):
        big = np.flatnonzero(np.abs(values) > MAX_ABS_VALUE)
        if big.size:
            i = int(big[0])
            raise ReportInputError(f"{big.size} {what}(s) beyond +-{MAX_ABS_VALUE:g}, e.g. {values[i]:g} for "
                                   f"{samples[i].path}; rescale the scores")
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


def _per_group(samples: Sequence[Sample], p: np.ndarray, m: np.ndarray, fit) -> dict[str, dict[str, float]]:
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.group if s.group is not None else NO_GROUP, []).append(i)
    if set(groups) == {NO_GROUP}:
        return {}
    out = {}
    for g in sorted(groups):
        idx = np.asarray(groups[g])
        row = _block(p[idx], m[idx], fit)
        row["mos_mean"] = float(m[idx].mean())
        row["pred_mean"] = float(p[idx].mean())
        out[g] = row
    return out


def _splits(samples: Sequence[Sample], p: np.ndarray, m: np.ndarray, splits: int, seed: int) -> dict[str, Any]:
    values = []
    for idx in draw_splits(samples, splits, seed):
        ps, ms = p[idx], m[idx]
        fit = _fit(ps, ms)
        row = {k: v for k, v in _block(ps, ms, fit).items() if k in SPLIT_METRICS + ("n",)}
        values.append({**row, "fit_ok": fit.ok})
    median = {}
    for k in SPLIT_METRICS:
        arr = np.asarray([v[k] for v in values], dtype=np.float64)
        arr = arr[np.isfinite(arr)]
        median[k] = float(np.median(arr)) if arr.size else float("nan")
    return {"count": splits, "fraction": SPLIT_FRACTION, "median": median,
            "fit_failures": sum(not v["fit_ok"] for v in values), "values": values}


def evaluate(
    preds: Sequence[float] | np.ndarray,
    samples: Sequence[Sample],
    *,
    splits: int = 1,
    seed: int = 0,
    bootstrap: int = 1000,
) -> dict[str, Any]:
    """Score agreement of `preds` with the samples' MOS; a JSON-able report dict.

    Keys: n, n_contents, settings, logistic (the increasing VQEG fit on the full set: params,
    fit_ok, reason), overall (raw SROCC/KRCC/PLCC/RMSE and, when the fit is ok, PLCC/RMSE
    after it), ci (bootstrap 95% intervals resampling whole contents, `_content_key`),
    per_group (one row per Sample.group, using the full-set mapping so rows are comparable)
    and splits (median over `splits` random content-disjoint subsets of 80% of the contents,
    plus per-split values and fit failures; None when splits <= 1).
    """
    if splits < 1:
        raise ReportInputError(f"splits must be >= 1, got {splits}")
    if bootstrap < 0:
        raise ReportInputError(f"bootstrap must be >= 0, got {bootstrap}")
    p, m = _check(preds, samples)
    fit = _fit(p, m)
    contents = [_content_key(s) for s in samples]
    report = {
        "n": int(p.size),
        "n_contents": len(set(contents)),
        "settings": {"splits": splits, "seed": seed, "bootstrap": bootstrap, "level": 0.95,
                     "bootstrap_unit": "content"},
        "logistic": {"params": list(fit.params) if fit.ok and fit.params else None, "fit_ok": fit.ok,
                     "reason": fit.reason, "increasing": True,
                     "formula": "(b1-b2)/(1+exp(-(x-b3)/|b4|))+b2, b1 >= b2"},
        "overall": _block(p, m, fit),
        "ci": _intervals(p, m, fit, bootstrap, seed, contents),
        "per_group": _per_group(samples, p, m, fit),
        "splits": _splits(samples, p, m, splits, seed) if splits > 1 else None,
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
