"""Does BIQ2021's official split flatter a model? Near-duplicate photos across train and test.

Some test photos are near-copies of train photos (same picture, re-encoded or lightly edited;
their MOS agree closely). A model trained on the train split may remember those, so this script
reports `real_photos.py`'s metrics three ways on the same scores: all test photos, the test
photos WITHOUT a near-duplicate in train (the honest figure), and the near-duplicates alone.

Near-duplicate: a 256-bit difference hash (grey 17x16, sign of horizontal differences) within
`--max-distance` bits (default 10 of 256; unrelated photos sit ~80 bits apart) of some train
photo. Scores come through the same cache as `real_photos.py` (nothing is recomputed that a
run already has). Takes every `real_photos.py` option, plus `--train` and `--max-distance`:

    cd benchmarks && python biq_overlap.py --model default=metaiqa-default --peers brisque niqe \\
        --threads 2 --out results/biq_overlap.json
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_photos  # noqa: E402  (benchmarks/real_photos.py)

from metaiqa.data.formats import parse_data_spec  # noqa: E402


def dhash_bits(path: Path) -> np.ndarray:
    """256 bits: is each pixel of a 17x16 grey thumbnail brighter than its left neighbour."""
    with Image.open(path) as im:
        im.draft("L", (64, 64))
        grey = np.asarray(im.convert("L").resize((17, 16), Image.BILINEAR), dtype=np.int16)
    return (grey[:, 1:] > grey[:, :-1]).ravel()


def nearest(test_bits: np.ndarray, train_bits: np.ndarray, block: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(Hamming distance to the nearest train hash, its index) for every test hash."""
    a, b = test_bits.astype(np.int32), train_bits.astype(np.int32)
    dist, idx = [], []
    for start in range(0, len(a), block):
        blk = a[start : start + block]
        d = blk.sum(1)[:, None] + b.sum(1)[None, :] - 2 * blk @ b.T
        dist.append(d.min(1))
        idx.append(d.argmin(1))
    return np.concatenate(dist), np.concatenate(idx)


def hashes(paths: list[Path], what: str) -> np.ndarray:
    return np.stack([dhash_bits(p) for p in tqdm(paths, desc=f"hashing {what}", file=sys.stderr)])


def subset_metrics(scores: dict[str, np.ndarray], mos: np.ndarray, keep: np.ndarray) -> dict[str, dict]:
    return {lb: {"n": int(keep.sum()), **real_photos.point_metrics(s[keep], mos[keep])} for lb, s in scores.items()}


def evaluate(args, train_spec: str, max_distance: int) -> dict:
    paths, mos = real_photos.load_test(args.data, args.limit)
    train = parse_data_spec(train_spec)
    dist, idx = nearest(hashes(paths, "test"), hashes([s.path for s in train], "train"))
    dup = dist <= max_distance
    scores, _, notes, info = real_photos.score_all(args, paths)
    clean = {lb: s[~dup] for lb, s in scores.items()}
    pairs = [{"test": paths[i].name, "train": train[idx[i]].path.name, "bits": int(dist[i]),
              "mos_test": float(mos[i]), "mos_train": float(train[idx[i]].mos)} for i in np.flatnonzero(dup)]
    return {
        "data": args.data, "train": train_spec, "max_distance": max_distance, "n_test": len(paths),
        "n_near_duplicates": int(dup.sum()), "median_nearest_bits": float(np.median(dist)),
        "all": subset_metrics(scores, mos, np.ones_like(dup)),
        "without_near_duplicates": subset_metrics(scores, mos, ~dup),
        "near_duplicates_only": subset_metrics(scores, mos, dup) if dup.sum() > 2 else {},
        "without_near_duplicates_intervals": real_photos.bootstrap(clean, mos[~dup], args.peers, args.boot),
        "pairs": pairs, "scorers": info, "cache_notes": notes,
    }


def table(res: dict) -> str:
    rows = ["| scorer | SROCC all | SROCC without near-duplicates [95% CI] | SROCC near-duplicates only |",
            "|---|---|---|---|"]
    ci = res["without_near_duplicates_intervals"]["intervals"]
    for lb, m in res["all"].items():
        clean = res["without_near_duplicates"][lb]["srocc"]
        lo, hi = ci[lb]["srocc"]
        only = res["near_duplicates_only"].get(lb, {}).get("srocc", float("nan"))
        rows.append(f"| {lb} | {m['srocc']:.3f} | {clean:.3f} [{lo:.3f}, {hi:.3f}] | {only:.3f} |")
    head = (f"{res['n_near_duplicates']} of {res['n_test']} test photos have a train photo within "
            f"{res['max_distance']} of 256 hash bits (median nearest distance {res['median_nearest_bits']:.0f}).")
    return head + "\n\n" + "\n".join(rows)


def main(argv=None) -> None:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--train", default="biq2021-train:/work/data/biq2021", help="the split a model trained on")
    extra.add_argument("--max-distance", type=int, default=10, help="hash bits (of 256) that still count as a copy")
    known, rest = extra.parse_known_args(argv)
    args = real_photos.parse_args(rest)
    res = evaluate(args, known.train, known.max_distance)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, default=float))
    print(table(res))


if __name__ == "__main__":
    main()
