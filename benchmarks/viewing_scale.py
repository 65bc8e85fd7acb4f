"""Which viewing scale should the whole-image policy use? Measured, not assumed.

Scores the same photos with one model under the "views" policy at several short-side scales
and reports, per scale: agreement with people on the model's VALIDATION photos (the
8 % of BIQ2021's train split that its joint training carved out and never fitted — never the
test split), ordering of synthetic damage on held-out scenes (within-group SROCC and
pristine-above share, as in heldout.py), views per image and ms per image.

Caveat printed with the table: the model was trained on crops at one scale (its config's
`scale`), so this measures the scoring scale for a trained model, not a retraining at each.

    python benchmarks/viewing_scale.py --model metaiqa-default \
        --config configs/fine_tune/default.yaml --human biq2021-train:/work/data/biq2021 \
        --synth /work/data/synth_fs --scales 256 320 384 448 512 --limit 400 \
        --out benchmarks/results/viewing_scale.json
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from heldout import evaluate_scores, pristine_paths  # noqa: E402

from metaiqa.data.formats import parse_data_spec  # noqa: E402
from metaiqa.data.transforms import view_boxes, viewing_size  # noqa: E402
from metaiqa.evaluation import metrics  # noqa: E402
from metaiqa.inference.scorer import Scorer  # noqa: E402
from metaiqa.meta.human_data import human_split  # noqa: E402
from metaiqa.meta.joint import JointConfig  # noqa: E402
from metaiqa.models import read_sidecar  # noqa: E402
from metaiqa.models.pretrained import resolve_checkpoint  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="metaiqa-default", help="bundled name or checkpoint path")
    p.add_argument("--config", type=Path, default=HERE.parent / "configs/fine_tune/default.yaml",
                   help="the joint-training config that produced the model (gives its validation carve-out)")
    p.add_argument("--human", required=True, help="data spec of the train split, e.g. biq2021-train:PATH")
    p.add_argument("--synth", default="", help="synthetic set with pristine references (held-out scenes)")
    p.add_argument("--scales", nargs="+", type=int, default=[256, 320, 384, 448, 512])
    p.add_argument("--max-views", nargs="+", type=int, default=[16],
                   help="caps on views per image to compare (each with every scale; 4 keeps 2x2 of a 4:3 photo)")
    p.add_argument("--crop-4x3", action="store_true",
                   help="score a centred 4:3 crop of each validation photo (BIQ2021's are all 512x512, "
                        "so only crops show what --max-views does to 4:3 photos); the synthetic part is skipped")
    p.add_argument("--limit", type=int, default=0, help="first N validation photos only (0 = all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "results" / "viewing_scale.json")
    return p.parse_args(argv)


def validation_photos(config: Path, human: str, limit: int) -> list:
    raw = yaml.safe_load(config.read_text())
    cfg = JointConfig(**{**raw, "human": human})
    _, val = human_split(cfg)
    return val[:limit] if limit else val


def heldout_set(synth: str, ckpt: str) -> tuple[list, dict, list[str]]:
    """Samples of the test scenes of the model's synthetic prior, pristine paths, held-out types."""
    data = read_sidecar(ckpt)["data"]
    splits = data.get("init_splits") or data["splits"]
    test = set(splits["test"]["contents"])
    samples = [s for s in parse_data_spec(synth) if s.content in test]
    return samples, pristine_paths(samples), list(data.get("holdout_types", []))


def views_per_image(height: int, width: int, scale: int, size: int = 224, max_views: int = 16) -> int:
    h, w = viewing_size(height, width, scale, size)
    return len(view_boxes(h, w, size, max_views))


def crop_4x3(path) -> np.ndarray:
    """The photo's centred 4:3 landscape crop (full width), as a uint8 array."""
    img = np.asarray(Image.open(path).convert("RGB"))
    h, w = img.shape[:2]
    ch = min(h, round(w * 3 / 4))
    return np.ascontiguousarray(img[(h - ch) // 2 : (h - ch) // 2 + ch])


def measure_scale(ckpt: str, scale: int, val: list, synth: tuple | None, max_views: int = 16,
                  crop: bool = False) -> dict:
    scorer = Scorer.from_checkpoint(ckpt)
    preprocess = {**scorer.preprocess, "scale": scale, "max_views": max_views}
    scorer = Scorer(scorer.model, preprocess, name=scorer.name, meta=scorer.meta)
    t0 = time.perf_counter()
    if crop:
        pred = np.asarray([x for i in range(0, len(val), 16)  # batches of 16, as score_paths
                           for x in scorer.score_arrays([crop_4x3(s.path) for s in val[i : i + 16]])], dtype=float)
    else:
        pred = np.asarray(scorer.score_paths([s.path for s in val]), dtype=float)
    seconds = (time.perf_counter() - t0) / len(val)
    mos = np.asarray([s.mos for s in val], dtype=float)
    row = {"scale": scale, "max_views": max_views, "n_val": len(val), "ms_per_image": 1000 * seconds,
           "views_per_512px_photo": views_per_image(512, 512, scale, max_views=max_views),
           "views_per_4x3_photo": views_per_image(384, 512, scale, max_views=max_views),
           "val_srocc": metrics.srocc(pred, mos), "val_plcc": metrics.plcc(pred, mos),
           "val_srocc_ci95": metrics.bootstrap_ci(metrics.srocc, pred, mos, n=500), "crop_4x3": crop,
           "pred": pred.tolist()}
    if synth is not None:
        samples, pristine, holdout = synth
        paths = sorted({s.path for s in samples} | set(pristine.values()))
        scores = dict(zip(paths, scorer.score_paths(paths), strict=True))
        res = evaluate_scores(scores, samples, pristine, holdout)
        part = res.get("training_types") or res["heldout_types"]
        row.update({"synth_within_group_srocc": part["mean_within_group_srocc"],
                    "synth_pristine_above": part["pristine_above_distorted"]})
    return row


def table(rows: list[dict]) -> str:
    lines = ["| scale | max views | val SROCC [95 % CI] | val PLCC | synth within-group | pristine above "
             "| views (512², 4:3) | ms/img |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["val_srocc_ci95"]
        lines.append(f"| {r['scale']} | {r.get('max_views', 16)} | {r['val_srocc']:.3f} [{lo:.3f}, {hi:.3f}] | {r['val_plcc']:.3f} | "
                     f"{r.get('synth_within_group_srocc', float('nan')):.3f} | "
                     f"{r.get('synth_pristine_above', float('nan')):.3f} | {r['views_per_512px_photo']}, "
                     f"{r.get('views_per_4x3_photo', '?')} | "
                     f"{r['ms_per_image']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    ckpt = str(resolve_checkpoint(args.model, None))
    val = validation_photos(args.config, args.human, args.limit)
    synth = heldout_set(args.synth, ckpt) if args.synth else None
    rows = []
    for scale in args.scales:
        for cap in args.max_views:
            rows.append(measure_scale(ckpt, scale, val, None if args.crop_4x3 else synth, cap, args.crop_4x3))
            print(f"scale {scale}, max views {cap}: val SROCC {rows[-1]['val_srocc']:.3f}, "
                  f"{rows[-1]['ms_per_image']:.0f} ms/img", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "checkpoint": ckpt, "config": str(args.config),
                                    "trained_scale": yaml.safe_load(args.config.read_text()).get("scale"),
                                    "rows": rows}, indent=2, default=float))
    print()
    print(table(rows))
    first = np.asarray(rows[0]["pred"])
    for r in rows[1:]:
        delta = np.abs(np.asarray(r["pred"]) - first)
        print(f"scale {r['scale']}, max views {r['max_views']} vs the first row: max |score delta| "
              f"{delta.max():.4f}, mean {delta.mean():.4f}, SROCC between them {metrics.srocc(r['pred'], first):.4f}")
    print("\nThe model was trained at one scale; this varies only the scoring scale.")


if __name__ == "__main__":
    main()
