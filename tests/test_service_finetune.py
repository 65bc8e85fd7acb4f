"""POST /v1/fine-tune, GET /v1/jobs/{id}, GET /v1/models versions, POST /v1/models/reload:
a fine-tuned model is served without a restart; bad uploads are 4xx; the models folder is
re-scanned (tampered files skipped); scoring carries on while a fine-tune trains."""

import io
import threading
import time

import pytest
from conftest import natural_image
from fastapi.testclient import TestClient
from metaiqa.service import finetune_job
from metaiqa.service.app import create_app
from metaiqa.service.finetune_job import next_version
from metaiqa.service.models import family_of
from PIL import Image, ImageFilter
from service_helpers import make_checkpoint, png_bytes, settings_for
from test_service_validate import labels_csv, make_zip

from metaiqa.inference import Scorer, decode_image
from metaiqa.models.pretrained import PRIOR_MODEL

PNG = {"image": ("a.png", png_bytes(96, seed=7), "image/png")}


def labelled_zip(n: int = 8, *, mos=None, header=("filename", "mos"), extra: dict | None = None) -> bytes:
    """n blurred versions of two scenes, more blur = lower MOS; `content` keeps scenes together."""
    entries, rows = {}, []
    for i in range(n):
        img = Image.fromarray(natural_image(96, seed=i % 2)).filter(ImageFilter.GaussianBlur(radius=0.5 * (i // 2)))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        name = f"imgs/{i}.png"
        entries[name] = buf.getvalue()
        rows.append((name, mos(i) if mos else round(1.0 - (i // 2) / n, 3)))
    entries["labels.csv"] = labels_csv(rows, header=header)
    entries.update(extra or {})
    return make_zip(entries)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("prior") / "tiny.safetensors")


def make_client(ckpt, models_dir, **kw):
    kw.setdefault("models_poll_s", 0)
    kw.setdefault("validate_bootstrap", 20)
    return TestClient(create_app(settings_for(ckpt, models_dir=models_dir, **kw)))


def post(client, data: bytes, **fields):
    return client.post("/v1/fine-tune", files={"archive": ("set.zip", data, "application/zip")}, data=fields)


def wait_job(client, job_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/jobs/{job_id}").json()
        if body["status"] in ("done", "failed"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {body['status']} after {timeout}s")


def score(client, model: str | None = None) -> dict:
    r = client.post("/v1/score" + (f"?model={model}" if model else ""), files=PNG)
    assert r.status_code == 200, r.text
    return r.json()


def test_fine_tune_job_serves_new_versions_without_restart(ckpt, tmp_path):
    models = tmp_path / "models"
    with make_client(ckpt, models) as c:
        r = post(c, labelled_zip(8), name="shop", epochs="1", seed="3")
        assert r.status_code == 202, r.text
        started = r.json()
        assert started["prior"] == "tiny" and started["n_images"] == 8
        assert started["n_train"] + started["n_held_out"] == 8 and started["n_held_out"] >= 3
        assert r.headers["location"] == f"/v1/jobs/{started['id']}"
        body = wait_job(c, started["id"])
        assert body["status"] == "done", body["error"]
        assert body["kind"] == "fine-tune" and body["result_model"] == "shop" and body["progress"]["stage"] == "done"
        report = body["report"]
        assert report["cross_validation"]["chosen_epochs"] == 1  # too few images to select: the fixed budget
        held = report["held_out"]
        assert held["n"] == started["n_held_out"]
        for side in ("fine_tuned", "prior"):
            assert -1 <= held[side]["overall"]["srocc"] <= 1 and len(held[side]["ci"]["srocc"]) == 2

        # the new model is served at once, and scores as its file does
        assert (models / "shop.safetensors").is_file() and (models / "shop.json").is_file()
        served = score(c, "shop")
        assert served["model"] == "shop"
        expected = Scorer.from_checkpoint(models / "shop.safetensors").score_arrays([decode_image(PNG["image"][1])])[0]
        assert served["results"][0]["score"] == pytest.approx(expected, abs=1e-6)
        assert served["results"][0]["score"] != score(c)["results"][0]["score"]  # trained: not the prior

        listing = c.get("/v1/models").json()
        shop = next(m for m in listing["models"] if m["name"] == "shop")
        assert shop["family"] == "shop" and shop["revision"] == 1
        assert shop["validation"]["held_out"]["fine_tuned"]["overall"]["srocc"] == held["fine_tuned"]["overall"]["srocc"]
        assert shop["training"]["metrics"]["holdout_srocc"] == held["fine_tuned"]["overall"]["srocc"]

        # the same name again: a new version, the first one untouched
        first_bytes = (models / "shop.safetensors").read_bytes()
        second = wait_job(c, post(c, labelled_zip(8), name="shop", epochs="1", seed="4").json()["id"])
        assert second["status"] == "done", second["error"]
        assert second["result_model"] == "shop.v2"
        assert (models / "shop.safetensors").read_bytes() == first_bytes
        assert c.get("/v1/models").json()["versions"]["shop"] == {"latest": "shop.v2", "versions": ["shop", "shop.v2"]}
        assert score(c, "shop.v2")["model"] == "shop.v2"
    with make_client(ckpt, models) as c:  # and after a restart, from the folder
        assert {"shop", "shop.v2"} <= {m["name"] for m in c.get("/v1/models").json()["models"]}


@pytest.fixture(scope="module")
def client(ckpt, tmp_path_factory):
    with make_client(ckpt, tmp_path_factory.mktemp("models"), finetune_max_images=10) as c:
        yield c


@pytest.mark.parametrize(
    "data, fields, status, words",
    [
        (b"PK\x03\x04 garbage", {}, 422, "not a readable zip"),
        (labelled_zip(6, header=("file", "score")), {}, 422, "missing column(s) filename, mos"),
        (labelled_zip(6, mos=lambda i: "nan" if i == 3 else 0.5), {}, 422, "not a finite number"),
        (labelled_zip(11), {}, 413, "at most 10"),
        (labelled_zip(6), {"name": "Shop_1"}, 422, "[a-z0-9-]{1,40}"),
        (labelled_zip(6), {"name": "a" * 41}, 422, "[a-z0-9-]{1,40}"),
        (labelled_zip(6), {"name": None}, 422, "name 'none' is invalid"),
        (labelled_zip(6), {"name": PRIOR_MODEL}, 409, "bundled model"),
        (labelled_zip(6), {"name": "tiny"}, 409, "outside the models directory"),
        (labelled_zip(6), {"prior": "nope"}, 404, "unknown model 'nope'"),
        (labelled_zip(6), {"epochs": "99"}, 422, "epochs 99 is outside"),
        (labelled_zip(6), {"holdout": "nan"}, 422, "holdout nan is outside"),
        (labelled_zip(4), {}, 422, "too few to hold 3 out"),
    ],
)
def test_bad_requests_are_4xx_with_a_message(client, data, fields, status, words):
    fields = {"name": "ok", **fields}
    r = post(client, data, **{k: v for k, v in fields.items() if v is not None})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert client.app.state.service.finetune_jobs.pending() == 0  # nothing left reserved


def test_refused_without_models_dir_or_multipart(ckpt, client):
    with TestClient(create_app(settings_for(ckpt))) as c:
        r = post(c, labelled_zip(6), name="shop")
        assert r.status_code == 403 and "models directory" in r.json()["detail"]
    r = client.post("/v1/fine-tune", json={"name": "shop"})
    assert r.status_code == 415


def test_job_errors_are_reported_in_its_status(client):
    broken = labelled_zip(6, extra={"imgs/5.png": b"not a png"})
    body = wait_job(client, post(client, broken, name="broken", holdout="0").json()["id"])
    assert body["status"] == "failed" and "imgs/5.png" in body["error"]
    assert score(client)["model"] == "tiny"  # the service carries on
    assert "broken" not in {m["name"] for m in client.get("/v1/models").json()["models"]}


def test_time_limit_fails_the_job(ckpt, tmp_path):
    with make_client(ckpt, tmp_path / "m", finetune_max_seconds=1e-6) as c:
        body = wait_job(c, post(c, labelled_zip(6), name="slow", holdout="0").json()["id"])
        assert body["status"] == "failed" and "finetune_max_seconds" in body["error"]
        assert not (tmp_path / "m" / "slow.safetensors").exists()


def test_scoring_continues_while_a_fine_tune_runs_and_a_full_backlog_is_429(ckpt, tmp_path, monkeypatch):
    from metaiqa.meta import finetune

    real, running, release = finetune.fine_tune, threading.Event(), threading.Event()

    def held(*args, **kw):
        running.set()
        assert release.wait(60)
        return real(*args, **kw)

    monkeypatch.setattr(finetune, "fine_tune", held)
    with make_client(ckpt, tmp_path / "m", finetune_max_pending=1) as c:
        job = post(c, labelled_zip(6), name="busy", holdout="0", epochs="1").json()["id"]
        try:
            assert running.wait(60)
            assert c.get(f"/v1/jobs/{job}").json()["status"] == "running"
            for _ in range(3):
                assert score(c)["model"] == "tiny"  # served while the fine-tune job is busy
            r = post(c, labelled_zip(6), name="other")
            assert r.status_code == 429 and "limit 1" in r.json()["detail"] and "retry-after" in r.headers
        finally:
            release.set()
        assert wait_job(c, job)["status"] == "done"


def _tamper(path):
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


def test_reload_serves_a_dropped_checkpoint_and_skips_tampered_ones(ckpt, tmp_path, caplog):
    models = tmp_path / "models"
    with make_client(ckpt, models) as c:
        make_checkpoint(models / "dropped.safetensors", seed=5)
        make_checkpoint(models / "evil.safetensors", seed=6)
        _tamper(models / "evil.safetensors")
        r = c.post("/v1/models/reload")
        assert r.status_code == 200
        assert r.json()["added"] == ["dropped"] and "evil" not in r.json()["models"]
        assert any("evil" in e for e in r.json()["errors"])
        assert score(c, "dropped")["model"] == "dropped"
        listing = c.get("/v1/models").json()
        assert "evil" not in {m["name"] for m in listing["models"]} and any("evil" in e for e in listing["errors"])

        _tamper(models / "dropped.safetensors")  # a served model's file changes and no longer verifies
        r = c.post("/v1/models/reload").json()
        assert r["removed"] == ["dropped"] and any("dropped" in e for e in r["errors"])
        assert c.post("/v1/score?model=dropped", files=PNG).status_code == 404
        assert score(c)["model"] == "tiny"
    assert any("evil" in rec.getMessage() for rec in caplog.records if rec.levelname == "ERROR")


def test_folder_changes_are_picked_up_without_a_request(ckpt, tmp_path):
    models = tmp_path / "models"
    with make_client(ckpt, models, models_poll_s=0.05) as c:
        make_checkpoint(models / "later.safetensors", seed=8)
        deadline = time.monotonic() + 20
        while "later" not in {m["name"] for m in c.get("/v1/models").json()["models"]}:
            assert time.monotonic() < deadline, "the poller did not pick up later.safetensors"
            time.sleep(0.05)
        (models / "later.safetensors").unlink()
        (models / "later.json").unlink()
        while "later" in {m["name"] for m in c.get("/v1/models").json()["models"]}:
            assert time.monotonic() < deadline, "the poller did not drop later"
            time.sleep(0.05)


def test_version_names(tmp_path):
    assert next_version(tmp_path, "shop") == "shop"
    for name in ("shop.safetensors", "shop.json", "shop.v3.safetensors", "shopping.safetensors", "shop-x.json"):
        (tmp_path / name).write_bytes(b"")
    assert next_version(tmp_path, "shop") == "shop.v4"
    assert next_version(tmp_path, "shop-x") == "shop-x.v2"
    assert family_of("shop.v2") == ("shop", 2) and family_of("shop") == ("shop", 1)
    assert family_of("metaiqa-default") == ("metaiqa-default", 1) and family_of("a.v1") == ("a.v1", 1)
    assert finetune_job.NAME_RE.match("a" * 40) and not finetune_job.NAME_RE.match("shop.v2")
