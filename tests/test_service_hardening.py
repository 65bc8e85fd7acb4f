"""Issue 12, service items 2, 3, 4, 8 and 12: hostile bodies and archives get 4xx, client aborts
are not server errors, job inputs do not pile up on disk, and nothing waits forever on the
inference thread. Generated data only."""

import asyncio
import io
import json
import socket
import threading
import time
import zipfile

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from metaiqa.service.app import create_app
from metaiqa.service.batching import InferenceQueue, InferenceTimeout, InferenceUnavailable
from metaiqa.service.jobs import JobStore
from service_helpers import make_checkpoint, png_bytes, settings_for

# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors")


@pytest.fixture(scope="module")
def app_client(ckpt):
    app = create_app(settings_for(ckpt, validate_bootstrap=0, validate_keep_reports=5))
    with TestClient(app) as c:
        yield app, c


@pytest.fixture(scope="module")
def png():
    return png_bytes(96, seed=1)


def make_zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def labelled(names: list[str], png: bytes, mos=None, extra: dict[str, bytes] | None = None) -> bytes:
    mos = mos or [0.2 + 0.2 * i for i in range(len(names))]
    rows = "".join(f"{n},{m}\n" for n, m in zip(names, mos, strict=True))
    return make_zip({**{n: png for n in names}, **(extra or {}), "labels.csv": ("filename,mos\n" + rows).encode()})


def post_zip(client, data: bytes):
    return client.post("/v1/validate", files={"archive": ("set.zip", data, "application/zip")})


def wait_job(client, job_id: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/reports/{job_id}").json()
        if body["status"] in ("done", "failed"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def _statuses(metrics_text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in metrics_text.splitlines():
        if line.startswith("metaiqa_http_requests_total{"):
            status = line.split('status="')[1].split('"')[0]
            out[status] = out.get(status, 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


# ---------------------------------------------------------------------------- item 2: JSON bodies

DEEP = b"[" * 5000 + b"]" * 5000
BIG_INT = b'{"images": [{"data": "AAAA"}], "threshold": ' + b"9" * 5000 + b"}"


@pytest.mark.parametrize("path", ["/v1/score", "/v1/gate", "/v1/heatmap", "/v1/validate"])
@pytest.mark.parametrize("body", [DEEP, BIG_INT, b'{"spec": ' + b"1" * 5000 + b"}"], ids=["deep", "bigint", "spec"])
def test_hostile_json_bodies_are_422(app_client, path, body):
    _, c = app_client
    r = c.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "not valid JSON" in r.json()["detail"]


def test_gate_threshold_beyond_float_range_is_422(app_client, png):
    _, c = app_client
    import base64

    image = json.dumps([{"data": base64.b64encode(png).decode()}])
    body = '{"images": ' + image + ', "threshold": ' + "9" * 400 + "}"
    r = c.post("/v1/gate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not a number" in r.json()["detail"]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.sampled_from(["images", "data", "threshold",
                                                                                "filename", "spec", "x"]), kids),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_json | st.binary(max_size=64).map(lambda b: ("raw", b)))
def test_random_json_bodies_never_5xx(app_client, body):
    _, c = app_client
    raw = body[1] if isinstance(body, tuple) else json.dumps(body).encode()
    for path in ("/v1/score", "/v1/gate"):
        r = c.post(path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code < 500, (path, raw[:200], r.text)


# ---------------------------------------------------------------------------- item 3: archives


def test_overlong_entry_name_is_422(app_client, png):
    _, c = app_client
    long = "x" * 300 + ".png"
    r = post_zip(c, labelled([long, "b.png", "c.png"], png))
    assert r.status_code == 422, r.text
    assert "longer than 255 bytes" in r.json()["detail"]


def test_file_and_folder_of_the_same_name_is_422(app_client, png):
    _, c = app_client
    r = post_zip(c, labelled(["a.jpg", "b.png", "c.png"], png, extra={"a.jpg/b.jpg": png}))
    assert r.status_code == 422, r.text
    assert "both as a file and as a folder" in r.json()["detail"]


@pytest.mark.parametrize("mos", ["1e308", "-1e308", "1e13"])
def test_extreme_mos_is_422_not_a_failed_job(app_client, png, mos):
    _, c = app_client
    r = post_zip(c, labelled(["a.png", "b.png", "c.png"], png, mos=["0.1", mos, "0.3"]))
    assert r.status_code == 422, r.text
    assert "beyond" in r.json()["detail"]


def test_csv_with_nul_bytes_is_422(app_client, png):
    _, c = app_client
    data = make_zip({"a.png": png, "labels.csv": b"filename,mos\na.png,0\x00.5\n"})
    r = post_zip(c, data)
    assert r.status_code == 422 and "labels.csv" in r.json()["detail"]


def test_content_column_groups_the_bootstrap(png):
    import tempfile
    from pathlib import Path

    from metaiqa.service.archive import read_labels

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for n in ("a.png", "b.png", "c.png"):
            (root / n).write_bytes(png)
        (root / "l.csv").write_text("filename,mos,content\na.png,0.1,scene1\nb.png,0.2,scene1\nc.png,0.3,\n")
        samples = read_labels(root / "l.csv", root, 10)
    assert [s.content for s in samples] == ["scene1", "scene1", None]


def test_upload_csv_takes_the_cli_column_names(tmp_path, png):
    from metaiqa.service.archive import BadArchive, read_labels

    for n in ("a.png", "b.png", "c.png"):
        (tmp_path / n).write_bytes(png)
    csv_path = tmp_path / "l.csv"
    csv_path.write_text("filename,mos,Scene,distortion\na.png,0.1,s1,blur\nb.png,0.2,s1,blur\nc.png,0.3,s2,jpeg\n")
    samples = read_labels(csv_path, tmp_path, 10)
    assert [s.content for s in samples] == ["s1", "s1", "s2"] and [s.group for s in samples] == ["blur"] * 2 + ["jpeg"]
    csv_path.write_text("filename,mos,scene,content\na.png,0.1,s1,s1\nb.png,0.2,s1,s9\nc.png,0.3,s2,s2\n")
    with pytest.raises(BadArchive, match="line 3.*scene='s1'.*content='s9'"):
        read_labels(csv_path, tmp_path, 10)


# ---------------------------------------------------------------------------- item 8: job disk


def test_job_inputs_are_deleted_whatever_the_outcome(app_client, png):
    app, c = app_client
    jobs = app.state.service.jobs
    good = post_zip(c, labelled(["a.png", "b.png", "c.png"], png)).json()["id"]
    bad = post_zip(c, labelled(["a.png", "b.png", "c.png"], png[:200])).json()["id"]  # truncated images
    assert wait_job(c, good)["status"] == "done"
    assert wait_job(c, bad)["status"] == "failed"
    for job_id in (good, bad):
        job = jobs.get(job_id)
        assert not (job.dir / "input").exists()
        assert job.disk_bytes == sum(f.stat().st_size for f in job.dir.rglob("*") if f.is_file())
    assert "metaiqa_validation_disk_bytes" in c.get("/metrics").text


def _finished(store: JobStore, size: int, status: str = "done"):
    job = store.reserve("m")
    (job.dir / "report.bin").write_bytes(b"x" * size)
    store._run(job, lambda j: None if status == "done" else (_ for _ in ()).throw(ValueError("boom")))
    return job


def test_job_disk_cap_evicts_old_reports_and_refuses_when_running_jobs_fill_it(tmp_path):
    store = JobStore(tmp_path, max_pending=2, keep=10, max_disk_bytes=2500)
    try:
        first, second = _finished(store, 1000), _finished(store, 1000)
        third = _finished(store, 1000, status="failed")
        assert third.status == "failed"
        store._cleaner.submit(lambda: None).result(10)  # let the cleanup thread catch up
        with pytest.raises(Exception, match="no report"):
            store.get(first.id)
        assert not first.dir.exists() and second.dir.exists()
        assert store.disk_bytes() <= 2500
        running = store.reserve("m")
        store.set_input_size(running, 3000)  # an unpacked upload of a job still queued
        with pytest.raises(Exception, match="storage is full") as err:
            store.reserve("m")
        assert getattr(err.value, "http_status", None) == 429
    finally:
        store.shutdown()


def test_evicted_folders_are_removed_off_the_calling_thread(tmp_path, monkeypatch):
    import metaiqa.service.jobs as jobs_mod

    seen = []
    real = jobs_mod.shutil.rmtree
    monkeypatch.setattr(jobs_mod.shutil, "rmtree", lambda p, **kw: (seen.append(threading.current_thread().name),
                                                                     real(p, **kw)))
    store = JobStore(tmp_path, max_pending=2, keep=1)
    try:
        _finished(store, 10)
        _finished(store, 10)  # evicts the first
        store.discard(store.reserve("m"))
        store._cleaner.submit(lambda: None).result(10)
    finally:
        store.shutdown()
    evictions = [name for name in seen if name.startswith("metaiqa-cleanup")]
    assert len(evictions) >= 2 and threading.current_thread().name not in evictions


def test_job_table_reads_hold_the_lock(tmp_path):
    store = JobStore(tmp_path, max_pending=2, keep=1)
    try:
        result = []
        with store._lock:
            t = threading.Thread(target=lambda: result.append(store.pending()))
            t.start()
            t.join(0.2)
            assert t.is_alive() and not result  # waits for the lock
        t.join(5)
        assert result == [0]
    finally:
        store.shutdown()


# ---------------------------------------------------------------------------- item 12: inference thread


class _Scorer:
    name = "fake"

    def prepare(self, images):
        return list(images)

    def score_views(self, views):
        return [0.5 for _ in views]


def test_worker_survives_an_unexpected_error(monkeypatch):
    q = InferenceQueue(capacity=4, max_batch=2, max_wait_s=0.0)
    calls = {"n": 0}
    real = q._run_scores

    def flaky(items):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyError("bug in the batching code")
        real(items)

    monkeypatch.setattr(q, "_run_scores", flaky)
    q.start()
    try:
        (bad,) = q.submit_scores(_Scorer(), [np.zeros((4, 4, 3), np.uint8)])
        with pytest.raises(KeyError, match="bug"):
            bad.result(5)
        (good,) = q.submit_scores(_Scorer(), [np.zeros((4, 4, 3), np.uint8)])
        assert good.result(5) == 0.5 and q.alive
    finally:
        q.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_dead_worker_fails_queued_work_and_refuses_new_work(monkeypatch):
    q = InferenceQueue(capacity=8, max_batch=1, max_wait_s=0.0)
    release, running = threading.Event(), threading.Event()
    q.start()
    q.submit_call(lambda: (running.set(), release.wait(10)))
    assert running.wait(10)
    (current,) = q.submit_scores(_Scorer(), [np.zeros((4, 4, 3), np.uint8)])
    (queued,) = q.submit_scores(_Scorer(), [np.zeros((4, 4, 3), np.uint8)])

    def fatal(_batch):
        raise SystemExit("worker killed")

    monkeypatch.setattr(q, "_run_batch", fatal)
    release.set()
    for future in (current, queued):  # the batch it died on, and the one still waiting
        with pytest.raises(InferenceUnavailable, match="worker stopped"):
            future.result(10)
    q._thread.join(5)
    assert not q.alive
    with pytest.raises(InferenceUnavailable, match="not running") as err:
        q.submit_call(lambda: None)
    assert err.value.http_status == 503


def test_awaiting_a_stuck_worker_times_out():
    q = InferenceQueue(capacity=8, max_batch=1, max_wait_s=0.0, result_timeout_s=0.2)
    release, running = threading.Event(), threading.Event()
    q.start()
    q.submit_call(lambda: (running.set(), release.wait(10)))
    assert running.wait(10)
    try:
        with pytest.raises(InferenceTimeout, match="within 0.2 s"):
            asyncio.run(q.scores(_Scorer(), [np.zeros((4, 4, 3), np.uint8)]))
        with pytest.raises(InferenceTimeout):
            q.wait_results(q.submit_scores(_Scorer(), [np.zeros((4, 4, 3), np.uint8)]))
    finally:
        release.set()
        q.stop()


def test_gate_compares_the_raw_score_like_the_cli(app_client, png, monkeypatch):
    app, c = app_client
    served = app.state.service.models.get(None)
    raw = 0.4999996  # reported as 0.5 (6 decimals); below a 0.5 threshold
    monkeypatch.setattr(served.scorer, "score_views", lambda views: [raw for _ in views])
    r = c.post("/v1/gate?threshold=0.5", files={"image": ("a.png", png, "image/png")})
    assert r.status_code == 200
    item = r.json()["results"][0]
    assert item["score"] == 0.5 and item["passed"] is False and r.json()["passed"] is False


def test_heatmap_grid_is_downsampled_off_the_event_loop(app_client, png, monkeypatch):
    import metaiqa.service.routes.heatmap as heatmap_mod

    _, c = app_client
    seen = []
    real = heatmap_mod.downsample
    monkeypatch.setattr(heatmap_mod, "downsample", lambda heat, n: (seen.append(threading.current_thread().name),
                                                                   real(heat, n))[1])
    r = c.post("/v1/heatmap", files={"image": ("a.png", png, "image/png")})
    assert r.status_code == 200 and seen and all("worker" in name.lower() for name in seen), seen


# ---------------------------------------------------------------------------- item 4: client aborts


def _multipart(png: bytes) -> tuple[bytes, bytes]:
    boundary = b"XyZ123"
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + png + b"\r\n--" + boundary + b"--\r\n")
    return body, b"multipart/form-data; boundary=" + boundary


def test_disconnect_mid_upload_is_a_client_abort_not_a_500(app_client, png, caplog):
    app, c = app_client
    body, ctype = _multipart(png * 4)
    before = _statuses(c.get("/metrics").text)

    async def upload_then_vanish():
        messages = [{"type": "http.request", "body": body[:500], "more_body": True}]
        sent = []

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/score", "raw_path": b"/v1/score", "query_string": b"",
                 "root_path": "", "client": ("127.0.0.1", 5), "server": ("testserver", 80), "state": {},
                 "headers": [(b"host", b"testserver"), (b"content-type", ctype),
                             (b"content-length", str(len(body)).encode())]}
        await app(scope, receive, send)
        return sent

    with caplog.at_level("INFO"):
        sent = c.portal.call(upload_then_vanish)
    assert sent == []  # nobody to answer
    after = _statuses(c.get("/metrics").text)
    assert after.get("499", 0) == before.get("499", 0) + 1
    assert after.get("500", 0) == before.get("500", 0)
    assert "client disconnected" in caplog.text
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL") or r.exc_info]


@pytest.fixture(scope="module")
def live_server(ckpt):
    import uvicorn

    app = create_app(settings_for(ckpt))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", sock.getsockname()[1]
    server.should_exit = True
    thread.join(10)


def _raw(port: int, data: bytes, close_after: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        if close_after:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
        return b"".join(chunks)


def test_real_server_counts_aborts_and_bad_chunks_as_client_errors(live_server, png, caplog):
    url, port = live_server
    body, ctype = _multipart(png * 4)
    head = (b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: " + ctype + b"\r\n")
    with caplog.at_level("WARNING"):
        _raw(port, head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:300])
        answer = _raw(port, head + b"Transfer-Encoding: chunked\r\n\r\n10\r\n" + body[:16] + b"\r\nZZ\r\n")
        assert answer.startswith(b"HTTP/1.1 400")
        time.sleep(0.5)
        statuses = _statuses(httpx.get(f"{url}/metrics", timeout=10).text)
    assert statuses.get("499", 0) == 2 and "500" not in statuses, statuses
    assert "Exception in ASGI application" not in caplog.text and "unhandled error" not in caplog.text
