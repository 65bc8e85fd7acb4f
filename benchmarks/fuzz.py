"""Fuzz the running service with hostile inputs; print the count of each status and the peak memory.

    python benchmarks/fuzz.py [--checkpoint CKPT] [--requests 1200] [--duration 180] [--clients 4] [--seed 0]

Starts the service (uvicorn, 127.0.0.1 only, a random free port, API key required), then --clients
threads send hostile requests, drawn at random from the cases below, until --requests have been
sent or --duration seconds have passed; then the service is stopped. Cases: corrupt, truncated,
bit-flipped and random-with-magic bytes of every accepted image format (score, gate, heatmap),
pixel bombs (headers declaring 3.6 Gpx), extreme aspect ratios (32 x 300,000 and 32 x 1,500,000),
hostile JSON (deep nesting, 5,000-digit numbers, wrong types, bad base64, too many images), bad
zips for /v1/validate (random bytes, traversal, zip bombs, 300-character names, a file beside a
folder of the same name, MOS 1e308, no CSV), huge and many headers, invalid Content-Length,
malformed chunked bodies, clients that disconnect mid-upload, wrong API keys and unknown routes.

Prints the count of each answer ("no-answer" when the server closed the connection, "disconnect"
for our own aborts, which expect none), the number of 5xx, the server's own error count from
/metrics, and the server's peak RSS (VmHWM from /proc). Exit code 1 if any 5xx was seen or the
server stopped answering. Without --checkpoint a tiny untrained model (center_crop, 64 px) is
built in a temp folder: its scores mean nothing, the service code paths are the real ones.
"""

import argparse
import base64
import collections
import io
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import HOST, free_port, wait_ready  # noqa: E402  (benchmarks/serve.py: one way to start and wait)

KEY = "fuzz-key"
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "AVIF", "PPM", "TGA", "QOI", "MPO", "DIB")


# --------------------------------------------------------------------------- inputs


def photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([0.5 + 0.3 * np.sin(6 * x + seed), 0.5 + 0.3 * np.cos(5 * y), 0.4 + 0.3 * np.sin(9 * x * y)], -1)
    return (np.clip(base + rng.normal(0, 0.04, (h, w, 3)), 0, 1) * 255).astype(np.uint8)


def encode(img: np.ndarray, fmt: str) -> bytes | None:
    buf = io.BytesIO()
    try:
        Image.fromarray(img).save(buf, fmt)
    except (KeyError, OSError, ValueError):  # this Pillow cannot write the format
        return None
    return buf.getvalue()


def png_declaring(width: int, height: int, rows: int | None = None) -> bytes:
    """A PNG whose header says width x height; `rows` real rows of data (None: all, zlib of grey)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = (b"\x00" + b"\x80" * (3 * width)) * (height if rows is None else rows)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def gif_declaring(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b",\x00\x00\x00\x00" + \
        struct.pack("<HH", width, height) + b"\x00\x02\x02\x44\x01\x00;"


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    how = rng.choice(("truncate", "flip", "flip", "random", "header-only"))
    if how == "truncate":
        return how, data[: rng.randrange(0, len(data))]
    if how == "flip":
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= rng.randrange(1, 256)
        return how, bytes(out)
    if how == "header-only":
        return how, data[: min(len(data), rng.randint(8, 64))]
    return how, data[:16] + rng.randbytes(rng.randint(0, 4096))


def make_zip(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


class Inputs:
    """Every hostile body the cases draw from, built once."""

    def __init__(self) -> None:
        self.samples = {f: b for f in FORMATS if (b := encode(photo(72, 88, 1), f)) is not None}
        self.good = self.samples["PNG"]
        self.thin = png_declaring(300_000, 32)
        self.thinner = png_declaring(1_500_000, 32)
        self.bomb_png = png_declaring(60_000, 60_000, rows=2)
        self.bomb_gif = gif_declaring(65_000, 65_000)
        small = photo(64, 64, 2)
        self.zips = {
            "random": os.urandom(2048),
            "traversal": make_zip({"../../evil.png": self.good, "labels.csv": b"filename,mos\n../../evil.png,0.5\n"}),
            "bomb": make_zip({"a.png": b"\x00" * (20 * 2**20), "labels.csv": b"filename,mos\na.png,0.5\n"}),
            "long-name": make_zip({"x" * 300 + ".png": self.good, "labels.csv": b"filename,mos\nx.png,0.5\n"}),
            "file-and-folder": make_zip({"a.jpg": self.good, "a.jpg/b.jpg": self.good,
                                         "labels.csv": b"filename,mos\na.jpg,0.5\n"}),
            "mos-1e308": make_zip({"a.png": self.good, "b.png": encode(small, "PNG"),
                                   "labels.csv": b"filename,mos\na.png,1e308\nb.png,-1e308\n"}),
            "no-csv": make_zip({"a.png": self.good}),
            "truncated": make_zip({"a.png": self.good, "labels.csv": b"filename,mos\na.png,0.5\n"})[:200],
        }


# --------------------------------------------------------------------------- one request


class Target:
    def __init__(self, base: str, port: int):
        import httpx

        self.base, self.port = base, port
        self.http = httpx.Client(base_url=base, timeout=60.0, headers={"X-API-Key": KEY})

    def post(self, path: str, **kw) -> str:
        import httpx

        try:
            return str(self.http.post(path, **kw).status_code)
        except httpx.TransportError:
            return "no-answer"

    def raw(self, payload: bytes, *, close_after: bool = False, read: bool = True) -> str:
        """Send bytes on a fresh socket; the status of the answer, or no-answer / disconnect."""
        with socket.create_connection((HOST, self.port), timeout=30) as s:
            s.sendall(payload)
            if close_after:
                return "disconnect"
            try:
                head = s.recv(64)
            except OSError:
                return "no-answer"
        parts = head.split(b" ")
        return parts[1].decode() if len(parts) > 1 and head.startswith(b"HTTP/") else "no-answer"


def image_case(t: Target, inp: Inputs, rng: random.Random) -> str:
    fmt = rng.choice(sorted(inp.samples))
    _, data = mutate(inp.samples[fmt], rng)
    route = rng.choice(("/v1/score", "/v1/score", "/v1/gate", "/v1/heatmap"))
    if rng.random() < 0.3:
        body = {"images": [{"filename": f"x.{fmt.lower()}", "data": base64.b64encode(data).decode()}], "threshold": 0.5}
        return t.post(route, json=body)
    return t.post(route, files={"image": (f"x.{fmt.lower()}", data, "application/octet-stream")})


def amplifier_case(t: Target, inp: Inputs, rng: random.Random) -> str:
    data = rng.choice((inp.thin, inp.thinner, inp.bomb_png, inp.bomb_gif))
    return t.post(rng.choice(("/v1/score", "/v1/heatmap", "/v1/gate")), files={"image": ("b.png", data, "image/png")})


def json_case(t: Target, inp: Inputs, rng: random.Random) -> str:
    good = base64.b64encode(inp.good).decode()
    bodies = [
        b"[" * 5000 + b"]" * 5000,
        b'{"images": [{"data": "AAAA"}], "threshold": ' + b"9" * 5000 + b"}",
        json.dumps({"images": "not-a-list"}).encode(),
        json.dumps({"images": [{"data": "!!!not base64!!!"}]}).encode(),
        json.dumps({"images": [{"data": good}] * 17}).encode(),
        json.dumps({"images": [{"data": good, "filename": "x" * 5000}]}).encode(),
        json.dumps({"images": [{"data": good}], "threshold": "NaN"}).encode(),
        json.dumps({"images": [{"data": good}], "policy": {"x": 1}}).encode(),
        json.dumps({"spec": "csv:/etc/passwd"}).encode(),
        b"\xff\xfe\x00{",
        b"null",
        rng.randbytes(rng.randint(0, 512)),
    ]
    route = rng.choice(("/v1/score", "/v1/gate", "/v1/heatmap", "/v1/validate"))
    return t.post(route, content=rng.choice(bodies), headers={"content-type": "application/json"})


def zip_case(t: Target, inp: Inputs, rng: random.Random) -> str:
    name = rng.choice(sorted(inp.zips))
    fields = {"splits": rng.choice(("1", "0", "x", "99999"))} if rng.random() < 0.3 else None
    return t.post("/v1/validate", files={"archive": ("set.zip", inp.zips[name], "application/zip")}, data=fields)


def header_case(t: Target, inp: Inputs, rng: random.Random) -> str:
    kind = rng.choice(("huge", "many", "bad-length", "negative-length", "chunked", "lying-length"))
    start = f"POST /v1/score HTTP/1.1\r\nHost: {HOST}\r\nX-API-Key: {KEY}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    if kind == "huge":
        return t.raw((start + "X-Big: " + "a" * 70_000 + "\r\nContent-Length: 0\r\n\r\n").encode())
    if kind == "many":
        return t.raw((start + "".join(f"X-H{i}: v\r\n" for i in range(2000)) + "Content-Length: 0\r\n\r\n").encode())
    if kind == "bad-length":
        return t.raw((start + "Content-Length: abc\r\n\r\n").encode())
    if kind == "negative-length":
        return t.raw((start + "Content-Length: -5\r\n\r\n").encode())
    if kind == "chunked":
        return t.raw((start + "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n").encode())
    return t.raw((start + "Content-Length: 10\r\nConnection: close\r\n\r\n" + "x" * 10).encode())


def disconnect_case(t: Target, inp: Inputs, rng: random.Random) -> str:
    head = (f"POST /v1/score HTTP/1.1\r\nHost: {HOST}\r\nX-API-Key: {KEY}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {2 * 2**20}\r\n\r\n").encode()
    return t.raw(head + b"--b\r\n" + rng.randbytes(rng.randint(0, 20_000)), close_after=True)


def misc_case(t: Target, inp: Inputs, rng: random.Random) -> str:
    import httpx

    kind = rng.choice(("no-key", "bad-key", "bad-model", "report-id", "report-file", "text", "empty", "get"))
    files = {"image": ("a.png", inp.good, "image/png")}
    try:
        if kind == "no-key":
            return str(httpx.post(f"{t.base}/v1/score", files=files, timeout=30).status_code)
        if kind == "bad-key":
            return str(httpx.post(f"{t.base}/v1/score", files=files, headers={"Authorization": "Bearer x"}, timeout=30).status_code)
    except httpx.TransportError:
        return "no-answer"
    if kind == "bad-model":
        return t.post("/v1/score", params={"model": "../" + "m" * 300}, files=files)
    if kind == "report-id":
        return str(t.http.get("/v1/reports/" + rng.choice(("x" * 500, "..%2f..%2fetc", "00000000-0000-0000-0000-000000000000"))).status_code)
    if kind == "report-file":
        return str(t.http.get("/v1/reports/00000000-0000-0000-0000-000000000000/report.html").status_code)
    if kind == "text":
        return t.post("/v1/score", content=b"hello", headers={"content-type": "text/plain"})
    if kind == "empty":
        return t.post(rng.choice(("/v1/score", "/v1/validate")), content=b"", headers={"content-type": "multipart/form-data; boundary=b"})
    return str(t.http.get("/v1/score").status_code)


CASES: dict[str, tuple[float, Callable[[Target, Inputs, random.Random], str]]] = {
    "image": (0.45, image_case),
    "amplifier": (0.08, amplifier_case),
    "json": (0.12, json_case),
    "zip": (0.08, zip_case),
    "header": (0.10, header_case),
    "disconnect": (0.07, disconnect_case),
    "misc": (0.10, misc_case),
}


# --------------------------------------------------------------------------- service


def tiny_checkpoint(folder: Path) -> Path:
    import torch

    from metaiqa.models import create_model, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(folder / "fuzz-tiny.safetensors", create_model("metaiqa_tiny"), model_name="metaiqa_tiny",
                           preprocess={"policy": "center_crop", "size": 64})


def start_service(ckpt: Path, port: int, workdir: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAIQA_")}
    env.update(METAIQA_MODEL=str(ckpt), METAIQA_BUNDLED_MODELS="false", METAIQA_TORCH_THREADS="1",
               METAIQA_API_KEYS=KEY, METAIQA_VALIDATE_BOOTSTRAP="0", METAIQA_QUEUE_SIZE="16", METAIQA_MAX_BATCH="8",
               METAIQA_REPORTS_DIR=str(workdir / "reports"), METAIQA_VALIDATE_MAX_PENDING="2")
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "metaiqa.service.app:create_app_from_env", "--host", HOST,
           "--port", str(port), "--log-level", "warning", "--no-access-log"]
    repo = Path(__file__).resolve().parents[1]
    return subprocess.Popen(cmd, env=env, cwd=repo, stdout=subprocess.DEVNULL,
                            stderr=open(workdir / "server.log", "w"))  # noqa: SIM115 (closed with the process)


def answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=10).status_code == 200
    except httpx.TransportError:
        return False


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the peak resident set size of the process so far (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def server_errors(base: str) -> dict[str, int]:
    import httpx

    out: dict[str, int] = collections.Counter()
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("metaiqa_http_requests_total{"):
            status = line.split('status="')[1].split('"')[0]
            out[status] += int(float(line.rsplit(" ", 1)[1]))
    return dict(out)


# --------------------------------------------------------------------------- run


def run(target: Target, inputs: Inputs, args) -> tuple[collections.Counter, collections.Counter]:
    counts: collections.Counter = collections.Counter()
    by_case: collections.Counter = collections.Counter()
    lock = threading.Lock()
    sent = 0
    deadline = time.monotonic() + args.duration
    names = list(CASES)
    weights = [CASES[n][0] for n in names]

    def client(cid: int) -> None:
        nonlocal sent
        rng = random.Random(args.seed * 1000 + cid)
        while time.monotonic() < deadline:
            with lock:
                if sent >= args.requests:
                    return
                sent += 1
            name = rng.choices(names, weights)[0]
            try:
                status = CASES[name][1](target, inputs, rng)
            except OSError as exc:  # refused/reset connection from our raw sockets
                status = f"socket-{type(exc).__name__}"
            with lock:
                counts[status] += 1
                by_case[(name, status)] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return counts, by_case


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="model to serve (default: a tiny untrained one)")
    ap.add_argument("--requests", type=int, default=1200, help="hostile requests to send (default 1200)")
    ap.add_argument("--duration", type=float, default=180.0, help="stop sending after this many seconds (default 180)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent client threads (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="metaiqa-fuzz-") as tmp:
        work = Path(tmp)
        ckpt = args.checkpoint or tiny_checkpoint(work)
        inputs = Inputs()
        port = free_port()
        base = f"http://{HOST}:{port}"
        proc = start_service(ckpt, port, work)
        started = time.monotonic()
        try:
            wait_ready(proc, base)
            counts, by_case = run(Target(base, port), inputs, args)
            elapsed = time.monotonic() - started
            alive = proc.poll() is None and answers(f"{base}/healthz")
            server = server_errors(base) if alive else {}
            peak = peak_rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        log_text = (work / "server.log").read_text()
    report(counts, by_case, server, peak, elapsed, alive, log_text, sorted(inputs.samples))
    n5 = sum(v for k, v in counts.items() if k.startswith("5")) + sum(v for k, v in server.items() if k.startswith("5"))
    return 0 if alive and n5 == 0 else 1


def report(counts, by_case, server, peak, elapsed, alive, log_text, formats) -> None:
    total = sum(counts.values())
    print(f"sent {total} hostile requests in {elapsed:.0f} s (formats: {', '.join(formats)})")
    print("answers:  " + "  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    for case in CASES:
        row = {s: n for (c, s), n in by_case.items() if c == case}
        print(f"  {case:<11}" + "  ".join(f"{k}: {v}" for k, v in sorted(row.items())))
    n5xx = sum(v for k, v in counts.items() if k.startswith("5"))
    print(f"5xx answers: {n5xx} ({counts.get('503', 0)} of them 503 = saturated, with Retry-After)")
    print("server /metrics by status: " + "  ".join(f"{k}: {v}" for k, v in sorted(server.items())))
    print(f"tracebacks in the server log: {log_text.count('Traceback')}")
    print(f"server peak RSS (VmHWM): {peak:.0f} MB; still answering /healthz: {alive}")


if __name__ == "__main__":
    sys.exit(main())
