"""Issue 12, items 1, 5, 6 and 9 and the fuzz acceptance test: any decoder fault is "not a readable
image" (4xx in the service, a per-file error in the CLI), CLI output folders and label files fail
with a message instead of a traceback, thin strips cannot blow up memory under any policy, and a
saturated service refuses before it reads an upload. Generated data only."""

import asyncio
import io
import json
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import natural_image
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from metaiqa.service.app import create_app
from metrics_helpers import value
from PIL import Image, ImageFile
from service_helpers import make_checkpoint, settings_for

from metaiqa.cli import main
from metaiqa.cli.score import IMAGE_EXTENSIONS, expand_inputs
from metaiqa.data.transforms import ExtremeAspectRatio
from metaiqa.inference.decode import PHOTO_FORMATS, DecodeError, TruncatedImage, decode_image
from metaiqa.inference.scorer import Scorer
from metaiqa.models import create_model, save_checkpoint

POLICIES = {
    "center_crop": {"policy": "center_crop", "size": 64},
    "resize": {"policy": "resize", "size": 64},
    "native": {"policy": "native"},
    "views": {"policy": "views", "scale": 96, "size": 64, "max_views": 4},
}


def encode(image: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt, **kw)
    return buf.getvalue()


def _savable(fmt: str) -> bool:
    try:
        encode(natural_image(40, 0), fmt)
    except (KeyError, OSError, ValueError):
        return False
    return True


#: one valid sample of every accepted format this Pillow build can write (40x48, noisy)
SAMPLES = {
    f: encode(natural_image(48, 3)[:40], f) for f in PHOTO_FORMATS if _savable(f)
}


def avif_bytes() -> bytes:
    rng = np.random.default_rng(0)
    return encode((rng.random((96, 96, 3)) * 255).astype(np.uint8), "AVIF", quality=60)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("policies")
    out = {}
    for name, pre in POLICIES.items():
        torch.manual_seed(0)
        out[name] = save_checkpoint(root / f"{name}.safetensors", create_model("metaiqa_tiny"),
                                    model_name="metaiqa_tiny", preprocess=pre)
    return out


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    ckpt = make_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors")
    app = create_app(settings_for(ckpt, validate_bootstrap=0))
    with TestClient(app) as c:
        yield app, c


def png_of_size(width: int, height: int) -> bytes:
    """A valid grey RGB PNG, written by hand (zlib of the raw rows: fast for huge flat images)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" + b"\x80" * (3 * width)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * height, 9)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def thin_png():
    """32 x 300,000 px, ~30 KB: the audit's memory amplifier."""
    return png_of_size(300_000, 32)


def test_hand_made_png_is_a_real_png():
    assert decode_image(png_of_size(40, 33)).shape == (33, 40, 3)


# ---------------------------------------------------------------------------- item 1


def test_every_accepted_format_is_sampled():
    assert {"JPEG", "PNG", "WEBP", "AVIF", "TIFF", "GIF", "BMP"} <= set(SAMPLES)


@pytest.fixture(scope="module")
def avif_flips() -> dict[str, bytes]:
    """One byte flipped every 7 bytes of an AVIF (the audit's recipe): outcome kind -> an example."""
    data, found = avif_bytes(), {}
    for i in range(0, len(data), 7):
        bad = bytearray(data)
        bad[i] ^= 0xFF
        try:
            decode_image(bytes(bad))
            found.setdefault("ok", bytes(bad))
        except DecodeError as exc:
            found.setdefault(type(exc).__name__, bytes(bad))
    return found


def test_bit_flipped_avif_never_escapes_as_runtime_error(avif_flips):
    """Pillow's AVIF plugin raises RuntimeError from load() on some flipped bytes: now a DecodeError
    (the fixture would fail with RuntimeError otherwise)."""
    assert "TruncatedImage" in avif_flips and "NotAnImage" in avif_flips


@pytest.fixture
def load_raises_runtime_error(monkeypatch):
    """Any exception type from a decoder's load() (as the AVIF plugin's RuntimeError)."""

    def broken(self, *a, **k):
        raise RuntimeError("Failed to decode image: BMFF parsing failed")

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken)


def test_any_decoder_exception_is_truncated_image(load_raises_runtime_error):
    with pytest.raises(TruncatedImage, match="RuntimeError: Failed to decode") as err:
        decode_image(SAMPLES["PNG"])
    assert err.value.http_status == 422


@pytest.mark.parametrize("route", ["/v1/score", "/v1/gate", "/v1/heatmap"])
def test_decoder_runtime_error_is_422_in_the_service(client, load_raises_runtime_error, route):
    _, c = client
    r = c.post(route, files={"image": ("bad.avif", SAMPLES["AVIF"], "image/avif")})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("bad.avif: ") and "could not be decoded" in r.json()["detail"]


@pytest.fixture
def flipped_avif(tmp_path, avif_flips):
    """A bit-flipped AVIF whose pixels cannot be decoded, beside a good JPEG."""
    (tmp_path / "bad.avif").write_bytes(avif_flips["TruncatedImage"])
    (tmp_path / "good.jpg").write_bytes(encode(natural_image(96, 1), "JPEG"))
    return tmp_path


def test_cli_score_reports_an_unreadable_avif_per_file_and_scores_the_rest(ckpts, flipped_avif, capsys):
    rc = main(["-q", "score", str(flipped_avif / "bad.avif"), str(flipped_avif / "good.jpg"),
               "--model", str(ckpts["center_crop"]), "--format", "json"])
    rows = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)}
    assert rc == 0
    assert rows["good.jpg"]["score"] is not None
    assert rows["bad.avif"]["score"] is None and rows["bad.avif"]["error_type"] == "TruncatedImage"


def test_cli_gate_with_an_unreadable_avif_exits_2_unreadable(ckpts, flipped_avif, capsys):
    rc = main(["-q", "gate", str(flipped_avif), "--min-score", "0", "--model", str(ckpts["center_crop"]),
               "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 2 and report["verdict"] == "error" and report["unreadable"] == 1 and report["passed"] == 1


def test_folder_search_finds_every_accepted_format(tmp_path):
    for fmt, data in SAMPLES.items():
        (tmp_path / f"x.{fmt.lower()}").write_bytes(data)
    (tmp_path / "notes.txt").write_text("not an image")
    found, problems = expand_inputs([str(tmp_path)])
    assert not problems
    assert {p.suffix for p in found} == {f".{f.lower()}" for f in SAMPLES}


def test_image_extensions_are_pillows_for_every_accepted_format():
    Image.init()
    pillow = {ext for ext, fmt in Image.registered_extensions().items() if fmt in PHOTO_FORMATS}
    assert pillow <= IMAGE_EXTENSIONS and ".avif" in IMAGE_EXTENSIONS


# ---------------------------------------------------------------------------- property-based


def _mutate(draw_data: bytes, how: str, seed: int, count: int) -> bytes:
    rng = np.random.default_rng(seed)
    if how == "truncate":
        return draw_data[: int(rng.integers(0, len(draw_data)))]
    if how == "flip":
        out = bytearray(draw_data)
        for pos in rng.integers(0, len(out), size=count):
            out[pos] ^= int(rng.integers(1, 256))
        return bytes(out)
    return draw_data[:16] + rng.bytes(int(rng.integers(0, 2048)))  # the format's magic + noise


hostile = st.builds(
    _mutate,
    st.sampled_from(sorted(SAMPLES)).map(SAMPLES.__getitem__),
    st.sampled_from(["truncate", "flip", "random"]),
    st.integers(0, 2**32 - 1),
    st.integers(1, 8),
) | st.binary(max_size=512)


@settings(max_examples=250, deadline=None)
@given(data=hostile)
def test_decode_image_gives_pixels_or_a_decode_error(data):
    try:
        out = decode_image(data)
    except DecodeError as exc:
        assert 400 <= exc.http_status < 500 and str(exc)
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=hostile)
def test_score_route_answers_2xx_or_4xx_to_hostile_images(client, data):
    """TestClient re-raises any unhandled server exception, so a traceback fails the test too."""
    _, c = client
    r = c.post("/v1/score", files={"image": ("x", data, "application/octet-stream")})
    assert 200 <= r.status_code < 300 or 400 <= r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        assert isinstance(r.json()["detail"], str) and "Traceback" not in r.text


# ---------------------------------------------------------------------------- item 6


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_thin_strip_is_refused_fast_and_small_under_every_policy(ckpts, thin_png, policy):
    scorer = Scorer.from_checkpoint(ckpts[policy])
    tracemalloc.start()
    start = time.perf_counter()
    try:
        (res,) = scorer.score_bytes_safe([thin_png])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(res, ExtremeAspectRatio) and "limit 12:1" in str(res) and "9375.0:1" in str(res)
    assert time.perf_counter() - start < 1.0
    assert peak < 20 * 2**20  # refused from the header: no pixel decoded, never the 5.6 GB upscale


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_arrays_are_checked_too(ckpts, policy):
    scorer = Scorer.from_checkpoint(ckpts[policy])
    with pytest.raises(ExtremeAspectRatio, match="limit 12:1"):
        scorer.score_arrays([np.zeros((32, 20_000, 3), np.uint8)])
    assert 0.0 <= scorer.score_arrays([natural_image(48, 1)[:, :]])[0] <= 1.0  # small: upscaled, fine


@pytest.mark.parametrize("route", ["/v1/score", "/v1/heatmap", "/v1/gate"])
def test_thin_strip_is_422_naming_the_limit_in_the_service(client, thin_png, route):
    _, c = client
    start = time.perf_counter()
    r = c.post(route, files={"image": ("strip.png", thin_png, "image/png")})
    assert r.status_code == 422 and "exceeds the limit 12:1" in r.json()["detail"]
    assert time.perf_counter() - start < 5.0


def test_thin_strip_is_a_per_file_error_in_the_cli(ckpts, thin_png, tmp_path, capsys):
    (tmp_path / "strip.png").write_bytes(thin_png)
    (tmp_path / "ok.png").write_bytes(encode(natural_image(96, 2), "PNG"))
    rc = main(["-q", "score", str(tmp_path), "--model", str(ckpts["resize"]), "--format", "json"])
    rows = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)}
    assert rc == 0 and rows["ok.png"]["score"] is not None
    assert rows["strip.png"]["error_type"] == "ExtremeAspectRatio" and "12:1" in rows["strip.png"]["error"]


# ---------------------------------------------------------------------------- item 5


def _latin1_csv(tmp_path: Path) -> Path:
    (tmp_path / "a.png").write_bytes(encode(natural_image(64, 1), "PNG"))
    path = tmp_path / "labels.csv"
    path.write_bytes("path,mos,group\na.png,0.5,caf\xe9\n".encode("latin-1"))
    return path


@pytest.mark.parametrize("command", ["validate", "fine-tune"])
def test_non_utf8_csv_is_a_message_not_a_traceback(ckpts, tmp_path, capsys, command):
    csv_path = _latin1_csv(tmp_path)
    flag = "--model" if command == "validate" else "--prior"
    rc = main([command, flag, str(ckpts["center_crop"]), "--data", str(csv_path), "--out", str(tmp_path / "o"),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "not UTF-8" in err and str(csv_path) in err and "Traceback" not in err


def test_unusable_heatmap_dir_fails_before_scoring(ckpts, tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(encode(natural_image(64, 1), "PNG"))
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    rc = main(["score", str(tmp_path / "a.png"), "--model", str(ckpts["center_crop"]), "--heatmap-dir", str(blocker)])
    captured = capsys.readouterr()
    assert rc == 2 and f"--heatmap-dir {blocker} is a file" in captured.err and captured.out == ""
    rc = main(["score", str(tmp_path / "a.png"), "--model", str(ckpts["center_crop"]),
               "--heatmap-dir", str(blocker / "sub")])
    assert rc == 2 and "not a writable folder" in capsys.readouterr().err


def test_validate_out_pointing_at_a_file_fails_before_scoring(ckpts, tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(encode(natural_image(64, 1), "PNG"))
    (tmp_path / "labels.csv").write_text("path,mos\na.png,0.5\n")
    target = tmp_path / "report.txt"
    target.write_text("x")
    rc = main(["validate", "--model", str(ckpts["center_crop"]), "--data", str(tmp_path / "labels.csv"),
               "--out", str(target), "--no-progress"])
    assert rc == 2 and f"validate --out {target} is a file" in capsys.readouterr().err


def test_fine_tune_out_in_a_file_fails_before_training(ckpts, tmp_path, capsys):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,mos\n")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["fine-tune", "--prior", str(ckpts["center_crop"]), "--data", str(csv_path),
               "--out", str(blocker / "tuned.safetensors"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--out folder" in err and "Traceback" not in err


def _tiny_set(root: Path, n: int = 12) -> Path:
    rows = ["path,mos"]
    for i in range(n):
        img = np.clip(natural_image(64, i).astype(float) + np.random.default_rng(i).normal(0, 4 * i, (64, 64, 3)), 0, 255)
        Image.fromarray(img.astype(np.uint8)).save(root / f"i{i}.png")
        rows.append(f"i{i}.png,{1 - i / n:.3f}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def test_fine_tune_weights_survive_an_unwritable_out(ckpts, tmp_path, capsys, monkeypatch):
    """--out becomes unwritable during training: the weights go to a rescue folder, the message says where."""
    import metaiqa.models.checkpoint as checkpoint

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    real, calls = checkpoint.save_checkpoint, []

    def first_fails(path, *a, **k):
        calls.append(Path(path))
        if len(calls) == 1:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(checkpoint, "save_checkpoint", first_fails)
    out = tmp_path / "out" / "tuned.safetensors"
    rc = main(["-q", "fine-tune", "--prior", str(ckpts["center_crop"]), "--data", str(_tiny_set(tmp_path)),
               "--shots", "8", "--epochs", "1", "--batch-size", "4", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    rescued = calls[1]
    assert rc == 2 and f"could not write --out {out}" in err and "Permission denied" in err
    assert f"saved to {rescued}" in err and rescued.is_file() and rescued.with_suffix(".json").is_file()
    assert rescued.is_relative_to(tmp_path / "home" / ".cache" / "metaiqa" / "rescued")
    assert Scorer.from_checkpoint(rescued).score_arrays([natural_image(64, 1)])[0] >= 0.0


# ---------------------------------------------------------------------------- item 9


def _post_without_reading(app, portal, path: str, n_bytes: int) -> tuple[int, dict[str, str], int]:
    """Raw ASGI POST declaring a large multipart body; returns (status, headers, body reads asked for)."""
    reads = 0
    sent: list[dict] = []

    async def receive():
        nonlocal reads
        reads += 1
        await asyncio.sleep(0)
        return {"type": "http.request", "body": b"x" * 1024, "more_body": reads * 1024 < n_bytes}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"t"), (b"content-type", b"multipart/form-data; boundary=x"),
                    (b"content-length", str(n_bytes).encode())],
        "client": ("127.0.0.1", 1), "server": ("t", 80),
    }

    async def run():
        await app(scope, receive, send)

    portal.call(run)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, reads


@pytest.mark.parametrize("path", ["/v1/score", "/v1/gate", "/v1/heatmap"])
def test_full_queue_refuses_before_reading_the_body(tmp_path, path):
    app = create_app(settings_for(make_checkpoint(tmp_path / "t.safetensors"), queue_size=1, max_batch=1,
                                  max_pending_heatmaps=1, retry_after_s=4))
    with TestClient(app) as c:
        # heatmaps have their own lane: a full lane refuses them, a full score queue refuses the rest
        queue = app.state.service.heatmaps if path == "/v1/heatmap" else app.state.service.queue
        import threading

        release, running = threading.Event(), threading.Event()
        blocker = queue.submit_call(lambda: (running.set(), release.wait(10)))
        assert running.wait(10)
        filler = queue.submit_call(lambda: None)
        try:
            status, headers, reads = _post_without_reading(app, c.portal, path, 20 * 2**20)
        finally:
            release.set()
        blocker.result(10), filler.result(10)
        assert status == 503 and headers["retry-after"] == "4" and reads == 0
        assert value(c.get("/metrics").text, "metaiqa_queue_rejections_total") == 1


def test_too_many_requests_in_progress_refuse_before_reading(tmp_path):
    app = create_app(settings_for(make_checkpoint(tmp_path / "t.safetensors"), max_pending_requests=1))
    with TestClient(app) as c:
        app.state.service.admitted = 1  # one upload already being received
        status, headers, reads = _post_without_reading(app, c.portal, "/v1/score", 2**20)
        assert status == 503 and "retry-after" in headers and reads == 0
        app.state.service.admitted = 0
        png = encode(natural_image(64, 1), "PNG")
        assert c.post("/v1/score", files={"image": ("a.png", png, "image/png")}).status_code == 200
        assert app.state.service.admitted == 0  # released after each request


def test_full_validation_backlog_refuses_before_reading_the_archive(tmp_path):
    app = create_app(settings_for(make_checkpoint(tmp_path / "t.safetensors"), validate_max_pending=1))
    with TestClient(app) as c:
        app.state.service.jobs.reserve("tiny")  # the one slot, held
        status, headers, reads = _post_without_reading(app, c.portal, "/v1/validate", 50 * 2**20)
        assert status == 429 and "retry-after" in headers and reads == 0
