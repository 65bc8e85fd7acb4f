"""Accuracy on held-out scenes of a synthetic set, per distortion type, next to BRISQUE and NIQE.

The test scenes and held-out types come from the first model's checkpoint sidecar (the run's
content-disjoint split), so no image of these photos was seen in training. Reports, per
model and peer (all higher = better):

* SROCC / PLCC against the committee label, overall and per distortion type
  (split into the types seen in meta-training and the held-out ones);
* mean within-group SROCC: within one reference crop and one type, quality must fall as the
  level rises (an ordinal truth that does not depend on the label committee);
* sanity: share of (reference, type, level) triples where the pristine crop scores above
  the distorted one, and share of level pairs (same reference and type) in the right order.

    python benchmarks/heldout.py --data /work/data/synth_c1 \
        --model metaiqa=runs/fomaml/best.safetensors --peers brisque niqe \
        --out benchmarks/results/heldout.json

With `--scenes all` every scene of --data counts, for a set made with `metaiqa data synth`
from photos no model trained on (session 9: the independent check's 25 photos). With
`--scenes val` the prior's *validation* scenes count instead: the same protocol (crops,
levels, scoring policy) on scenes that may be used to choose between models, which the test
scenes may not.
"""

import argparse
import itertools
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from metaiqa.data.formats import parse_data_spec
from metaiqa.evaluation import metrics
from metaiqa.inference.scorer import Scorer
from metaiqa.models import read_sidecar
from metaiqa.models.pretrained import resolve_checkpoint


def _corr(pred, mos) -> dict[str, float]:
    return {"srocc": metrics.srocc(pred, mos), "plcc": metrics.plcc(pred, mos), "n": len(mos)}


def sanity(scores: dict[Path, float], samples, pristine: dict[str, Path]) -> dict[str, float]:
    """Pristine-above-distorted share, level-pair order share, mean within-group SROCC."""
    above, pairs_ok, pairs, within = [], 0, 0, []
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for s in samples:
        groups[(s.ref_id, s.group)].append(s)
        above.append(scores[pristine[s.ref_id]] > scores[s.path])
    for members in groups.values():
        members.sort(key=lambda s: s.level)
        for a, b in itertools.combinations(members, 2):  # a milder than b
            pairs += 1
            pairs_ok += scores[a.path] > scores[b.path]
        if len(members) >= 3:
            rho = metrics.srocc([scores[s.path] for s in members], [-s.level for s in members])
            if np.isfinite(rho):
                within.append(rho)
    return {
        "pristine_above_distorted": float(np.mean(above)),
        "level_pairs_in_order": pairs_ok / max(pairs, 1),
        "mean_within_group_srocc": float(np.mean(within)) if within else float("nan"),
    }


def _scene(s) -> str:
    """The photo a sample was cut from: crops of one scene share biases, so they are one group."""
    return getattr(s, "content", None) or s.ref_id


def pristine_above_by_scene(scores: dict[Path, float], samples, pristine) -> dict:
    """Pristine-above share per scene, and a 95 % bootstrap interval of the pooled share that
    resamples whole scenes (with 6 test scenes the interval says how much the share depends on
    which scenes happen to be in the test split)."""
    per_scene: dict[str, list[bool]] = defaultdict(list)
    for s in samples:
        per_scene[_scene(s)].append(scores[pristine[s.ref_id]] > scores[s.path])
    lo, hi = metrics.grouped_share_ci([sum(v) for v in per_scene.values()], [len(v) for v in per_scene.values()])
    return {"per_scene": {k: float(np.mean(v)) for k, v in sorted(per_scene.items())}, "ci95": [lo, hi]}


def evaluate_scores(scores: dict[Path, float], samples, pristine, holdout: list[str]) -> dict:
    by_type: dict[str, list] = defaultdict(list)
    for s in samples:
        by_type[s.group].append(s)
    per_type = {t: _corr([scores[s.path] for s in v], [s.mos for s in v]) for t, v in sorted(by_type.items())}
    for t, v in by_type.items():
        checks = sanity(scores, v, pristine)
        per_type[t]["within_group_srocc"] = checks["mean_within_group_srocc"]
        per_type[t]["pristine_above"] = checks["pristine_above_distorted"]
    seen = [s for s in samples if s.group not in holdout]
    unseen = [s for s in samples if s.group in holdout]
    out = {"per_type": per_type, "pristine_above_by_scene": pristine_above_by_scene(scores, samples, pristine),
           "types_backwards": sorted(t for t, r in per_type.items() if r["within_group_srocc"] < 0)}
    for name, part in (("all_types", samples), ("training_types", seen), ("heldout_types", unseen)):
        if part:
            out[name] = {**_corr([scores[s.path] for s in part], [s.mos for s in part]),
                         **sanity(scores, part, pristine)}
    return out


def scene_source(models: dict[str, str]) -> dict:
    """The data record of the first model that names held-out types and scene splits (a meta-trained prior)."""
    for ckpt in models.values():
        data = read_sidecar(resolve_checkpoint(ckpt)).get("data") or {}
        if "holdout_types" in data and "splits" in data:
            return data
    raise SystemExit("no --model's sidecar names holdout_types and scene splits: include the prior "
                     "(e.g. --model prior=metaiqa-prior), whose training defines the test scenes")


def pristine_paths(samples) -> dict[str, Path]:
    """Each reference crop's pristine image: `<ref_id>.png` beside the distorted ones (`metaiqa data synth`)."""
    root = samples[0].path.parent
    return {s.ref_id: root / f"{s.ref_id}.png" for s in samples}


def scenes_of(samples, splits: dict, part: str) -> list:
    """The samples whose scene is in the prior's `part` split ('test', 'val', 'train'), or all of them."""
    if part == "all":
        return list(samples)
    allowed = set(splits[part]["contents"])
    return [s for s in samples if s.content in allowed]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="synthetic data set (with pristine references)")
    ap.add_argument("--model", action="append", default=[], metavar="LABEL=CKPT")
    ap.add_argument("--peers", nargs="*", default=["brisque", "niqe"], choices=["brisque", "niqe"])
    ap.add_argument("--scenes", choices=["test", "val", "all"], default="test",
                    help="'test': the prior's test scenes of --data (default); 'val': its validation scenes (the "
                    "same protocol on scenes you may select models on); 'all': every scene of --data, for a "
                    "set made from photos that no model trained on (e.g. the independent check's photos)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/heldout.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = dict(item.split("=", 1) for item in args.model)
    if not models:
        raise SystemExit("give at least one --model LABEL=CKPT (its sidecar names the test scenes)")

    meta = scene_source(models)
    holdout, samples = meta["holdout_types"], parse_data_spec(args.data)
    samples = scenes_of(samples, meta["splits"], args.scenes)
    if not samples:
        raise SystemExit(f"{args.data}: no images of the prior's {args.scenes} scenes; for a set of other photos "
                         "use --scenes all")
    scenes = {s.content for s in samples}
    pristine = pristine_paths(samples)
    paths = sorted({s.path for s in samples} | set(pristine.values()))

    results: dict = {"data": args.data, "scene_split": args.scenes, "scenes": sorted(scenes), "holdout_types": holdout,
                     "n_images": len(samples), "n_references": len(pristine), "scores": {}, "seconds_per_image": {}}
    scorers = {label: (lambda p, c=ck: Scorer.from_checkpoint(resolve_checkpoint(c)).score_paths(p))
               for label, ck in models.items()}
    if args.peers:
        import peers  # benchmarks/peers.py, run from this folder or with it on sys.path

        scorers.update({name: (lambda p, n=name: list(peers.peer_scores(n, p))) for name in args.peers})
    for label, fn in scorers.items():
        t0 = time.time()
        values = fn(paths)
        results["seconds_per_image"][label] = (time.time() - t0) / len(paths)
        scores = dict(zip(paths, values, strict=True))
        results["scores"][label] = evaluate_scores(scores, samples, pristine, holdout)
        r = results["scores"][label]
        print(f"{label}: training types SROCC {r['training_types']['srocc']:.3f}, held-out types "
              f"SROCC {r.get('heldout_types', {}).get('srocc', float('nan')):.3f} "
              f"({results['seconds_per_image'][label] * 1000:.0f} ms/img)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=float))
    print(f"\nscenes: {args.scenes} ({len(scenes)} scenes, {len(samples)} distorted images)\n")
    print(table(results))


def table(results: dict) -> str:
    labels = list(results["scores"])
    lines = ["| | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    rows = [("all types: within-group SROCC", "all_types", "mean_within_group_srocc"),
            ("all types: pristine above distorted", "all_types", "pristine_above_distorted"),
            ("training types: SROCC", "training_types", "srocc"), ("training types: PLCC", "training_types", "plcc"),
            ("training types: within-group SROCC", "training_types", "mean_within_group_srocc"),
            ("training types: pristine above distorted", "training_types", "pristine_above_distorted"),
            ("training types: level pairs in order", "training_types", "level_pairs_in_order"),
            ("held-out types: SROCC", "heldout_types", "srocc"), ("held-out types: PLCC", "heldout_types", "plcc"),
            ("held-out types: within-group SROCC", "heldout_types", "mean_within_group_srocc"),
            ("held-out types: pristine above distorted", "heldout_types", "pristine_above_distorted"),
            ("held-out types: level pairs in order", "heldout_types", "level_pairs_in_order")]
    for title, part, key in rows:
        lines.append(f"| {title} | " + " | ".join(
            f"{results['scores'][lb].get(part, {}).get(key, float('nan')):.3f}" for lb in labels) + " |")
        if key == "pristine_above_distorted" and part == "all_types":
            lines.append("| all types: pristine above, 95 % interval over scenes | " + " | ".join(
                "{:.3f}–{:.3f}".format(*results["scores"][lb].get("pristine_above_by_scene", {}).get("ci95", [np.nan] * 2))
                for lb in labels) + " |")
    lines.append("| ms per image | " + " | ".join(
        f"{results['seconds_per_image'][lb] * 1000:.0f}" for lb in labels) + " |")
    lines.append("| types ranked backwards | " + " | ".join(
        ", ".join(results["scores"][lb].get("types_backwards", [])) or "none" for lb in labels) + " |")
    lines += ["", "Per type, SROCC vs label (within-group SROCC; pristine above distorted):", "| type | " + " | ".join(labels) + " |",
              "|---|" + "---|" * len(labels)]
    for t in results["scores"][labels[0]]["per_type"]:
        mark = " (held out)" if t in results["holdout_types"] else ""
        cells = [f"{results['scores'][lb]['per_type'][t]['srocc']:.3f} "
                 f"({results['scores'][lb]['per_type'][t]['within_group_srocc']:.2f}; "
                 f"{results['scores'][lb]['per_type'][t].get('pristine_above', float('nan')):.2f})" for lb in labels]
        lines.append(f"| {t}{mark} | " + " | ".join(cells) + " |")
    scenes = results["scores"][labels[0]].get("pristine_above_by_scene", {}).get("per_scene", {})
    if scenes:
        lines += ["", "Per scene, pristine above distorted (all types):", "| scene | " + " | ".join(labels) + " |",
                  "|---|" + "---|" * len(labels)]
        lines += [f"| {sc} | " + " | ".join(
            f"{results['scores'][lb]['pristine_above_by_scene']['per_scene'][sc]:.3f}" for lb in labels) + " |"
            for sc in scenes]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
