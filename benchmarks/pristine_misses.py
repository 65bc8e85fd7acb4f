"""Which distorted images a model scores at or above their pristine crop, and how visible the damage is.

`heldout.py` counts the share of (crop, type, level) triples where the pristine crop scores above
the distorted one. This script lists the misses behind that share and sets each against the
synthetic set's own label: the full-reference committee's quality of the distorted image
(`dmos.csv`, 1 = indistinguishable from pristine). It reports the pristine-above share per band of
committee quality (does the model miss visible damage, or only changes the committee itself
rates near-invisible?) and draws a contact sheet of the largest misses (pristine | distorted).

    python benchmarks/pristine_misses.py --data /work/data/synth_fs --model metaiqa-default \
        --scenes test --out benchmarks/results/pristine_misses_test.json \
        --sheet benchmarks/results/figures/pristine_misses_test.jpg

Scenes as in heldout.py (the prior's split). Nothing here selects or trains a model: it reads
scores. A band table from the validation scenes may inform the next candidate; one from the test
scenes is for the report only.
"""

import argparse
import json
from collections import Counter
from pathlib import Path

import torch
from heldout import pristine_paths, scene_source, scenes_of
from PIL import Image, ImageDraw

from metaiqa.data.formats import parse_data_spec
from metaiqa.inference.scorer import Scorer
from metaiqa.models.pretrained import resolve_checkpoint

BANDS = (0.0, 0.5, 0.8, 0.9, 1.0001)  # committee quality of the distorted image


def misses(scores: dict[Path, float], samples, pristine: dict[str, Path]) -> list[dict]:
    """Every sample scored at or above its pristine crop, largest margin first."""
    out = []
    for s in samples:
        margin = scores[s.path] - scores[pristine[s.ref_id]]
        if margin >= 0:
            out.append({"image": s.path.name, "pristine": pristine[s.ref_id].name, "scene": s.content,
                        "type": s.group, "level": s.level, "committee_quality": s.mos, "margin": margin})
    return sorted(out, key=lambda m: -m["margin"])


def by_band(samples, missed: list[dict]) -> list[dict]:
    """Pristine-above share within each band of committee quality."""
    missed_names = {m["image"] for m in missed}
    rows = []
    for lo, hi in zip(BANDS[:-1], BANDS[1:], strict=True):
        part = [s for s in samples if lo <= s.mos < hi]
        n_miss = sum(s.path.name in missed_names for s in part)
        rows.append({"band": f"[{lo:.1f}, {min(hi, 1.0):.1f}]", "pairs": len(part), "misses": n_miss,
                     "pristine_above": 1 - n_miss / len(part) if part else float("nan")})
    return rows


def contact_sheet(missed: list[dict], root: Path, out: Path, n: int = 8, tile: int = 192) -> None:
    """Rows of pristine | distorted for the `n` largest misses, captioned with type, level and scores."""
    rows = missed[:n]
    sheet = Image.new("RGB", (2 * tile + 12, len(rows) * (tile + 22) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    for i, m in enumerate(rows):
        y = i * (tile + 22) + 4
        for j, name in enumerate((m["pristine"], m["image"])):
            img = Image.open(root / name).convert("RGB").resize((tile, tile), Image.Resampling.LANCZOS)
            sheet.paste(img, (4 + j * (tile + 4), y))
        caption = (f"{m['scene'][:22]}  {m['type']} L{m['level']}  committee {m['committee_quality']:.2f}  "
                   f"+{m['margin']:.3f}")
        draw.text((4, y + tile + 4), caption, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, quality=88)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="synthetic data set (with pristine references)")
    ap.add_argument("--model", default="metaiqa-default", help="checkpoint path or bundled name")
    ap.add_argument("--prior", default="metaiqa-prior", help="checkpoint whose sidecar names the scene split")
    ap.add_argument("--scenes", choices=["test", "val", "all"], default="val")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sheet", type=Path, help="contact sheet (JPEG/PNG) of the largest misses")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    meta = scene_source({"prior": args.prior})
    samples = scenes_of(parse_data_spec(args.data), meta["splits"], args.scenes)
    if not samples:
        raise SystemExit(f"{args.data}: no images of the prior's {args.scenes} scenes")
    pristine = pristine_paths(samples)
    paths = sorted({s.path for s in samples} | set(pristine.values()))
    values = Scorer.from_checkpoint(resolve_checkpoint(args.model)).score_paths(paths)
    scores = dict(zip(paths, values, strict=True))
    missed = misses(scores, samples, pristine)
    result = {"data": args.data, "model": args.model, "scenes": args.scenes, "pairs": len(samples),
              "pristine_above": 1 - len(missed) / len(samples), "bands": by_band(samples, missed),
              "misses_per_type": dict(Counter(m["type"] for m in missed).most_common()), "misses": missed}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float))
    if args.sheet:
        contact_sheet(missed, samples[0].path.parent, args.sheet)
    print(f"{args.model} on {args.scenes} scenes: pristine-above {result['pristine_above']:.4f} "
          f"({len(missed)} misses of {len(samples)})")
    print("committee quality   pairs  misses  pristine-above")
    for b in result["bands"]:
        print(f"{b['band']:18s} {b['pairs']:6d} {b['misses']:7d}  {b['pristine_above']:.3f}")


if __name__ == "__main__":
    main()
