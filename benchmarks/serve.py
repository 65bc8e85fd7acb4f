"""Service throughput vs the bare Scorer, measured in the same run on the same machine.

    python benchmarks/serve.py [--checkpoint CKPT] [--requests 200] [--duration 60] [--clients 4]

1. Bare Scorer: decode + score the same encoded images in batches of --max-batch, in this
   process (`Scorer.score_bytes`), and model-only (`Scorer.score_arrays` on decoded arrays);
   timed before and again after the service phase (shared machines drift), averaged.
2. Service: `metaiqa serve` as a subprocess on 127.0.0.1 (free port), then --clients threads
   send POST /v1/score (one image each) until --requests are done or --duration has passed.
Prints images/s, p50/p99 latency and the service/bare ratio. The two phases never overlap,
so they do not compete for the CPU. Without --checkpoint an UNTRAINED metaiqa_resnet18 is
built in a temporary folder (its scores mean nothing; its speed is the real model's).
"""

import argparse
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

HOST = "127.0.0.1"  # never anything else


def synthetic_photo(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth colour fields + edges + fine texture: compresses and scores like a photo crop."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([0.5 + 0.3 * np.sin(6 * x + 2 * y + seed), 0.5 + 0.3 * np.cos(5 * y - 3 * x), 0.4 + 0.3 * np.sin(9 * x * y)], -1)
    edges = ((np.floor(x * 7) + np.floor(y * 5)) % 2)[..., None] * 0.2
    img = np.clip(base * 0.75 + edges + rng.normal(0, 0.03, (h, w, 3)), 0, 1)
    return (img * 255).round().astype(np.uint8)


def encode(img: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def build_untrained(folder: Path) -> Path:
    import torch

    from metaiqa.models import create_model, save_checkpoint

    torch.manual_seed(0)
    model = create_model("metaiqa_resnet18")
    return save_checkpoint(
        folder / "untrained-resnet18.safetensors",
        model,
        model_name="metaiqa_resnet18",
        preprocess={"policy": "center_crop", "size": 224},
        extra={"note": "untrained, built by benchmarks/serve.py"},
    )


def bare_scorer(ckpt: Path, blobs: list[bytes], batch: int, seconds: float, threads: int | None) -> dict:
    """Images/s of Scorer.score_bytes (decode + model) and score_arrays (model only) in batches."""
    import torch

    from metaiqa.inference import Scorer, decode_image

    if threads:
        torch.set_num_threads(threads)
    scorer = Scorer.from_checkpoint(ckpt)
    scorer.score_bytes(blobs[:batch])  # warm-up
    out = {}
    arrays = [decode_image(b) for b in blobs]
    for name, fn, items in (("bytes", scorer.score_bytes, blobs), ("arrays", scorer.score_arrays, arrays)):
        n, start, i = 0, time.perf_counter(), 0
        while time.perf_counter() - start < seconds or n == 0:
            chunk = [items[(i + k) % len(items)] for k in range(batch)]
            fn(chunk)
            n += batch
            i += batch
        out[name] = n / (time.perf_counter() - start)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_service(ckpt: Path, port: int, args) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAIQA_")}
    env.update(METAIQA_MAX_BATCH=str(args.max_batch), METAIQA_QUEUE_SIZE=str(max(64, 4 * args.clients)))
    if args.threads:
        env["METAIQA_TORCH_THREADS"] = str(args.threads)
    cmd = [sys.executable, "-m", "metaiqa", "-q", "serve", "--host", HOST, "--port", str(port), "--model", str(ckpt)]
    cmd += ["--log-level", "warning"]
    return subprocess.Popen(cmd, env=env, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(proc: subprocess.Popen, base: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            detail = proc.stderr.read() if proc.stderr else "(stderr not captured)"
            raise SystemExit(f"service exited with {proc.returncode}:\n{detail}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"service not ready after {timeout}s")


def load(base: str, blobs: list[bytes], requests: int, duration: float, clients: int) -> dict:
    import httpx

    lock = threading.Lock()
    state = {"next": 0, "lat": [], "codes": {}}
    stop_at = time.monotonic() + duration

    def client(cid: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as c:
            while time.monotonic() < stop_at:
                with lock:
                    i = state["next"]
                    if i >= requests:
                        return
                    state["next"] += 1
                files = {"image": (f"img{i}.jpg", blobs[i % len(blobs)], "image/jpeg")}
                t = time.perf_counter()
                r = c.post("/v1/score", files=files)
                dt = time.perf_counter() - t
                with lock:
                    state["codes"][r.status_code] = state["codes"].get(r.status_code, 0) + 1
                    if r.status_code == 200:
                        state["lat"].append(dt)

    wall = run_clients(client, clients)
    ok = len(state["lat"])
    return {"wall": wall, "ok": ok, "sent": state["next"], "codes": state["codes"], "lat": state["lat"], "ips": ok / wall}


def run_clients(client, clients: int) -> float:
    """Run client(k) for k in range(clients) on as many threads at once; the wall time until all end."""
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="checkpoint to serve (default: build an untrained metaiqa_resnet18)")
    ap.add_argument("--requests", type=int, default=200, help="requests to send at most (default 200)")
    ap.add_argument("--duration", type=float, default=60.0, help="stop sending after this many seconds (default 60)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent client threads (default 4)")
    ap.add_argument("--max-batch", type=int, default=8, help="service micro-batch and bare-Scorer batch size")
    ap.add_argument("--size", default="384x512", help="HxW of the generated JPEG images (default 384x512)")
    ap.add_argument("--bare-seconds", type=float, default=10.0, help="time spent timing the bare Scorer per mode")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's default)")
    args = ap.parse_args()
    if min(args.requests, args.clients, args.max_batch) < 1 or args.duration <= 0:
        ap.error("--requests, --clients, --max-batch must be >= 1 and --duration > 0")
    h, w = (int(v) for v in args.size.lower().split("x"))

    tmp = tempfile.TemporaryDirectory(prefix="metaiqa-bench-")
    if args.checkpoint is None:
        ckpt = build_untrained(Path(tmp.name))
        print(f"NOTE: no --checkpoint given: serving an UNTRAINED metaiqa_resnet18 built in {ckpt.parent} "
              "(scores are meaningless; speed is that of the real architecture)")
    else:
        ckpt = args.checkpoint
    blobs = [encode(synthetic_photo(h, w, seed), "JPEG") for seed in range(16)]
    print(f"images: 16 generated JPEGs of {w}x{h} (~{np.mean([len(b) for b in blobs]) / 1024:.0f} kB), "
          f"cpu cores: {os.cpu_count()}, torch threads: {args.threads or 'default'}")

    bare = bare_scorer(ckpt, blobs, args.max_batch, args.bare_seconds, args.threads)

    port = free_port()
    base = f"http://{HOST}:{port}"
    proc = start_service(ckpt, port, args)
    try:
        wait_ready(proc, base)
        load(base, blobs, min(2 * args.clients, args.requests), 30, args.clients)  # warm-up, not counted
        res = load(base, blobs, args.requests, args.duration, args.clients)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    # the machine may be shared: time the bare Scorer again after the service run and average
    after = bare_scorer(ckpt, blobs, args.max_batch, args.bare_seconds, args.threads)
    tmp.cleanup()
    spread = {k: (bare[k], after[k]) for k in bare}
    bare = {k: (bare[k] + after[k]) / 2 for k in bare}

    lat_ms = [x * 1000 for x in res["lat"]]
    print()
    print(f"{'':34}{'images/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for key, label in (("arrays", "bare Scorer.score_arrays (model)"), ("bytes", "bare Scorer.score_bytes (+decode)")):
        b0, b1 = spread[key]
        print(f"{label:34}{bare[key]:>10.2f}{'':>20}   (before {b0:.2f}, after {b1:.2f})")
    print(f"{'service POST /v1/score':34}{res['ips']:>10.2f}{percentile(lat_ms, 50):>10.1f}{percentile(lat_ms, 99):>10.1f}")
    print()
    print(f"service / bare(score_bytes) = {res['ips'] / bare['bytes']:.2f}   "
          f"service / bare(score_arrays) = {res['ips'] / bare['arrays']:.2f}")
    print(f"requests: {res['sent']} sent, {res['ok']} ok, status counts {res['codes']}, "
          f"{args.clients} clients, {res['wall']:.1f} s (limits: {args.requests} requests, {args.duration:.0f} s); "
          f"batch {args.max_batch}; checkpoint {ckpt.name if args.checkpoint else 'untrained metaiqa_resnet18'}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
