"""Issue 11, benchmarks 3 and 4: the service against the bare scorer, and /v1/score under heatmap load.

    python benchmarks/speed_service.py throughput              # #3: 4 and 16 clients, 512x384 and 12 MP
    python benchmarks/speed_service.py heatmaps                # #4: /v1/score p99 without / with heatmaps
    python benchmarks/speed_service.py throughput --n 4 --clients 2 --large-size 1200x900   # smoke

#3 `throughput`: per image set (512x384 JPEGs; 4000x3000 JPEGs, i.e. 12 MP uploads) the bare
scorer (`Scorer.score_bytes`, decode + model, batches of --max-batch, in this process) and
then `metaiqa serve` (subprocess on 127.0.0.1, default model, --backend) under --clients
concurrent clients each POSTing one image to /v1/score until --n requests are answered:
images/s, p50/p99 latency, service/bare. Targets: service >= 0.8x bare; 12 MP p50 <= 250 ms.
#4 `heatmaps`: /v1/score p50/p99 at --clients 4 with 512x384 images, alone and while
--heatmap-clients threads stream POST /v1/heatmap (1024x768) the whole time. Target: p99
with heatmaps <= 2x p99 without.
Writes benchmarks/results/speed_service.json / speed_heatmaps.json and prints tables.
The photos are synthetic (benchmarks/serve.py's generator); run on an idle machine.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import HOST, encode, free_port, percentile, run_clients, synthetic_photo, wait_ready  # noqa: E402

HERE = Path(__file__).resolve().parent


def size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def jpegs(wh: tuple[int, int], count: int) -> list[bytes]:
    return [encode(synthetic_photo(wh[1], wh[0], seed), "JPEG") for seed in range(count)]


def bare(model: str, backend: str, blobs: list[bytes], batch: int, n: int) -> dict:
    """Images/s of Scorer.score_bytes (decode + model) on n images in batches, after a warm-up."""
    import torch

    from metaiqa.inference import Scorer
    from metaiqa.models.pretrained import resolve_checkpoint

    torch.set_num_threads(2)
    scorer = Scorer.from_checkpoint(resolve_checkpoint(model), backend=backend, threads=2)
    scorer.score_bytes(blobs[:1])
    start, done = time.perf_counter(), 0
    while done < n:
        k = min(batch, n - done)
        scorer.score_bytes([blobs[(done + j) % len(blobs)] for j in range(k)])
        done += k
    return {"images_per_s": n / (time.perf_counter() - start), "n": n}


def start_service(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAIQA_")}
    env.update(METAIQA_MAX_BATCH=str(args.max_batch), METAIQA_QUEUE_SIZE=str(max(64, 4 * max(args.clients))),
               METAIQA_BACKEND=args.backend, METAIQA_MAX_PENDING_HEATMAPS="8")
    cmd = [sys.executable, "-m", "metaiqa", "-q", "serve", "--host", HOST, "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    base = f"http://{HOST}:{port}"
    wait_ready(proc, base, timeout=300)
    return proc, base


def stop_service(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def drive(base: str, route: str, blobs: list[bytes], clients: int, n: int | None, stop: threading.Event) -> dict:
    """`clients` threads POST one image each to `route` until n answers (None: until `stop`)."""
    import httpx

    lock, lat, codes, sent = threading.Lock(), [], {}, [0]

    def client(_k: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as c:
            while not stop.is_set():
                with lock:
                    if n is not None and sent[0] >= n:
                        return
                    i = sent[0]
                    sent[0] += 1
                t = time.perf_counter()
                r = c.post(route, files={"image": (f"i{i}.jpg", blobs[i % len(blobs)], "image/jpeg")})
                dt = time.perf_counter() - t
                with lock:
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1
                    if r.status_code == 200:
                        lat.append(dt * 1000)

    wall = run_clients(client, clients)
    return {"images_per_s": len(lat) / wall, "ok": len(lat), "codes": {str(k): v for k, v in codes.items()},
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "wall_s": wall}


def throughput(args) -> dict:
    sets = {"512x384": jpegs((512, 384), 8), f"{args.large_size[0]}x{args.large_size[1]}": jpegs(args.large_size, 4)}
    rows = []
    bares = {name: bare(args.model, args.backend, blobs, args.max_batch, args.n) for name, blobs in sets.items()}
    proc, base = start_service(args)
    try:
        for name, blobs in sets.items():
            drive(base, "/v1/score", blobs, 2, 4, threading.Event())  # warm-up
            for clients in args.clients:
                r = drive(base, "/v1/score", blobs, clients, args.n, threading.Event())
                r.update(set=name, clients=clients, bare_images_per_s=bares[name]["images_per_s"],
                         service_over_bare=r["images_per_s"] / bares[name]["images_per_s"])
                rows.append(r)
    finally:
        stop_service(proc)
    print(f"{'images':<10} {'clients':>7} {'service/s':>10} {'bare/s':>8} {'ratio':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for r in rows:
        print(f"{r['set']:<10} {r['clients']:>7} {r['images_per_s']:>10.2f} {r['bare_images_per_s']:>8.2f} "
              f"{r['service_over_bare']:>6.2f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f}")
    return {"benchmark": "issue 11 #3: service vs bare", "rows": rows}


def heatmaps(args) -> dict:
    small, big = jpegs((512, 384), 8), jpegs((1024, 768), 2)
    proc, base = start_service(args)
    try:
        drive(base, "/v1/score", small, 2, 4, threading.Event())
        drive(base, "/v1/heatmap", big, 1, 1, threading.Event())  # warm-up
        alone = drive(base, "/v1/score", small, args.clients[0], args.n, threading.Event())
        stop = threading.Event()
        stream: dict = {}
        bg = threading.Thread(target=lambda: stream.update(drive(base, "/v1/heatmap", big, args.heatmap_clients,
                                                                  None, stop)))
        bg.start()
        time.sleep(0.5)  # the first heatmap is running
        loaded = drive(base, "/v1/score", small, args.clients[0], args.n, threading.Event())
        stop.set()
        bg.join()
    finally:
        stop_service(proc)
    ratio = loaded["p99_ms"] / alone["p99_ms"]
    print(f"{'/v1/score':<22} {'p50 ms':>8} {'p99 ms':>8} {'images/s':>9}")
    for label, r in (("alone", alone), ("with heatmap stream", loaded)):
        print(f"{label:<22} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['images_per_s']:>9.2f}")
    print(f"heatmaps answered meanwhile: {stream.get('ok', 0)} (status {stream.get('codes')}); "
          f"p99 ratio {ratio:.2f} (target <= 2)")
    return {"benchmark": "issue 11 #4: /v1/score p99 under heatmap load", "clients": args.clients[0],
            "heatmap_clients": args.heatmap_clients, "alone": alone, "with_heatmaps": loaded,
            "heatmap_stream": stream, "p99_ratio": ratio}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=["throughput", "heatmaps"])
    ap.add_argument("--model", default="metaiqa-default", help="bare scorer's model (the service serves its default)")
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"], help="default: auto, as the CLI and service")
    ap.add_argument("--n", type=int, default=200, help="answered requests per measurement (and bare images)")
    ap.add_argument("--clients", type=int, nargs="+", default=None, help="default: 4 16 (throughput), 4 (heatmaps)")
    ap.add_argument("--heatmap-clients", type=int, default=1)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--large-size", type=size, default=(4000, 3000), help="WxH of the large uploads")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    args.clients = args.clients or ([4, 16] if args.part == "throughput" else [4])
    if min(args.n, args.heatmap_clients, args.max_batch, *args.clients) < 1:
        ap.error("--n, --clients, --heatmap-clients and --max-batch must be >= 1")
    result = throughput(args) if args.part == "throughput" else heatmaps(args)
    result.update(backend=args.backend, n=args.n, max_batch=args.max_batch, cpu_cores=os.cpu_count())
    out = args.out or HERE / "results" / f"speed_{'service' if args.part == 'throughput' else 'heatmaps'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {out}")
    return 0 if np.isfinite(result.get("p99_ratio", 1.0)) else 1


if __name__ == "__main__":
    sys.exit(main())
