"""Agreement with people on real photos: BIQ2021's official test split, models next to BRISQUE/NIQE.

For each `--model LABEL=CKPT` (a checkpoint path or a bundled name such as `metaiqa-prior`) and
each peer, in one run on the same 2,000 test photos: SROCC, KRCC, PLCC after the VQEG 4-parameter
logistic (signed: negative when the fitted logistic decreases, i.e. the scorer ranks
backwards) and raw PLCC against the published MOS, each with a 95 % percentile bootstrap interval
(photos resampled with replacement, the same resamples for every scorer, so the paired interval
of "model SROCC minus peer SROCC" is reported too; every photo is its own content, so resampling
photos is resampling contents), and the wall time per image (decode included, 1 thread).

Scores are cached per image file in `--cache` (see score_cache.py): a later run, e.g. with a
new model, reuses the peers' scores and says so in its output.

    cd benchmarks && OMP_NUM_THREADS=1 python real_photos.py --model prior=metaiqa-prior \\
        --peers brisque niqe --out results/real_photos_prior.json

`--time-threads 1 2` instead times each model's own preprocessing policy at 1 and 2 torch
threads on the first `--time-images` test photos (sorted by file name), one image per call,
whole wall clock per image (file read + decode + views + forward), next to the peers on the
same images:

    cd benchmarks && python real_photos.py --model prior=metaiqa-prior --peers brisque \\
        --time-threads 1 2 --out results/real_photos_timing_prior.json
"""

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import score_cache  # noqa: E402  (benchmarks/score_cache.py)

from metaiqa.data.formats import parse_data_spec  # noqa: E402
from metaiqa.evaluation import metrics  # noqa: E402

METRICS = ("srocc", "krcc", "plcc_logistic", "plcc_raw")
HERE = Path(__file__).resolve().parent


def point_metrics(pred: np.ndarray, mos: np.ndarray) -> dict[str, float]:
    """SROCC, KRCC, PLCC after the VQEG logistic fit, raw PLCC (NaN if a side is constant)."""
    if np.ptp(pred) == 0 or np.ptp(mos) == 0:
        return dict.fromkeys(METRICS, float("nan"))
    # The fit is constrained to be increasing (every scorer here is "higher = better"); a scorer
    # that does not rise with the MOS has no logistic fit: its after-fit PLCC is NaN (see plcc_raw).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = metrics.fit_logistic(pred, mos)
    fitted = metrics.logistic4(pred, *fit.params) if fit.ok else None
    plcc_fit = metrics.plcc(fitted, mos) if fitted is not None and np.ptp(fitted) else float("nan")
    return {"srocc": metrics.srocc(pred, mos), "krcc": metrics.krcc(pred, mos),
            "plcc_logistic": plcc_fit, "plcc_raw": metrics.plcc(pred, mos)}


def _interval(values: list[float]) -> list[float]:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return [float(np.quantile(arr, 0.025)), float(np.quantile(arr, 0.975))] if arr.size else [np.nan, np.nan]


def bootstrap(scores: dict[str, np.ndarray], mos: np.ndarray, peers: list[str], n: int, seed: int = 0) -> dict:
    """95 % intervals of every metric per scorer, and of SROCC(model) - SROCC(peer), same resamples."""
    rng = np.random.default_rng(seed)
    draws: dict[str, dict[str, list[float]]] = {lb: {m: [] for m in METRICS} for lb in scores}
    for _ in tqdm(range(n), desc="bootstrap", file=sys.stderr):
        idx = rng.integers(0, mos.size, mos.size)
        for lb, pred in scores.items():
            for m, v in point_metrics(pred[idx], mos[idx]).items():
                draws[lb][m].append(v)
    out = {lb: {m: _interval(v) for m, v in d.items()} for lb, d in draws.items()}
    models = [lb for lb in scores if lb not in peers]
    diffs = {f"{a} - {b}": _interval(np.subtract(draws[a]["srocc"], draws[b]["srocc"]).tolist())
             for a in models for b in peers}
    return {"intervals": out, "srocc_differences": diffs}


def load_test(spec: str, limit: int | None) -> tuple[list[Path], np.ndarray]:
    samples = sorted(parse_data_spec(spec), key=lambda s: str(s.path))
    samples = samples[:limit] if limit else samples
    return [s.path for s in samples], np.asarray([s.mos for s in samples], dtype=np.float64)


def score_all(args, paths: list[Path]) -> tuple[dict, dict, list[str], dict]:
    """Scores of every model and peer (through the cache), timing and provenance notes."""
    cache = score_cache.ScoreCache.load(args.cache)
    run = score_cache.run_id()
    scores, timing, notes, info = {}, {}, [], {}
    jobs = [(lb, *score_cache.model_fn(ck, args.threads, args.backend)) for lb, ck in args.models.items()]
    jobs += [(p, p, score_cache.peer_fn(p), {"peer": p}) for p in args.peers]
    for label, scorer_id, fn, meta in jobs:
        refresh = args.refresh_models and scorer_id.startswith("model:")
        scored = score_cache.score_with_cache(scorer_id, fn, paths, cache, run, refresh=refresh)
        scores[label] = np.asarray(scored.scores)
        timing[label] = scored.seconds_per_image
        info[label] = {**meta, "scorer_id": scorer_id, "computed": scored.computed, "cached": scored.cached,
                       "cached_runs": scored.cached_runs}
        note = score_cache.cache_note(label, scored, args.cache)
        if note:
            notes.append(note)
    return scores, timing, notes, info


def evaluate(args) -> dict:
    paths, mos = load_test(args.data, args.limit)
    scores, timing, notes, info = score_all(args, paths)
    point = {lb: point_metrics(s, mos) for lb, s in scores.items()}
    boot = bootstrap(scores, mos, args.peers, args.boot)
    return {"data": args.data, "n_images": len(paths), "threads": args.threads, "bootstrap_resamples": args.boot,
            "metrics": point, **boot, "ms_per_image": {lb: t * 1000 for lb, t in timing.items()},
            "scorers": info, "cache": str(args.cache), "cache_notes": notes,
            "finished": score_cache.run_id(), "loadavg_at_end": os.getloadavg()}


def _cell(value: float, ci: list[float]) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def table(res: dict) -> str:
    lines = ["| model / peer | SROCC [95% CI] | KRCC [95% CI] | PLCC after logistic [95% CI] | PLCC raw [95% CI] "
             "| ms/img |", "|---|---|---|---|---|---|"]
    for lb, m in res["metrics"].items():
        ci = res["intervals"][lb]
        lines.append(f"| {lb} | " + " | ".join(_cell(m[k], ci[k]) for k in METRICS)
                     + f" | {res['ms_per_image'][lb]:.0f} |")
    if res["srocc_differences"]:
        lines += ["", "| paired SROCC difference | value [95% CI] |", "|---|---|"]
        for pair, ci in res["srocc_differences"].items():
            a, b = pair.split(" - ")
            lines.append(f"| {pair} | {res['metrics'][a]['srocc'] - res['metrics'][b]['srocc']:+.3f} "
                         f"[{ci[0]:+.3f}, {ci[1]:+.3f}] |")
    return "\n".join(lines + [""] + [f"Note: {n}" for n in res["cache_notes"]])


def _time_one(fn, paths: list[Path]) -> dict[str, float]:
    times = []
    for p in tqdm(paths, file=sys.stderr, leave=False):
        t0 = time.perf_counter()
        fn([p])
        times.append(time.perf_counter() - t0)
    return {"mean_ms": 1000 * float(np.mean(times)), "median_ms": 1000 * float(np.median(times))}


def time_threads(args) -> dict:
    """Per-image wall time, one image per call, for each thread count; peers on the same images."""
    import cv2

    paths, _ = load_test(args.data, args.time_images)
    out: dict = {"data": args.data, "n_images": len(paths), "first": str(paths[0]), "last": str(paths[-1]),
                 "threads": args.time_threads, "ms": {}, "scorers": {}, "loadavg": {}}
    for t in args.time_threads:
        torch.set_num_threads(t)
        cv2.setNumThreads(t)
        out["loadavg"][str(t)] = os.getloadavg()
        jobs = [(lb, *score_cache.model_fn(ck, t)) for lb, ck in args.models.items()]
        jobs += [(p, p, score_cache.peer_fn(p), {"peer": p}) for p in args.peers]
        for label, _sid, fn, meta in jobs:
            fn(paths[:3])  # warm-up: weights in cache, allocator, lazy imports
            out["ms"].setdefault(label, {})[str(t)] = _time_one(fn, paths)
            out["scorers"][label] = meta
            print(f"{label} @ {t} thread(s): {out['ms'][label][str(t)]['median_ms']:.0f} ms/img (median)",
                  file=sys.stderr, flush=True)
    return out


def timing_table(res: dict) -> str:
    ts = [str(t) for t in res["threads"]]
    head = " | ".join(f"{t} thread{'s' if t != '1' else ''}: median (mean) ms/img" for t in ts)
    lines = [f"| scorer | policy | {head} |", "|---|---|" + "---|" * len(ts)]
    for lb, per in res["ms"].items():
        policy = res["scorers"][lb].get("preprocess", "peer")
        cells = " | ".join(f"{per[t]['median_ms']:.0f} ({per[t]['mean_ms']:.0f})" for t in ts)
        lines.append(f"| {lb} | {json.dumps(policy) if isinstance(policy, dict) else policy} | {cells} |")
    loads = ", ".join(f"{t} thread(s): {', '.join(f'{x:.1f}' for x in v)}" for t, v in res["loadavg"].items())
    return "\n".join(lines + ["", f"Load average (1/5/15 min) when each thread count started: {loads}."])


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="biq2021:/work/data/biq2021", help="test split spec (default: %(default)s)")
    ap.add_argument("--model", action="append", default=[], metavar="LABEL=CKPT",
                    help="model to score (checkpoint path or bundled name); repeatable")
    ap.add_argument("--peers", nargs="*", default=["brisque", "niqe"], choices=["brisque", "niqe"])
    ap.add_argument("--backend", default="torch", choices=["torch", "onnx", "int8", "auto"],
                    help="what runs the models (default torch, float32; int8: a model's NAME.int8.onnx, "
                         "as `metaiqa score` runs metaiqa-default)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the accuracy run (default 1)")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N photos (by name): smoke tests")
    ap.add_argument("--refresh-models", action="store_true",
                    help="recompute the models' cached scores (peers stay cached): after scorer code changes")
    ap.add_argument("--cache", type=Path, default=HERE / "results" / "score_cache_biq2021.json")
    ap.add_argument("--time-threads", type=int, nargs="+", default=None, metavar="T",
                    help="timing mode: per-image wall time at these torch thread counts")
    ap.add_argument("--time-images", type=int, default=100, help="photos for the timing mode (default 100)")
    ap.add_argument("--out", type=Path, required=True, help="JSON results file")
    args = ap.parse_args(argv)
    args.models = dict(item.split("=", 1) for item in args.model)
    if len(args.models) != len(args.model) or not all(args.models):
        ap.error("--model takes unique LABEL=CKPT pairs")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.time_threads:
        res = time_threads(args)
        text = timing_table(res)
    else:
        import cv2

        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)  # BRISQUE goes through OpenCV
        res = evaluate(args)
        text = table(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, default=float))
    print(text)


if __name__ == "__main__":
    main()
