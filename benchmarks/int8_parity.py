"""Issue 11: does a model's int8 export keep every score within 0.01 of float32? And how fast is it?

Scores every photo in the given folders twice through the light ONNX path (`LiteScorer`):
with the model's float32 export and with its NAME.int8.onnx (`metaiqa export --onnx --int8`),
the same decoded views for both; reports max / mean |int8 - float32| per folder and overall,
the photo with the largest change, and bare views/s of both sessions at batch 16 (2 threads).

    python benchmarks/int8_parity.py --model metaiqa-default \
        /work/data/speed_photos/small /work/data/speed_photos/large

Writes benchmarks/results/int8_parity.json. Timing needs an idle machine; parity does not.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from metaiqa.inference.lite import LiteScorer
from metaiqa.models.pretrained import resolve_checkpoint

HERE = Path(__file__).resolve().parent
SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def views_per_s(scorer: LiteScorer, batch: int = 16, repeats: int = 8) -> float:
    x = np.random.default_rng(0).random((batch, 3, 224, 224), dtype=np.float32)
    scorer.session.run(x)
    start = time.perf_counter()
    for _ in range(repeats):
        scorer.session.run(x)
    return batch * repeats / (time.perf_counter() - start)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--model", default="metaiqa-default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "int8_parity.json")
    args = ap.parse_args(argv)
    ckpt = resolve_checkpoint(args.model, None)
    fp32 = LiteScorer.open(ckpt, threads=args.threads, int8="no")
    int8 = LiteScorer.open(ckpt, threads=args.threads, int8="require")
    if fp32 is None or int8 is None:
        raise SystemExit(f"{ckpt}: needs a float32 export (run `metaiqa score` once) and NAME.int8.onnx beside it")
    rows, worst = [], (0.0, "")
    for folder in args.folders:
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
        deltas = []
        for p in paths:
            views = fp32.views(fp32.read(p).pixels)
            d = abs(float(int8.score_views([views])[0]) - float(fp32.score_views([views])[0]))
            deltas.append(d)
            worst = max(worst, (d, str(p)))
        rows.append({"folder": str(folder), "n": len(paths), "max_abs_delta": max(deltas),
                     "mean_abs_delta": float(np.mean(deltas)), "within_0.01": max(deltas) <= 0.01})
        print(f"{folder}: {len(paths)} photos, max |delta| {max(deltas):.5f}, mean {np.mean(deltas):.5f}", flush=True)
    speed = {"float32": views_per_s(fp32), "int8": views_per_s(int8)}
    result = {"model": args.model, "rows": rows, "max_abs_delta": worst[0], "worst_photo": worst[1],
              "views_per_s_batch16": speed, "threads": args.threads}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"overall max |delta| {worst[0]:.5f} ({worst[1]}); views/s at batch 16: float32 {speed['float32']:.1f}, "
          f"int8 {speed['int8']:.1f}; wrote {args.out}")
    return 0 if worst[0] <= 0.01 else 1


if __name__ == "__main__":
    sys.exit(main())
