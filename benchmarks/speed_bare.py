"""Issue 11, benchmark 1: bare views/s at 224x224, batch 1 and 16, per backend, with % of the fp32 peak.

    python benchmarks/speed_bare.py                          # torch and onnx, batch 1 and 16, 2 threads
    python benchmarks/speed_bare.py --n 2 --backends torch   # smoke run

Only the model's forward pass (the backend a Scorer uses), on random 224x224 views, after one
warm-up pass; --n timed passes per (backend, batch). The peak is 2 cores x AVX2 + FMA = ~192
GFLOP/s fp32 (--peak-gflops); a 224x224 ResNet-18 view is ~3.64 GFLOP (--gflop-per-view; the
MSCN front end adds a little, not counted), so the peak is ~53 views/s. Run on an idle machine.
Writes benchmarks/results/speed_bare.json.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def make_backend(name: str, ckpt: Path, threads: int):
    from metaiqa.inference import Scorer

    return Scorer.from_checkpoint(ckpt, backend=name, threads=threads, backend_threads=threads).backend


def time_backend(backend, batch: int, passes: int, size: int = 224) -> dict:
    x = torch.rand(batch, 3, size, size)
    backend(x)  # warm-up
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        backend(x)
        times.append(time.perf_counter() - start)
    total = sum(times)
    return {"passes": passes, "seconds": total, "views_per_s": batch * passes / total,
            "ms_per_pass_min": 1000 * min(times)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="metaiqa-default", help="checkpoint name or path (ResNet-18 for the numbers)")
    ap.add_argument("--backends", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--n", type=int, default=20, help="timed passes per backend and batch size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peak-gflops", type=float, default=192.0)
    ap.add_argument("--gflop-per-view", type=float, default=3.64)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "speed_bare.json")
    args = ap.parse_args(argv)
    if args.n < 1 or min(args.batches) < 1 or args.threads < 1:
        ap.error("--n, --batches and --threads must be >= 1")

    from metaiqa.models.pretrained import resolve_checkpoint

    ckpt = resolve_checkpoint(args.model)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.backends:
        backend = make_backend(name, ckpt, args.threads)
        for batch in args.batches:
            r = time_backend(backend, batch, args.n)
            r.update(backend=name, batch=batch,
                     pct_of_peak=100 * r["views_per_s"] * args.gflop_per_view / args.peak_gflops)
            rows.append(r)
    result = {"benchmark": "issue 11 #1: bare views/s", "model": str(ckpt), "threads": args.threads,
              "peak_gflops": args.peak_gflops, "gflop_per_view": args.gflop_per_view,
              "peak_views_per_s": args.peak_gflops / args.gflop_per_view, "torch": torch.__version__,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'backend':<8} {'batch':>5} {'views/s':>9} {'% of peak':>10} {'min ms/pass':>12}")
    for r in rows:
        print(f"{r['backend']:<8} {r['batch']:>5} {r['views_per_s']:>9.2f} {r['pct_of_peak']:>9.1f}% "
              f"{r['ms_per_pass_min']:>12.1f}")
    print(f"peak {result['peak_views_per_s']:.1f} views/s ({args.peak_gflops:g} GFLOP/s / {args.gflop_per_view} "
          f"GFLOP per view); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
