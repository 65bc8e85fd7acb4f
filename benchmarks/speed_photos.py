"""Issue 11, benchmark 2: `metaiqa score` on real photos vs BRISQUE (two processes), whole process timed.

    python benchmarks/speed_photos.py make                # 100 JPEGs 512x384 + 100 JPEGs 4000x3000
    python benchmarks/speed_photos.py run --rounds 2      # alternating runs, start-up incl./excl.
    python benchmarks/speed_photos.py make --n 4 && python benchmarks/speed_photos.py run --n 4   # smoke

`make` resizes (and, for variety, crops/mirrors) the photos in ../shared/references into
--dir (default /work/data/speed_photos, outside the repository): small/ (512x384, quality 90)
and large/ (4000x3000, quality 90); existing files are kept.

`run`, per set (small, large) and per round, alternating the tools:
- metaiqa: `python -m metaiqa -q score DIR --format json` (the default model, --backend as given)
  as one process on both cores;
- BRISQUE (PyPI brisque 0.2.0, features flattened for numpy 2, as benchmarks/peers.py) as two
  processes, each scoring half the files on one core;
timing the whole process(es): start-up included. Start-up excluded subtracts each tool's
start-up, measured the same way on one 512x384 photo. Peak RSS per tool from wait4.
Writes benchmarks/results/speed_photos.json and prints the ratios (metaiqa throughput / BRISQUE's).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
REFERENCES = HERE.parent.parent / "shared" / "references"
DEFAULT_DIR = Path("/work/data/speed_photos")
SETS = {"small": (512, 384), "large": (4000, 3000)}


def make(args) -> None:
    sources = sorted(p for p in args.references.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not sources:
        raise SystemExit(f"no photos in {args.references}")
    for name, (w, h) in SETS.items():
        folder = args.dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(args.n):
            out = folder / f"{name}-{i:03d}.jpg"
            if out.exists():
                continue
            img = ImageOps.exif_transpose(Image.open(sources[i % len(sources)])).convert("RGB")
            if (i // len(sources)) % 2:
                img = ImageOps.mirror(img)
            ImageOps.fit(img, (w, h), Image.Resampling.LANCZOS, centering=(0.5, 0.3 + 0.4 * (i % 3) / 2)).save(
                out, "JPEG", quality=90)
        print(f"{folder}: {len(list(folder.glob('*.jpg')))} photos of {w}x{h}")


BRISQUE_WORKER = r"""
import sys, json, time
t0 = time.perf_counter()
import numpy as np
from PIL import Image
from brisque import BRISQUE
model = BRISQUE(url=False)
feats = model.calculate_brisque_features
model.calculate_brisque_features = lambda *a, **k: np.array([float(np.ravel(v)[0]) for v in feats(*a, **k)])
ready = time.perf_counter() - t0
scores = [float(model.score(np.asarray(Image.open(p).convert("RGB")))) for p in sys.argv[1:]]
print(json.dumps({"ready_s": ready, "n": len(scores)}))
"""


def run_procs(cmds: list[list[str]], env: dict) -> dict:
    """Run the commands at once; wall time until all end, peak RSS of the largest (MB), outputs."""
    start = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for c in cmds]
    rss, outs = [], []
    for p in procs:
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out, err = p.stdout.read(), p.stderr.read()
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(p.args[:4])} ... failed ({p.returncode}):\n{err.decode()[-2000:]}")
        rss.append(usage.ru_maxrss / 1024)
        outs.append(out)
    return {"wall_s": time.perf_counter() - start, "peak_rss_mb": max(rss), "outputs": outs}


def metaiqa_cmd(files_dir: Path, args) -> list[str]:
    return [sys.executable, "-m", "metaiqa", "-q", "score", str(files_dir), "--format", "json",
            "--backend", args.backend, "--threads", "2"]


def brisque_cmds(files: list[Path], procs: int = 2) -> list[list[str]]:
    halves = [files[k::procs] for k in range(procs)]
    return [[sys.executable, "-c", BRISQUE_WORKER, *map(str, h)] for h in halves if h]


def subset_dir(args, name: str) -> tuple[Path, list[Path]]:
    """A folder of symlinks to the first --n photos of a set (so `metaiqa score DIR` sees exactly those)."""
    files = sorted((args.dir / name).glob("*.jpg"))[: args.n]
    if len(files) < args.n:
        raise SystemExit(f"{args.dir / name} holds {len(files)} photos, fewer than --n {args.n}: run `make` first")
    sub = args.dir / f".run-{name}-{args.n}"
    sub.mkdir(exist_ok=True)
    for f in files:
        link = sub / f.name
        if not link.exists():
            link.symlink_to(f)
    return sub, files


def run(args) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAIQA_")}
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "")  # keep the caller's, if any
    if not env["OMP_NUM_THREADS"]:
        del env["OMP_NUM_THREADS"]
    one_dir, one = subset_dir(argparse.Namespace(dir=args.dir, n=1), "small")
    startup = {"metaiqa": [], "brisque": []}
    results = {name: {"metaiqa": [], "brisque": []} for name in SETS}
    for r in range(args.rounds):
        startup["metaiqa"].append(run_procs([metaiqa_cmd(one_dir, args)], env)["wall_s"])
        startup["brisque"].append(run_procs(brisque_cmds(one, 1), env)["wall_s"])
        for name in SETS:
            folder, files = subset_dir(args, name)
            order = ("metaiqa", "brisque") if r % 2 == 0 else ("brisque", "metaiqa")  # alternate
            for tool in order:
                res = run_procs([metaiqa_cmd(folder, args)] if tool == "metaiqa" else brisque_cmds(files), env)
                if tool == "metaiqa":
                    scored = json.loads(res["outputs"][0])
                    assert sum(row["score"] is not None for row in scored) == len(files), "metaiqa missed files"
                results[name][tool].append({"wall_s": res["wall_s"], "peak_rss_mb": res["peak_rss_mb"]})
    report(args, startup, results)


def report(args, startup: dict, results: dict) -> None:
    up = {tool: float(np.median(v)) for tool, v in startup.items()}
    rows = []
    for name, tools in results.items():
        row = {"set": name, "size": "x".join(map(str, SETS[name])), "n": args.n}
        for tool, runs in tools.items():
            wall = float(np.median([x["wall_s"] for x in runs]))
            row[tool] = {"wall_s": wall, "wall_excl_startup_s": max(wall - up[tool], 1e-9),
                         "peak_rss_mb": max(x["peak_rss_mb"] for x in runs), "runs": runs}
        row["ratio_incl_startup"] = row["brisque"]["wall_s"] / row["metaiqa"]["wall_s"]
        row["ratio_excl_startup"] = row["brisque"]["wall_excl_startup_s"] / row["metaiqa"]["wall_excl_startup_s"]
        rows.append(row)
    result = {"benchmark": "issue 11 #2: metaiqa score vs BRISQUE (2 processes), whole process",
              "dir": str(args.dir), "backend": args.backend, "rounds": args.rounds, "startup_s": up, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"start-up (1 photo, median): metaiqa {up['metaiqa']:.2f} s, BRISQUE {up['brisque']:.2f} s")
    print(f"{'set':<6} {'n':>4} {'metaiqa s':>10} {'BRISQUE s':>10} {'x incl.':>8} {'x excl.':>8} "
          f"{'RSS MB m/B':>12}")
    for r in rows:
        print(f"{r['set']:<6} {r['n']:>4} {r['metaiqa']['wall_s']:>10.2f} {r['brisque']['wall_s']:>10.2f} "
              f"{r['ratio_incl_startup']:>8.2f} {r['ratio_excl_startup']:>8.2f} "
              f"{r['metaiqa']['peak_rss_mb']:>5.0f}/{r['brisque']['peak_rss_mb']:<6.0f}")
    print(f"(x = metaiqa throughput / BRISQUE's; targets: >= 10 on large, >= 0.8 on small) wrote {args.out}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=["make", "run"])
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="photo folder (outside the repository)")
    ap.add_argument("--references", type=Path, default=REFERENCES)
    ap.add_argument("--n", type=int, default=100, help="photos per set")
    ap.add_argument("--rounds", type=int, default=1, help="alternating runs of both tools")
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"], help="default: auto, as the CLI and service")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "speed_photos.json")
    args = ap.parse_args(argv)
    if args.n < 1 or args.rounds < 1:
        ap.error("--n and --rounds must be >= 1")
    make(args) if args.step == "make" else run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
