"""Zero-shot vs few-shot accuracy on distortion types held out of meta-training.

For each model (e.g. the meta-trained prior and the plain-regression baseline trained on
the same images and budget), on the held-out distortion types recorded in the first
model's checkpoint sidecar:

* test set: the held-out types on the run's TEST scenes (never seen in any form);
* zero-shot: score the test set with the model as it is;
* K-shot: for each held-out type and each split, fine-tune a copy on K labelled images
  of that type drawn from the non-test scenes (whole contents; the epoch count chosen by
  content-disjoint k-fold over those K images, see metaiqa/meta/selection.py), score that
  type's test images; report the median over splits.

Prints a markdown table and writes the raw numbers as JSON.

    python benchmarks/fewshot.py --data /work/data/synth384 \
        --model metaiqa=runs/fomaml/best.safetensors --model supervised=runs/supervised/best.safetensors \
        --shots 50 --splits 3 --out benchmarks/results/fewshot.json
"""

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from metaiqa.data.formats import parse_data_spec
from metaiqa.data.tasks import few_shot_split, select_groups
from metaiqa.evaluation import metrics
from metaiqa.meta.finetune import FineTuneConfig, fine_tune, predict
from metaiqa.meta.images import ImageCache
from metaiqa.models import load_checkpoint


def _corr(pred, mos) -> dict[str, float]:
    return {"srocc": metrics.srocc(pred, mos), "plcc": metrics.plcc(pred, mos)}


def _pooled_and_per_type(preds: dict[str, np.ndarray], tests: dict[str, list]) -> dict:
    per_type = {t: _corr(preds[t], [s.mos for s in tests[t]]) for t in tests}
    p = np.concatenate([preds[t] for t in tests])
    m = np.concatenate([[s.mos for s in tests[t]] for t in tests])
    return {"pooled": _corr(p, m), "per_type": per_type}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="the data set the models were trained on (spec)")
    ap.add_argument("--model", action="append", default=[], metavar="LABEL=CKPT")
    ap.add_argument("--table", nargs="+", type=Path, metavar="JSON",
                    help="only print the combined table of earlier result files (e.g. one per model)")
    ap.add_argument("--shots", type=int, nargs="+", default=[50])
    ap.add_argument("--splits", type=int, default=3, help="random few-shot draws per type (median reported)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--folds", type=int, default=4, help="k-fold over the shots choosing the epoch count")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument("--crop-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/fewshot.json"))
    args = ap.parse_args()
    if args.table:
        print(table(merge([json.loads(f.read_text()) for f in args.table])))
        return
    if not (args.data and args.model):
        ap.error("--data and at least one --model are required (or --table)")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    models = dict(item.split("=", 1) for item in args.model)
    loaded = {label: load_checkpoint(path) for label, path in models.items()}
    first = next(iter(loaded.values())).meta["data"]
    holdout = first["holdout_types"]
    test_contents = set(first["splits"]["test"]["contents"])
    for label, ck in loaded.items():
        d = ck.meta["data"]
        if d["holdout_types"] != holdout or set(d["splits"]["test"]["contents"]) != test_contents:
            raise SystemExit(f"{label}: different held-out types or test scenes than the first model")

    samples = select_groups(parse_data_spec(args.data), include=holdout)
    tests = {t: [s for s in samples if s.group == t and s.content in test_contents] for t in holdout}
    pools = {t: [s for s in samples if s.group == t and s.content not in test_contents] for t in holdout}
    cache = ImageCache()
    test_imgs = {t: [cache.get(s.path) for s in tests[t]] for t in holdout}

    results: dict = {
        "data": args.data,
        "holdout_types": holdout,
        "test_scenes": sorted(test_contents),
        "n_test": {t: len(v) for t, v in tests.items()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("model", "out")},
        "models": {label: str(path) for label, path in models.items()},
        "zero_shot": {},
        "few_shot": {},
    }
    for label, ck in loaded.items():
        t0 = time.time()
        preds = {t: predict(ck.model, test_imgs[t], ck.preprocess) for t in holdout}
        results["zero_shot"][label] = _pooled_and_per_type(preds, tests)
        print(f"{label}: zero-shot pooled SROCC {results['zero_shot'][label]['pooled']['srocc']:.3f} "
              f"({time.time() - t0:.0f}s)", flush=True)
        for k in args.shots:
            runs = []
            for split in range(args.splits):
                preds = {}
                for t in holdout:
                    shots, _, _ = few_shot_split(pools[t], k, seed=1000 * split + k, val_fraction=0.0)
                    cfg = FineTuneConfig(
                        shots=k, epochs=args.epochs, folds=args.folds, lr=args.lr,
                        head_lr=args.head_lr, crop_size=args.crop_size, seed=split,
                    )
                    tuned, _ = fine_tune(ck.model, shots, cfg, preprocess=ck.preprocess,
                                         progress=False, cache=cache)
                    preds[t] = predict(tuned, test_imgs[t], ck.preprocess)
                runs.append(_pooled_and_per_type(preds, tests))
            med = {
                "pooled": {m: float(np.median([r["pooled"][m] for r in runs])) for m in ("srocc", "plcc")},
                "per_type": {
                    t: {m: float(np.median([r["per_type"][t][m] for r in runs])) for m in ("srocc", "plcc")}
                    for t in holdout
                },
                "splits": runs,
            }
            results["few_shot"].setdefault(label, {})[str(k)] = med
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2))  # partial results survive an interruption
            print(f"{label}: {k}-shot pooled SROCC {med['pooled']['srocc']:.3f} (median of {args.splits})",
                  flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print()
    print(table(results))


def merge(parts: list[dict]) -> dict:
    """Combine result files of runs on the same data and test scenes (e.g. one per model)."""
    out = json.loads(json.dumps(parts[0]))
    for part in parts[1:]:
        if part["test_scenes"] != out["test_scenes"] or part["holdout_types"] != out["holdout_types"]:
            raise SystemExit("result files were made on different test scenes or held-out types")
        for key in ("models", "zero_shot", "few_shot"):
            out[key].update(part[key])
    return out


def table(results: dict) -> str:
    shots = results["settings"]["shots"]
    head = "| model | zero-shot SROCC | zero-shot PLCC | " + " | ".join(
        f"{k}-shot SROCC | {k}-shot PLCC" for k in shots) + " |"
    lines = [head, "|" + "---|" * (3 + 2 * len(shots))]
    for label, zs in results["zero_shot"].items():
        cells = [f"{zs['pooled']['srocc']:.3f}", f"{zs['pooled']['plcc']:.3f}"]
        for k in shots:
            fs = results["few_shot"].get(label, {}).get(str(k), {}).get("pooled")
            cells += [f"{fs['srocc']:.3f}", f"{fs['plcc']:.3f}"] if fs else ["–", "–"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Per held-out type, SROCC zero-shot / " + f"{shots[-1]}-shot:")
    lines.append("| type | " + " | ".join(results["zero_shot"]) + " |")
    lines.append("|---|" + "---|" * len(results["zero_shot"]))
    for t in results["holdout_types"]:
        cells = []
        for lb in results["zero_shot"]:
            fs = results["few_shot"].get(lb, {}).get(str(shots[-1]))
            tuned = f"{fs['per_type'][t]['srocc']:.3f}" if fs else "–"
            cells.append(f"{results['zero_shot'][lb]['per_type'][t]['srocc']:.3f} / {tuned}")
        lines.append(f"| {t} (n={results['n_test'][t]}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
