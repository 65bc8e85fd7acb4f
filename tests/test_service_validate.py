"""POST /v1/validate + GET /v1/reports/{id}: report lifecycle and hostile archives."""

import csv
import io
import threading
import time
import zipfile

import numpy as np
import pytest
from conftest import natural_image
from fastapi.testclient import TestClient
from metaiqa.service.app import create_app
from metaiqa.service.archive import safe_member_path
from PIL import Image, ImageFilter
from service_helpers import make_checkpoint, png_bytes, settings_for

from metaiqa.evaluation.metrics import srocc
from metaiqa.inference import Scorer, decode_image


def _labelled_images(n: int = 6) -> list[tuple[str, bytes, float]]:
    """Images blurred progressively, labelled so that more blur = lower MOS."""
    base = Image.fromarray(natural_image(96, seed=2))
    out = []
    for i in range(n):
        img = base.filter(ImageFilter.GaussianBlur(radius=0.6 * i))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out.append((f"imgs/blur_{i}.png", buf.getvalue(), round(1.0 - i / n, 3)))
    return out


def make_zip(entries: dict[str, bytes], *, compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def labels_csv(rows, header=("filename", "mos")) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def good_zip() -> tuple[bytes, list[tuple[str, bytes, float]]]:
    items = _labelled_images()
    entries = {name: data for name, data, _ in items}
    entries["labels.csv"] = labels_csv([(name, mos) for name, _, mos in items])
    return make_zip(entries), items


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors")


@pytest.fixture(scope="module")
def client(ckpt):
    app = create_app(settings_for(ckpt, validate_bootstrap=50, validate_keep_reports=3))
    with TestClient(app) as c:
        yield c


def post_zip(client, data: bytes, **fields):
    return client.post("/v1/validate", files={"archive": ("set.zip", data, "application/zip")}, data=fields)


def wait_done(client, job_id: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/reports/{job_id}").json()
        if body["status"] in ("done", "failed"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {body['status']} after {timeout}s")


def test_report_lifecycle(client, ckpt):
    data, items = good_zip()
    r = post_zip(client, data, splits="2")
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.json()["n_images"] == len(items)
    assert r.headers["location"] == f"/v1/reports/{job_id}"

    body = wait_done(client, job_id)
    assert body["status"] == "done", body["error"]
    report = body["report"]
    assert report["n"] == len(items) and report["model"] == "tiny"
    # the service's numbers are the bare Scorer's numbers, correlated with the uploaded labels
    scorer = Scorer.from_checkpoint(ckpt)
    preds = scorer.score_arrays([decode_image(d) for _, d, _ in items])
    assert report["overall"]["srocc"] == pytest.approx(srocc(preds, [m for *_, m in items]), abs=1e-9)
    assert report["splits"]["count"] == 2

    html = client.get(f"/v1/reports/{job_id}/report.html")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in html.headers["content-security-policy"]
    png = client.get(f"/v1/reports/{job_id}/scatter.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).format == "PNG"
    assert body["links"]["html"].endswith(f"/v1/reports/{job_id}/report.html")


def test_report_ids_unknown_and_malformed(client):
    r = client.get("/v1/reports/0b5c1a0e-7d3b-4c2a-9f1e-2a3b4c5d6e7f")
    assert r.status_code == 404 and "no report" in r.json()["detail"]
    for bad in ("not-a-uuid", "..%2F..%2Fetc", "0B5C1A0E-7D3B-4C2A-9F1E-2A3B4C5D6E7F"):
        assert client.get(f"/v1/reports/{bad}").status_code in (404, 422)
    assert client.get("/v1/reports/not-a-uuid/report.html").status_code == 422


@pytest.mark.parametrize(
    "entries, status, words",
    [
        ({"../evil.png": b"x", "labels.csv": b"filename,mos\n"}, 422, "unsafe path"),
        ({"/abs/evil.png": b"x", "labels.csv": b"filename,mos\n"}, 422, "unsafe path"),
        ({"a\\..\\evil.png": b"x", "labels.csv": b"filename,mos\n"}, 422, "unsafe path"),
        ({"C:/evil.png": b"x", "labels.csv": b"filename,mos\n"}, 422, "unsafe path"),
        ({"a.png": b"x"}, 422, "exactly one CSV"),
        ({"a.csv": b"filename,mos\n", "b.csv": b"filename,mos\n"}, 422, "exactly one CSV"),
        ({"l.csv": b"name,score\na.png,1\n"}, 422, "missing column"),
    ],
)
def test_bad_archives_rejected(client, entries, status, words):
    r = post_zip(client, make_zip(entries))
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_bad_labels_rejected(client):
    items = _labelled_images(4)
    files = {name: data for name, data, _ in items}
    rows = [(n, m) for n, _, m in items]
    cases = [
        (rows[:3] + [("imgs/missing.png", 0.5)], "not a file in the archive"),
        (rows[:3] + [("../../etc/passwd", 0.5)], "unsafe path"),
        (rows[:3] + [(rows[0][0], 0.5)], "listed twice"),
        (rows[:3] + [(rows[3][0], "high")], "not a finite number"),
        (rows[:2], "at least 3"),
    ]
    for bad_rows, words in cases:
        r = post_zip(client, make_zip({**files, "labels.csv": labels_csv(bad_rows)}))
        assert r.status_code == 422 and words in r.json()["detail"], (words, r.text)


def test_not_a_zip_and_missing_field(client):
    r = post_zip(client, b"PK\x03\x04 garbage")
    assert r.status_code == 422 and "not a readable zip" in r.json()["detail"]
    r = client.post("/v1/validate", files={"file": ("x.zip", b"", "application/zip")})
    assert r.status_code == 422 and "'archive'" in r.json()["detail"]
    r = client.post("/v1/validate", content=b"x", headers={"content-type": "application/zip"})
    assert r.status_code == 415
    r = post_zip(client, good_zip()[0], splits="0")
    assert r.status_code == 422 and "splits" in r.json()["detail"]


def test_zip_bomb_and_size_limits(ckpt):
    settings = settings_for(
        ckpt, validate_max_files=5, validate_max_uncompressed_bytes=2_000_000, validate_max_zip_bytes=300_000
    )
    with TestClient(create_app(settings)) as c:
        bomb = make_zip({"zeros.png": bytes(1_500_000), "labels.csv": b"filename,mos\n"})
        assert len(bomb) < 10_000
        r = post_zip(c, bomb)
        assert r.status_code == 413 and "zip bomb" in r.json()["detail"]

        big = make_zip({f"{i}.bin": bytes(1_000_000) for i in range(3)}, compression=zipfile.ZIP_STORED)
        r = post_zip(c, big)
        assert r.status_code == 413 and "limit" in r.json()["detail"]  # the upload itself is over 300 kB

        many = make_zip({f"{i}.png": b"x" for i in range(7)})
        r = post_zip(c, many)
        assert r.status_code == 413 and "more than 5 files" in r.json()["detail"]


    settings = settings_for(ckpt, validate_max_uncompressed_bytes=2_000_000, validate_max_zip_bytes=5_000_000)
    with TestClient(create_app(settings)) as c:
        expands = make_zip(
            {f"{i}.bin": np.random.default_rng(i).bytes(700_000) for i in range(3)}, compression=zipfile.ZIP_STORED
        )
        r = post_zip(c, expands)
        assert r.status_code == 413 and "expands to 2100000 bytes" in r.json()["detail"]


def test_lying_zip_header_is_caught_while_extracting(tmp_path):
    """An entry whose data does not match its declared size is refused (zipfile's checks or our byte count)."""
    from metaiqa.service.archive import ArchiveLimits, ArchiveTooLarge, BadArchive, extract_archive

    data = bytearray(make_zip({"a.bin": b"y" * 5000}, compression=zipfile.ZIP_STORED))
    # patch declared (uncompressed) size in the central directory to 100 bytes
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24 : cd + 28] = (100).to_bytes(4, "little")
    with pytest.raises((ArchiveTooLarge, BadArchive)):
        extract_archive(bytes(data), tmp_path / "out", ArchiveLimits(max_ratio=1e9))


def test_safe_member_path():
    assert str(safe_member_path("a/b.png")) == "a/b.png"
    for bad in ("../x", "a/../../x", "/x", "a\\b", "C:x", "a\x00b", ""):
        with pytest.raises(Exception, match="unsafe path"):
            safe_member_path(bad)


def test_job_with_undecodable_image_fails_with_message(client):
    items = _labelled_images(3)
    entries = {name: data for name, data, _ in items}
    entries["imgs/broken.png"] = b"not really a png"
    entries["labels.csv"] = labels_csv([(n, m) for n, _, m in items] + [("imgs/broken.png", 0.1)])
    r = post_zip(client, make_zip(entries))
    assert r.status_code == 202
    body = wait_done(client, r.json()["id"])
    assert body["status"] == "failed" and "imgs/broken.png" in body["error"]
    r = client.get(f"/v1/reports/{body['id']}/report.html")
    assert r.status_code == 409 and "failed" in r.json()["detail"]


def test_pending_jobs_bounded_429_and_not_ready_409(ckpt):
    app = create_app(settings_for(ckpt, validate_max_pending=1))
    with TestClient(app) as c:
        queue = app.state.service.queue
        release, running = threading.Event(), threading.Event()
        blocker = queue.submit_call(lambda: (running.set(), release.wait(20)))
        assert running.wait(10)
        try:
            r1 = post_zip(c, good_zip()[0])
            assert r1.status_code == 202
            job = r1.json()["id"]
            r = c.get(f"/v1/reports/{job}/scatter.png")
            assert r.status_code == 409 and ("queued" in r.json()["detail"] or "running" in r.json()["detail"])
            r2 = post_zip(c, good_zip()[0])
            assert r2.status_code == 429 and "limit 1" in r2.json()["detail"] and "retry-after" in r2.headers
        finally:
            release.set()
        blocker.result(10)
        assert wait_done(c, job)["status"] == "done"
        assert post_zip(c, good_zip()[0]).status_code == 202


def test_old_reports_are_dropped(ckpt):
    app = create_app(settings_for(ckpt, validate_keep_reports=1, validate_bootstrap=0))
    with TestClient(app) as c:
        first = post_zip(c, good_zip()[0]).json()["id"]
        wait_done(c, first)
        second = post_zip(c, good_zip()[0]).json()["id"]
        wait_done(c, second)
        assert c.get(f"/v1/reports/{first}").status_code == 404
        assert c.get(f"/v1/reports/{second}").status_code == 200


def test_server_spec_disabled_by_default_and_confined_when_enabled(client, ckpt, tmp_path):
    r = client.post("/v1/validate", json={"spec": f"csv:{tmp_path}/x.csv"})
    assert r.status_code == 403 and "disabled" in r.json()["detail"]

    root = tmp_path / "data"
    (root / "imgs").mkdir(parents=True)
    rows = []
    for name, data, mos in _labelled_images(4):
        (root / name).write_bytes(data)
        rows.append((name, mos))
    (root / "set.csv").write_bytes(labels_csv(rows, header=("path", "mos")))
    outside = tmp_path / "elsewhere.csv"
    outside.write_bytes(labels_csv([(str(root / n), m) for n, m in rows], header=("path", "mos")))
    (tmp_path / "secret").mkdir()
    for n, _ in rows:
        (tmp_path / "secret" / n.split("/")[-1]).write_bytes((root / n).read_bytes())
    escaping = root / "escape.csv"  # inside the root, but its rows point out of it
    escaping.write_bytes(labels_csv([(f"../secret/{n.split('/')[-1]}", m) for n, m in rows], header=("path", "mos")))
    app = create_app(settings_for(ckpt, validate_allow_server_specs=True, validate_data_roots=[root], validate_bootstrap=0))
    with TestClient(app) as c:
        r = c.post("/v1/validate", json={"spec": f"csv:{outside}"})
        assert r.status_code == 422 and "outside the allowed roots" in r.json()["detail"]
        r = c.post("/v1/validate", json={"spec": f"csv:{escaping}"})
        assert r.status_code == 422 and "4 image(s) outside the allowed roots" in r.json()["detail"]
        r = c.post("/v1/validate", json={"spec": f"csv:{root / 'set.csv'}"})
        assert r.status_code == 202, r.text
        assert wait_done(c, r.json()["id"])["status"] == "done"


def test_validate_upload_over_limit_is_413(ckpt):
    with TestClient(create_app(settings_for(ckpt, validate_max_zip_bytes=4096))) as c:
        r = post_zip(c, png_bytes(200, seed=3) * 2)
        assert r.status_code == 413 and "4096" in r.json()["detail"]
