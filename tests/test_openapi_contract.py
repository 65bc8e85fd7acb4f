"""/openapi.json documents the answers the service really gives (issue 12 acceptance): every status a
request below provokes is declared for its route, and every 4xx/5xx body has the documented
ErrorBody shape `{"detail": str}` (422 included, not FastAPI's list of validation errors)."""

import base64
import io
import struct
import zipfile
import zlib

import pytest
from fastapi.testclient import TestClient
from metaiqa.service.app import create_app
from service_helpers import make_checkpoint, png_bytes, settings_for

KEY = {"X-API-Key": "k"}
UUID = "00000000-0000-0000-0000-000000000000"


def _png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress((b"\x00" + b"\x80" * 3 * width) * 2)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    ckpt = make_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors")
    app = create_app(settings_for(ckpt, api_keys="k", validate_bootstrap=0))
    with TestClient(app) as c:
        yield c, c.get("/openapi.json").json()


def _image_requests(route: str) -> list[tuple[str, dict]]:
    png = png_bytes(96, seed=1)
    f = {"image": ("a.png", png, "image/png")}
    return [
        ("ok", {"files": f, "headers": KEY}),
        ("no key", {"files": f}),
        ("bad key", {"files": f, "headers": {"Authorization": "Bearer nope"}}),
        ("unknown model", {"files": f, "headers": KEY, "params": {"model": "nope"}}),
        ("model name too long", {"files": f, "headers": KEY, "params": {"model": "m" * 300}}),
        ("not an image", {"files": {"image": ("a.png", b"hello", "image/png")}, "headers": KEY}),
        ("truncated", {"files": {"image": ("a.png", png[:200], "image/png")}, "headers": KEY}),
        ("thin strip", {"files": {"image": ("s.png", _png_declaring(300_000, 32), "image/png")}, "headers": KEY}),
        ("pixel bomb", {"files": {"image": ("b.png", _png_declaring(60_000, 60_000), "image/png")}, "headers": KEY}),
        ("too small", {"files": {"image": ("t.png", png_bytes(16), "image/png")}, "headers": KEY}),
        ("17 images", {"files": [("image", ("a.png", png, "image/png"))] * 17, "headers": KEY}),
        ("no file field", {"data": {"x": "1"}, "files": {"other": ("a", b"1")}, "headers": KEY}),
        ("text body", {"content": b"hi", "headers": {**KEY, "content-type": "text/plain"}}),
        ("deep json", {"content": b"[" * 5000 + b"]" * 5000, "headers": {**KEY, "content-type": "application/json"}}),
        ("bad base64", {"json": {"images": [{"data": "!!"}]}, "headers": KEY}),
        ("json ok", {"json": {"images": [{"data": base64.b64encode(png).decode()}]}, "headers": KEY}),
        ("too large", {"content": b"x" * (26 * 2**20), "headers": {**KEY, "content-type": "application/json"}}),
    ] + ([("bad threshold", {"files": f, "headers": KEY, "params": {"threshold": "2"}})] if route == "/v1/gate" else [])


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _requests() -> list[tuple[str, str, str, dict]]:
    """(method, route template, what, httpx kwargs)."""
    out = [("POST", r, w, kw) for r in ("/v1/score", "/v1/gate", "/v1/heatmap") for w, kw in _image_requests(r)]
    png = png_bytes(96, seed=1)
    good_zip = _zip({"a.png": png, "b.png": png_bytes(96, seed=2), "c.png": png_bytes(96, seed=3),
                     "labels.csv": b"filename,mos\na.png,0.2\nb.png,0.8\nc.png,0.5\n"})
    out += [("POST", "/v1/heatmap", "two images", {"files": [("image", ("a.png", png, "image/png"))] * 2, "headers": KEY})]
    validate = [
        ("ok", {"files": {"archive": ("s.zip", good_zip, "application/zip")}, "headers": KEY}),
        ("not a zip", {"files": {"archive": ("s.zip", b"nope", "application/zip")}, "headers": KEY}),
        ("traversal", {"files": {"archive": ("s.zip", _zip({"../x.png": png}), "application/zip")}, "headers": KEY}),
        ("no archive", {"files": {"other": ("a", b"1")}, "headers": KEY}),
        ("bad splits", {"files": {"archive": ("s.zip", good_zip, "application/zip")}, "data": {"splits": "x"},
                        "headers": KEY}),
        ("server spec disabled", {"json": {"spec": "csv:/tmp/x.csv"}, "headers": KEY}),
        ("text", {"content": b"x", "headers": {**KEY, "content-type": "text/plain"}}),
        ("no key", {"files": {"archive": ("s.zip", good_zip, "application/zip")}}),
    ]
    out += [("POST", "/v1/validate", w, kw) for w, kw in validate]
    out += [
        ("GET", "/v1/reports/{report_id}", "unknown", {"headers": KEY, "url": f"/v1/reports/{UUID}"}),
        ("GET", "/v1/reports/{report_id}", "bad id", {"headers": KEY, "url": "/v1/reports/" + "x" * 100}),
        ("GET", "/v1/reports/{report_id}/report.html", "unknown", {"headers": KEY, "url": f"/v1/reports/{UUID}/report.html"}),
        ("GET", "/v1/reports/{report_id}/scatter.png", "bad id", {"headers": KEY, "url": "/v1/reports/zz/scatter.png"}),
        ("GET", "/v1/models", "ok", {"headers": KEY}),
        ("GET", "/v1/models", "no key", {}),
        ("GET", "/readyz", "ok", {}),
        ("GET", "/healthz", "ok", {}),
    ]
    return out


def test_every_observed_status_is_documented_with_its_body(served):
    c, schema = served
    seen: dict[tuple[str, str], set[int]] = {}
    for method, route, what, kw in _requests():
        kw = dict(kw)
        r = c.request(method, kw.pop("url", route), **kw)
        seen.setdefault((method, route), set()).add(r.status_code)
        assert r.status_code < 500, (route, what, r.status_code, r.text)
        if r.status_code >= 400:
            assert set(r.json()) == {"detail"} and isinstance(r.json()["detail"], str), (route, what, r.text)
        documented = schema["paths"][route][method.lower()]["responses"]
        assert str(r.status_code) in documented, f"{method} {route} ({what}) answered {r.status_code}, not documented"
        if r.status_code >= 400:
            body = documented[str(r.status_code)]["content"]["application/json"]["schema"]
            assert body == {"$ref": "#/components/schemas/ErrorBody"}, (route, r.status_code, body)
    # the requests above do reach the statuses the routes are documented with
    assert {200, 401, 404, 413, 415, 422} <= seen[("POST", "/v1/score")]
    assert {202, 401, 403, 415, 422} <= seen[("POST", "/v1/validate")]


def test_no_route_documents_fastapis_validation_error_list(served):
    _, schema = served
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert schema["components"]["schemas"]["ErrorBody"]["required"] == ["detail"]


def test_saturation_and_backlog_statuses_are_documented(served):
    _, schema = served
    assert {"503"} <= set(schema["paths"]["/v1/score"]["post"]["responses"])
    assert {"429", "503"} <= set(schema["paths"]["/v1/validate"]["post"]["responses"])
    assert {"409"} <= set(schema["paths"]["/v1/reports/{report_id}/report.html"]["get"]["responses"])
