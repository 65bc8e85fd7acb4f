"""/docs and /redoc work offline (every asset served by the app itself), the favicon, and the
prometheus_client exposition at /metrics (names, labels, per-app registries, process metrics)."""

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from metaiqa.service.app import create_app
from metaiqa.service.metrics import ServiceMetrics
from metrics_helpers import samples, value
from service_helpers import make_checkpoint, png_bytes, settings_for


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("docs") / "tiny.safetensors")


@pytest.fixture(scope="module")
def client(ckpt):
    with TestClient(create_app(settings_for(ckpt))) as c:
        yield c


class _Refs(HTMLParser):
    """Every src/href attribute of a page, plus the spec URL the docs script loads."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [v for k, v in attrs if k in ("src", "href", "spec-url") and v]


def _refs(html: str) -> list[str]:
    parser = _Refs()
    parser.feed(html)
    return parser.urls + re.findall(r"url: '([^']+)'", html)  # Swagger UI's `url: '/openapi.json'`


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_use_only_local_assets(client, page):
    r = client.get(page)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    html = r.text
    assert "cdn" not in html.lower() and "http://" not in html and "https://" not in html, html
    urls = _refs(html)
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts, f"{page} references no script: {urls}"
    if page == "/docs":
        assert any(u.endswith(".css") for u in urls) and "/openapi.json" in urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), f"{page}: non-local URL {url}"
        got = client.get(url)
        assert got.status_code == 200, f"{page}: {url} -> {got.status_code}"
        if url.endswith(".js"):  # the real bundle, not an error page
            assert len(got.content) > 100_000 and "javascript" in got.headers["content-type"]
        if url.endswith(".css"):
            assert len(got.content) > 10_000 and "text/css" in got.headers["content-type"]


def test_favicon_is_served_at_the_root_and_from_static(client):
    from PIL import Image

    r = client.get("/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"] == "image/x-icon"
    import io

    icon = Image.open(io.BytesIO(r.content))
    assert icon.format == "ICO" and (32, 32) in icon.info["sizes"]
    svg = client.get("/static/favicon.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert "<svg" in svg.text
    # the page links both, so no browser falls back to a 404
    page = client.get("/").text
    assert 'href="/static/favicon.svg"' in page and 'href="/favicon.ico"' in page


def test_metrics_names_labels_and_counts(client):
    png = png_bytes(64, seed=3)
    before = samples(client.get("/metrics").text)
    for _ in range(2):
        assert client.post("/v1/score", files={"image": ("a.png", png, "image/png")}).status_code == 200
    assert client.post("/v1/score", files={"image": ("a.png", b"no image", "image/png")}).status_code == 415
    r = client.get("/metrics")
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    after = samples(r.text)

    def delta(name, **labels):
        key = (name, frozenset(labels.items()))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("metaiqa_http_requests_total", route="/v1/score", method="POST", status="200") == 2
    assert delta("metaiqa_http_requests_total", route="/v1/score", method="POST", status="415") == 1
    assert delta("metaiqa_http_request_duration_seconds_count", route="/v1/score") == 3
    assert delta("metaiqa_images_scored_total", model="tiny") == 2
    assert delta("metaiqa_scores_count", model="tiny") == 2
    assert delta("metaiqa_batch_size_count") >= 1  # the two requests may share a batch
    for name in ("metaiqa_queue_depth", "metaiqa_models_loaded", "metaiqa_validation_jobs_pending",
                 "metaiqa_queue_rejections_total", "metaiqa_client_aborts_total"):
        assert value(r.text, name) is not None, name
    assert value(r.text, "metaiqa_models_loaded") == 1
    # the types dashboards rely on
    for line in ("# TYPE metaiqa_http_requests_total counter", "# TYPE metaiqa_scores histogram",
                 "# TYPE metaiqa_queue_depth gauge", "# TYPE metaiqa_batch_size histogram"):
        assert line in r.text


def test_metrics_speak_openmetrics_when_asked(client):
    r = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process metrics need /proc (Linux)")
def test_process_metrics_come_for_free(client):
    text = client.get("/metrics").text
    assert value(text, "process_resident_memory_bytes") > 0
    assert value(text, "process_cpu_seconds_total") >= 0
    assert value(text, "process_open_fds") > 0
    assert any(name == "python_info" for name, _ in samples(text))


def test_each_app_has_its_own_registry(ckpt):
    a, b = ServiceMetrics(), ServiceMetrics()
    a.images.inc(3, model="x")
    a.requests.inc(route="/r", method="GET", status="200")
    assert a.sample("metaiqa_images_scored_total", model="x") == 3
    assert b.sample("metaiqa_images_scored_total", model="x") is None
    assert value(b.render(), "metaiqa_http_requests_total", route="/r", method="GET", status="200") is None
    with TestClient(create_app(settings_for(ckpt))) as c:  # a fresh app starts from zero
        assert value(c.get("/metrics").text, "metaiqa_images_scored_total", model="tiny") is None


def test_a_failing_gauge_reads_nan_and_the_scrape_survives():
    m = ServiceMetrics(process_metrics=False)
    m.add_gauge("metaiqa_broken", "a gauge whose callback raises", lambda: 1 / 0)
    m.add_gauge("metaiqa_fine", "a working gauge", lambda: 7)
    text = m.render()
    assert "metaiqa_broken NaN" in text and value(text, "metaiqa_fine") == 7
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        m.add_gauge("metaiqa_fine", "registered twice", lambda: 0)
