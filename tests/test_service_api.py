"""REST service through TestClient: every route's happy path and its errors, with a tiny checkpoint."""

import base64
import io
import threading

import numpy as np
import pytest
from conftest import natural_image
from fastapi.testclient import TestClient
from metaiqa.service.app import create_app
from metrics_helpers import value
from PIL import Image
from service_helpers import make_checkpoint, png_bytes, settings_for

from metaiqa.inference import Scorer, decode_image


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    make_checkpoint(d / "tiny.safetensors", seed=0, config={"method": "maml", "steps": 3}, metrics={"srocc": 0.5})
    make_checkpoint(d / "other.safetensors", seed=1)
    return d


@pytest.fixture(scope="module")
def client(models_dir):
    app = create_app(settings_for(models_dir / "tiny.safetensors", models_dir=models_dir))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def png():
    return png_bytes(96, seed=1)


def _expected_score(models_dir, name, data):
    return Scorer.from_checkpoint(models_dir / f"{name}.safetensors").score_arrays([decode_image(data)])[0]


# ---------------------------------------------------------------------------- /v1/score


def test_score_multipart_matches_bare_scorer(client, models_dir, png):
    other = png_bytes(128, seed=7, fmt="JPEG")
    r = client.post("/v1/score", files=[("image", ("a.png", png, "image/png")), ("image", ("b.jpg", other, "image/jpeg"))])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny"
    a, b = body["results"]
    assert (a["filename"], a["width"], a["height"]) == ("a.png", 96, 96)
    assert (b["filename"], b["width"], b["height"]) == ("b.jpg", 128, 128)
    assert a["score"] == pytest.approx(_expected_score(models_dir, "tiny", png), abs=1e-5)
    assert b["score"] == pytest.approx(_expected_score(models_dir, "tiny", other), abs=1e-5)
    assert all(0 <= x["score"] <= 1 and x["latency_ms"] > 0 for x in body["results"])


def test_score_json_base64(client, models_dir, png):
    r = client.post("/v1/score", json={"images": [{"filename": "x.png", "data": base64.b64encode(png).decode()}]})
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert res["filename"] == "x.png"
    assert res["score"] == pytest.approx(_expected_score(models_dir, "tiny", png), abs=1e-5)


def test_score_other_model_by_name(client, models_dir, png):
    r = client.post("/v1/score?model=other", files={"image": ("a.png", png, "image/png")})
    assert r.status_code == 200
    assert r.json()["model"] == "other"
    assert r.json()["results"][0]["score"] == pytest.approx(_expected_score(models_dir, "other", png), abs=1e-5)


@pytest.mark.parametrize("name", ["nope", "../tiny", "/etc/passwd", "tiny.safetensors", "..%2Ftiny"])
def test_unknown_or_escaping_model_is_404_listing_available(client, png, name):
    r = client.post("/v1/score", params={"model": name}, files={"image": ("a.png", png, "image/png")})
    assert r.status_code == 404
    assert "available: other, tiny" in r.json()["detail"]


@pytest.mark.parametrize(
    "payload, status, words",
    [
        (b"definitely not an image", 415, "not a recognised image"),
        (b"", 415, "not a recognised image"),
    ],
)
def test_not_an_image(client, payload, status, words):
    r = client.post("/v1/score", files={"image": ("bad.png", payload, "image/png")})
    assert r.status_code == status
    assert words in r.json()["detail"] and "bad.png" in r.json()["detail"]


def test_truncated_image(client, png):
    r = client.post("/v1/score", files={"image": ("cut.png", png[: len(png) // 2], "image/png")})
    assert r.status_code in (415, 422)
    assert "truncated" in r.json()["detail"] and "cut.png" in r.json()["detail"]


def test_too_small_image(client):
    r = client.post("/v1/score", files={"image": ("tiny.png", png_bytes(image=np.zeros((8, 40, 3), np.uint8)), "i/p")})
    assert r.status_code == 422
    assert "below the minimum" in r.json()["detail"]


def test_missing_field_and_wrong_content_type(client, png):
    r = client.post("/v1/score", files={"picture": ("a.png", png, "image/png")})
    assert r.status_code == 422 and "'image'" in r.json()["detail"] and "picture" in r.json()["detail"]
    r = client.post("/v1/score", content=b"abc", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "text/plain" in r.json()["detail"]
    r = client.post("/v1/score", json={"images": []})
    assert r.status_code == 422 and "images" in r.json()["detail"]
    r = client.post("/v1/score", json={"images": [{"data": "@@not base64@@"}]})
    assert r.status_code == 422 and "base64" in r.json()["detail"]
    r = client.post("/v1/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]


def test_too_many_images(models_dir, png):
    app = create_app(settings_for(models_dir / "tiny.safetensors", max_images_per_request=2))
    with TestClient(app) as c:
        files = [("image", (f"{i}.png", png, "image/png")) for i in range(3)]
        r = c.post("/v1/score", files=files)
        assert r.status_code == 413 and "limit is 2" in r.json()["detail"]
        enc = base64.b64encode(png).decode()
        r = c.post("/v1/score", json={"images": [{"data": enc}] * 3})
        assert r.status_code == 413 and "limit is 2" in r.json()["detail"]
        assert c.post("/v1/score", files=files[:2]).status_code == 200


def test_upload_limit_by_content_length_and_by_streamed_bytes(models_dir):
    limit = 20_000
    app = create_app(settings_for(models_dir / "tiny.safetensors", max_upload_bytes=limit))
    big = png_bytes(image=np.random.default_rng(0).integers(0, 255, (120, 120, 3), dtype=np.uint8))
    assert len(big) > limit
    with TestClient(app) as c:
        r = c.post("/v1/score", files={"image": ("big.png", big, "image/png")})
        assert r.status_code == 413 and str(limit) in r.json()["detail"]

        def chunks():  # no Content-Length: the limit must be enforced on the bytes that arrive
            yield b"--xx\r\nContent-Disposition: form-data; name=\"image\"; filename=\"b.png\"\r\n\r\n"
            for i in range(0, len(big), 4096):
                yield big[i : i + 4096]
            yield b"\r\n--xx--\r\n"

        r = c.post("/v1/score", content=chunks(), headers={"content-type": "multipart/form-data; boundary=xx"})
        assert r.status_code == 413 and f"exceeds the limit of {limit}" in r.json()["detail"]
        # and the service keeps serving
        assert c.post("/v1/score", files={"image": ("ok.png", png_bytes(), "image/png")}).status_code == 200
        text = c.get("/metrics").text
        assert value(text, "metaiqa_http_requests_total", route="/v1/score", method="POST", status="413") == 2


# ---------------------------------------------------------------------------- /v1/heatmap


@pytest.mark.parametrize("method", ["gradient", "gradcam"])
def test_heatmap_json_grid(client, png, method):
    r = client.post(f"/v1/heatmap?method={method}", files={"image": ("a.png", png, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == method and body["model"] == "tiny"
    grid = np.asarray(body["grid"])
    assert grid.shape == (body["grid_height"], body["grid_width"]) == (32, 32)
    assert grid.min() >= 0 and grid.max() <= 1 and grid.std() > 0


def test_heatmap_grid_keeps_aspect(client):
    data = png_bytes(image=np.ascontiguousarray(natural_image(128, 3)[:64]))  # 64 high, 128 wide
    r = client.post("/v1/heatmap", files={"image": ("w.png", data, "image/png")})
    assert r.status_code == 200
    assert (r.json()["grid_height"], r.json()["grid_width"]) == (16, 32)


def test_heatmap_png_overlay(client, png):
    r = client.post("/v1/heatmap", files={"image": ("a.png", png, "image/png")}, headers={"Accept": "image/png"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.width == 96 and img.height > 96  # the legend strip (colour bar, score) below the image
    assert 0 <= float(r.headers["x-score"]) <= 1 and r.headers["x-model"] == "tiny"
    assert r.headers["x-heatmap-method"] == "gradient" and r.headers["x-heatmap-scale"] == "relative"


def test_heatmap_errors(client, png):
    r = client.post("/v1/heatmap?method=magic", files={"image": ("a.png", png, "image/png")})
    assert r.status_code == 422 and "method" in r.json()["detail"]
    two = [("image", ("a.png", png, "image/png"))] * 2
    r = client.post("/v1/heatmap", files=two)
    assert r.status_code == 413 and "exactly one" in r.json()["detail"]
    r = client.post("/v1/heatmap", files={"image": ("x.png", b"nope", "image/png")})
    assert r.status_code == 415


# ---------------------------------------------------------------------------- /v1/gate


def test_gate_threshold_policy_and_default(client, png):
    score = client.post("/v1/score", files={"image": ("a.png", png, "image/png")}).json()["results"][0]["score"]
    below, above = max(0.0, score - 0.01), min(1.0, score + 0.01)
    r = client.post("/v1/gate", files={"image": ("a.png", png, "image/png")}, data={"threshold": str(below)})
    assert r.status_code == 200
    assert r.json()["passed"] is True and r.json()["results"][0]["passed"] is True and r.json()["threshold"] == below
    r = client.post(f"/v1/gate?threshold={above}", files={"image": ("a.png", png, "image/png")})
    assert r.json()["passed"] is False and r.json()["failures"] == 1
    r = client.post("/v1/gate?policy=strict", files={"image": ("a.png", png, "image/png")})
    assert r.json()["threshold"] == 0.7 and r.json()["policy"] == "strict"
    r = client.post("/v1/gate", files={"image": ("a.png", png, "image/png")})
    assert r.json()["threshold"] == 0.5 and r.json()["policy"] is None
    enc = base64.b64encode(png).decode()
    r = client.post("/v1/gate", json={"images": [{"data": enc}], "threshold": below})
    assert r.status_code == 200 and r.json()["threshold"] == below


@pytest.mark.parametrize(
    "params, data, words",
    [
        ({"threshold": "1.5"}, {}, "outside [0, 1]"),
        ({}, {"threshold": "high"}, "not a number"),
        ({"policy": "nope"}, {}, "unknown policy 'nope'"),
        ({"policy": "strict", "threshold": "0.1"}, {}, "not both"),
        ({"threshold": "nan"}, {}, "outside [0, 1]"),
    ],
)
def test_gate_bad_fields(client, png, params, data, words):
    r = client.post("/v1/gate", params=params, data=data, files={"image": ("a.png", png, "image/png")})
    assert r.status_code == 422
    assert words in r.json()["detail"]


# ---------------------------------------------------------------------------- models / health / metrics


def test_models_lists_both_with_provenance(client, models_dir):
    body = client.get("/v1/models").json()
    assert body["default"] == "tiny"
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {"tiny", "other"}
    tiny = by_name["tiny"]
    import json

    sidecar = json.loads((models_dir / "tiny.json").read_text())
    assert tiny["sha256"] == sidecar["sha256"] and tiny["default"] is True
    assert tiny["architecture"] == "metaiqa_tiny"
    assert tiny["training"]["summary"] == {"method": "maml", "steps": 3}
    assert tiny["training"]["metrics"] == {"srocc": 0.5}


def test_health_ready_and_metrics(client, png):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["default"] == "tiny"
    client.post("/v1/score", files={"image": ("a.png", png, "image/png")})
    client.post("/v1/score", files={"image": ("a.png", b"xx", "image/png")})
    text = client.get("/metrics").text
    assert value(text, "metaiqa_http_requests_total", route="/v1/score", method="POST", status="200") >= 1
    assert value(text, "metaiqa_http_requests_total", route="/v1/score", method="POST", status="415") >= 1
    assert value(text, "metaiqa_http_request_duration_seconds_bucket", route="/v1/score", le="+Inf") >= 2
    assert value(text, "metaiqa_scores_count", model="tiny") >= 1
    assert value(text, "metaiqa_queue_depth") == 0
    assert "# TYPE metaiqa_scores histogram" in text


def test_no_model_starts_but_not_ready(tmp_path, png):
    app = create_app(settings_for(tmp_path / "missing.safetensors"))
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and "missing.safetensors" in r.json()["detail"]
        r = c.post("/v1/score", files={"image": ("a.png", png, "image/png")})
        assert r.status_code == 503 and "no model is loaded" in r.json()["detail"]
        assert c.get("/v1/models").json()["models"] == []


# ---------------------------------------------------------------------------- queue full, auth, crashes


def test_queue_full_is_503_with_retry_after(models_dir, png):
    app = create_app(settings_for(models_dir / "tiny.safetensors", queue_size=1, max_batch=1, retry_after_s=3))
    with TestClient(app) as c:
        queue = app.state.service.queue
        release, running = threading.Event(), threading.Event()
        blocker = queue.submit_call(lambda: (running.set(), release.wait(10)))
        assert running.wait(10)
        filler = queue.submit_call(lambda: None)  # the one free slot
        try:
            r = c.post("/v1/score", files={"image": ("a.png", png, "image/png")})
            assert r.status_code == 503
            assert r.headers["retry-after"] == "3"
            assert "queue full" in r.json()["detail"]
        finally:
            release.set()
        blocker.result(10), filler.result(10)
        assert c.post("/v1/score", files={"image": ("a.png", png, "image/png")}).status_code == 200
        assert value(c.get("/metrics").text, "metaiqa_queue_rejections_total") == 1


def test_api_keys(models_dir, png):
    app = create_app(settings_for(models_dir / "tiny.safetensors", api_keys="k1, k2"))
    with TestClient(app) as c:
        files = {"image": ("a.png", png, "image/png")}
        r = c.post("/v1/score", files=files)
        assert r.status_code == 401 and "missing API key" in r.json()["detail"]
        assert c.post("/v1/score", files=files, headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.post("/v1/score", files=files, headers={"X-API-Key": "k2"}).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": "Bearer k1"}).status_code == 200
        # health, metrics and the page stay open
        assert c.get("/readyz").status_code == 200 and c.get("/metrics").status_code == 200
        assert c.get("/").status_code == 200


def test_auth_off_by_default(client):
    assert client.get("/v1/models").status_code == 200


def test_unexpected_error_is_opaque_500_and_service_survives(models_dir, png):
    from metaiqa.service.deps import get_model

    app = create_app(settings_for(models_dir / "tiny.safetensors"))

    def broken():
        raise RuntimeError("secret internal detail /srv/weights")

    with TestClient(app, raise_server_exceptions=False) as c:
        app.dependency_overrides[get_model] = broken
        r = c.post("/v1/score", files={"image": ("a.png", png, "image/png")})
        assert r.status_code == 500
        assert "secret" not in r.text and "Traceback" not in r.text and "internal error" in r.json()["detail"]
        app.dependency_overrides.clear()
        assert c.post("/v1/score", files={"image": ("a.png", png, "image/png")}).status_code == 200


def test_dependency_override_injects_model(models_dir, png):
    """Tests (and embedders) can swap the served model without touching settings."""
    from metaiqa.service.deps import get_model
    from metaiqa.service.models import ServedModel

    app = create_app(settings_for(models_dir / "tiny.safetensors"))
    other = Scorer.from_checkpoint(models_dir / "other.safetensors", name="injected")
    with TestClient(app) as c:
        app.dependency_overrides[get_model] = lambda: ServedModel("injected", other, models_dir / "other.safetensors")
        r = c.post("/v1/score", files={"image": ("a.png", png, "image/png")})
        assert r.json()["model"] == "injected"
        assert r.json()["results"][0]["score"] == pytest.approx(other.score_arrays([decode_image(png)])[0], abs=1e-5)


def test_web_page_and_assets_are_served(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    for src in ("/static/app.js", "/static/style.css"):
        assert src in r.text
        assert client.get(src).status_code == 200
    assert "http://" not in r.text and "https://" not in r.text  # no CDN


def test_openapi_documents_every_route(client):
    spec = client.get("/openapi.json").json()
    for path in ("/v1/score", "/v1/heatmap", "/v1/gate", "/v1/validate", "/v1/models", "/v1/reports/{report_id}"):
        assert path in spec["paths"]
    assert "multipart/form-data" in spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]
    assert "archive" in str(spec["paths"]["/v1/validate"]["post"]["requestBody"])
