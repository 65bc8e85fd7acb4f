"""Independent synthetic check: other photos, damage made by other code, 5 severities per family.

Photos: scikit-image's bundled natural colour photographs (astronaut, chelsea, coffee, rocket,
motorcycle_left; none of them is in ../shared/references) and the `--biq-top` highest-MOS photos
of BIQ2021's official test split (reporting use only). Damage: `independent_damage.py`
(OpenCV/Pillow/numpy; metaiqa's distortion engine is not used), 15 families × 5 severities,
seeded. The set is generated once into `--images` (PNG, with manifest.json; reused while the
recipe's fingerprint and the photo list are unchanged) and scored from the files.

Per family, for each model (`--model LABEL=CKPT`, repeatable) and peer, on the same images:

* within-photo SROCC: rank correlation of the score with the severity over the pristine photo
  (severity 0) and its 5 damaged versions, sign-corrected so +1 = every step scored lower,
  0 = no order, negative = ranked BACKWARDS (more damage, higher score); mean over photos;
* pristine above: share of damaged versions scored strictly below their own pristine photo.

Scores are cached per image file in `--cache` (see score_cache.py), so peers are not recomputed
when the script is re-run with a new model.

    cd benchmarks && OMP_NUM_THREADS=1 python independent.py --model prior=metaiqa-prior \\
        --peers brisque niqe --out results/independent_prior.json
"""

import argparse
import json
import os
import re
import sys
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import independent_damage as dmg  # noqa: E402  (benchmarks/independent_damage.py)
import score_cache  # noqa: E402

from metaiqa.data.formats import parse_data_spec  # noqa: E402
from metaiqa.evaluation import metrics  # noqa: E402

HERE = Path(__file__).resolve().parent
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left")


def _skimage_photo(name: str) -> np.ndarray:
    from skimage import data

    return data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(data, name)()


def source_photos(biq_spec: str, n_biq: int) -> list[tuple[str, str, np.ndarray]]:
    """(photo id, origin, RGB uint8) for the scikit-image photos and BIQ2021's top-MOS test photos."""
    out = [(f"skimage-{n}", f"skimage.data.{n}", _skimage_photo(n)) for n in SKIMAGE_PHOTOS]
    if n_biq:
        top = sorted(parse_data_spec(biq_spec), key=lambda s: (-s.mos, str(s.path)))[:n_biq]
        for s in top:
            pid = "biq2021-" + re.sub(r"[^A-Za-z0-9]+", "_", s.path.stem).strip("_")
            out.append((pid, f"{s.path} (MOS {s.mos:.4f})", np.asarray(Image.open(s.path).convert("RGB"))))
    return out


def _reusable(manifest_path: Path, wanted: dict) -> dict | None:
    if not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text())
    same = all(manifest.get(k) == v for k, v in wanted.items())
    files = all((manifest_path.parent / im["path"]).is_file() for im in manifest.get("images", []))
    return manifest if same and files else None


def generate(folder: Path, photos, seed: int) -> dict:
    """Write pristine + damaged PNGs and manifest.json into `folder` (skipped if already there)."""
    wanted = {"fingerprint": dmg.fingerprint(), "seed": seed, "photos": [[p, o] for p, o, _ in photos]}
    manifest = _reusable(folder / "manifest.json", wanted)
    if manifest:
        print(f"reusing the generated set in {folder} (fingerprint {wanted['fingerprint']})", file=sys.stderr)
        return manifest
    images = []
    for pid, _origin, rgb in tqdm(photos, desc="generate", file=sys.stderr):
        (folder / pid).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(folder / pid / "pristine.png")
        images.append({"path": f"{pid}/pristine.png", "photo": pid, "family": None, "level": 0, "param": None})
        photo_seed = seed ^ zlib.crc32(pid.encode())
        for family, (_fn, params) in dmg.FAMILIES.items():
            for level in range(1, dmg.LEVELS + 1):
                rel = f"{pid}/{family}_{level}.png"
                Image.fromarray(dmg.damage(rgb, family, level, photo_seed)).save(folder / rel)
                images.append({"path": rel, "photo": pid, "family": family, "level": level,
                               "param": params[level - 1]})
    manifest = {**wanted, "families": {k: list(v[1]) for k, v in dmg.FAMILIES.items()}, "images": images}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def per_photo(scores: dict[str, float], manifest: dict) -> dict[str, dict[str, dict]]:
    """{family: {photo: {"srocc": sign-corrected within-photo SROCC, "above": share}}}."""
    pristine = {im["photo"]: scores[im["path"]] for im in manifest["images"] if im["level"] == 0}
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for im in manifest["images"]:
        if im["level"]:
            groups[(im["family"], im["photo"])].append(im)
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for (family, photo), ims in groups.items():
        ims.sort(key=lambda im: im["level"])
        s = [pristine[photo]] + [scores[im["path"]] for im in ims]
        levels = [0] + [im["level"] for im in ims]
        out[family][photo] = {"srocc": metrics.srocc(s, [-lv for lv in levels]),  # NaN if all scores equal
                              "above": float(np.mean([v < s[0] for v in s[1:]]))}
    return dict(out)


def summarise(per: dict[str, dict[str, dict]], photos: list[str] | None = None) -> dict[str, dict]:
    """Per family and over all families: mean within-photo SROCC (NaN ones counted) and pristine-above."""
    def agg(cells: list[dict]) -> dict:
        rho = np.asarray([c["srocc"] for c in cells], np.float64)
        ok = rho[np.isfinite(rho)]
        return {"srocc": float(ok.mean()) if ok.size else float("nan"), "n": len(cells),
                "n_constant": int(rho.size - ok.size), "pristine_above": float(np.mean([c["above"] for c in cells]))}

    keep = (lambda p: True) if photos is None else (lambda p: p in photos)
    out = {fam: agg([c for p, c in cells.items() if keep(p)]) for fam, cells in per.items()}
    out["all"] = agg([c for cells in per.values() for p, c in cells.items() if keep(p)])
    out["all"]["families_backwards"] = [f for f in per if out[f]["srocc"] < 0]
    out["all"]["pristine_above_ci95"] = photo_interval(per, keep)
    return out


def photo_interval(per: dict[str, dict[str, dict]], keep) -> list[float]:
    """95 % interval of the all-families pristine-above share, resampling whole photos."""
    by_photo: dict[str, list[float]] = defaultdict(list)
    for cells in per.values():
        for photo, c in cells.items():
            if keep(photo):
                by_photo[photo].append(c["above"])  # every cell has the same number of levels
    if not by_photo:
        return [float("nan")] * 2
    return list(metrics.grouped_share_ci([sum(v) for v in by_photo.values()], [len(v) for v in by_photo.values()]))


def score_set(args, folder: Path, manifest: dict) -> tuple[dict, dict]:
    """{label: {relative path: score}} through the cache, and per-label provenance/timing."""
    rel = [im["path"] for im in manifest["images"]]
    paths = [folder / r for r in rel]
    cache, run = score_cache.ScoreCache.load(args.cache), score_cache.run_id()
    jobs = [(lb, *score_cache.model_fn(ck, args.threads)) for lb, ck in args.models.items()]
    jobs += [(p, p, score_cache.peer_fn(p), {"peer": p}) for p in args.peers]
    scores, info = {}, {}
    for label, scorer_id, fn, meta in jobs:
        refresh = args.refresh_models and scorer_id.startswith("model:")
        scored = score_cache.score_with_cache(scorer_id, fn, paths, cache, run, refresh=refresh)
        scores[label] = dict(zip(rel, scored.scores, strict=True))
        info[label] = {**meta, "scorer_id": scorer_id, "computed": scored.computed, "cached": scored.cached,
                       "cached_runs": scored.cached_runs, "ms_per_image": 1000 * scored.seconds_per_image,
                       "cache_note": score_cache.cache_note(label, scored, args.cache)}
    return scores, info


def table(res: dict) -> str:
    labels = list(res["summary"])
    rows = [*res["families"], "all"]
    head = ["| family | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]

    def cell(v: float) -> str:
        return f"**{v:.3f}**" if v < 0 else f"{v:.3f}"

    out = [f"Within-photo SROCC with severity (sign-corrected: +1 = every step scored lower, negative = "
           f"ranked backwards), mean over {res['n_photos']} photos:", *head]
    out += [f"| {r} | " + " | ".join(cell(res["summary"][lb][r]["srocc"]) for lb in labels) + " |" for r in rows]
    for part, title in (("skimage", "all, scikit-image photos"), ("biq2021", "all, BIQ2021 top-MOS photos")):
        out.append(f"| {title} | " + " | ".join(cell(res["by_source"][part][lb]["all"]["srocc"]) for lb in labels)
                   + " |")
    out.append("| families ranked backwards | " + " | ".join(
        ", ".join(res["summary"][lb]["all"]["families_backwards"]) or "none" for lb in labels) + " |")
    out += ["", "Pristine above: share of damaged versions scored below their own pristine photo:", *head]
    out += [f"| {r} | " + " | ".join(f"{res['summary'][lb][r]['pristine_above']:.3f}" for lb in labels) + " |"
            for r in rows]
    out.append("| all: 95 % interval over photos | " + " | ".join(
        "{:.3f}–{:.3f}".format(*res["summary"][lb]["all"].get("pristine_above_ci95", [float("nan")] * 2))
        for lb in labels) + " |")
    out.append("| ms per image | " + " | ".join(f"{res['scorers'][lb]['ms_per_image']:.0f}" for lb in labels) + " |")
    notes = [res["scorers"][lb]["cache_note"] for lb in labels if res["scorers"][lb]["cache_note"]]
    return "\n".join(out + [""] + [f"Note: {n}" for n in notes])


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[], metavar="LABEL=CKPT",
                    help="model to score (checkpoint path or bundled name); repeatable")
    ap.add_argument("--peers", nargs="*", default=["brisque", "niqe"], choices=["brisque", "niqe"])
    ap.add_argument("--biq", default="biq2021:/work/data/biq2021", help="BIQ2021 test split spec (default: %(default)s)")
    ap.add_argument("--biq-top", type=int, default=20, help="highest-MOS BIQ2021 test photos to add (default 20)")
    ap.add_argument("--images", type=Path, default=Path("/work/data/independent"),
                    help="folder of the generated set (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--threads", type=int, default=1, help="torch/OpenCV threads (default 1)")
    ap.add_argument("--refresh-models", action="store_true",
                    help="recompute the models' cached scores (peers stay cached): after scorer code changes")
    ap.add_argument("--cache", type=Path, default=HERE / "results" / "score_cache_independent.json")
    ap.add_argument("--generate-only", action="store_true", help="write the image set and stop")
    ap.add_argument("--out", type=Path, default=None, help="JSON results file (required unless --generate-only)")
    args = ap.parse_args(argv)
    args.models = dict(item.split("=", 1) for item in args.model)
    if len(args.models) != len(args.model) or not all(args.models):
        ap.error("--model takes unique LABEL=CKPT pairs")
    if args.out is None and not args.generate_only:
        ap.error("--out is required")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    import cv2

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    manifest = generate(args.images, source_photos(args.biq, args.biq_top), args.seed)
    if args.generate_only:
        return
    scores, info = score_set(args, args.images, manifest)
    photos = [p for p, _ in manifest["photos"]]
    per = {lb: per_photo(s, manifest) for lb, s in scores.items()}
    res = {"images": str(args.images), "fingerprint": manifest["fingerprint"], "seed": manifest["seed"],
           "photos": manifest["photos"], "n_photos": len(photos), "families": manifest["families"],
           "n_images": len(manifest["images"]), "threads": args.threads, "scorers": info,
           "summary": {lb: summarise(p) for lb, p in per.items()},
           "by_source": {src: {lb: summarise(p, [x for x in photos if x.startswith(src)]) for lb, p in per.items()}
                         for src in ("skimage", "biq2021")},
           "per_photo": per, "finished": score_cache.run_id(), "loadavg_at_end": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, default=float))
    print(table(res))


if __name__ == "__main__":
    main()
