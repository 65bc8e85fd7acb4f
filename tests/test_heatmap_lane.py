"""Issue 11: heatmaps run in their own lane, so /v1/score never waits behind one."""

import threading

import pytest
from fastapi.testclient import TestClient
from metaiqa.service.app import create_app
from service_helpers import make_checkpoint, png_bytes, settings_for

import metaiqa.inference.heatmap as heatmap_lib


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors")


@pytest.fixture
def slow_heatmaps(monkeypatch):
    """explain() parks until `release` is set; `running` is set once a heatmap is being computed."""
    running, release = threading.Event(), threading.Event()
    real = heatmap_lib.explain

    def slow(*args, **kwargs):
        running.set()
        release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(heatmap_lib, "explain", slow)
    yield running, release
    release.set()


def test_score_completes_while_a_heatmap_is_running(ckpt, slow_heatmaps):
    running, release = slow_heatmaps
    png = png_bytes(96, seed=1)
    answers = {}
    with TestClient(create_app(settings_for(ckpt, max_pending_heatmaps=1))) as c:
        state = c.app.state.service
        worker = threading.Thread(target=lambda: answers.setdefault(
            "heatmap", c.post("/v1/heatmap", files={"image": ("a.png", png, "image/png")})))
        worker.start()
        assert running.wait(30), "the heatmap never started"
        scorer = threading.Thread(target=lambda: answers.setdefault(
            "score", c.post("/v1/score", files={"image": ("b.png", png, "image/png")})))
        scorer.start()
        scorer.join(20)  # behind the heatmap it would wait for `release` (60 s)
        if scorer.is_alive():
            release.set()  # let the client shut down before failing
            pytest.fail("/v1/score waited behind the heatmap")
        r = answers["score"]
        assert r.status_code == 200, r.text
        assert worker.is_alive() and not release.is_set()  # the heatmap was still being computed
        busy = c.post("/v1/heatmap", files={"image": ("c.png", png, "image/png")})
        assert busy.status_code == 503 and "max_pending_heatmaps = 1" in busy.json()["detail"]
        assert busy.headers.get("Retry-After") == "1"
        again = c.post("/v1/score", files={"image": ("d.png", png, "image/png")})
        assert again.status_code == 200  # a full heatmap lane does not refuse scores
        release.set()
        worker.join(30)
        assert answers["heatmap"].status_code == 200, answers["heatmap"].text
        assert answers["heatmap"].json()["score"] == pytest.approx(r.json()["results"][0]["score"], abs=1e-4)
        assert state.heatmaps.admitted == 0 and state.queue.admitted == 0
        assert state.heatmaps._thread.name == "metaiqa-heatmap"


def test_lane_settings_are_validated_and_documented(tmp_path):
    from pathlib import Path

    from metaiqa.service.settings import Settings, SettingsError, load_settings

    shipped = load_settings(Path(__file__).parents[1] / "configs" / "serve.yaml")
    for key in ("backend", "score_threads", "heatmap_threads", "heatmap_nice", "max_pending_heatmaps"):
        assert getattr(shipped, key) == Settings.model_fields[key].default  # the file documents the defaults
    assert (shipped.score_threads, shipped.heatmap_threads) == (2, 1)  # fits 2 cores
    for bad, match in [({"backend": "tensorrt"}, "backend"), ({"heatmap_nice": -5}, "heatmap_nice"),
                       ({"score_threads": 0}, "score_threads"), ({"max_pending_heatmaps": 0}, "max_pending_heatmaps"),
                       ({"heatmap_lane_threads": 2}, "heatmap_lane_threads")]:
        cfg = tmp_path / "serve.yaml"
        cfg.write_text("".join(f"{k}: {v}\n" for k, v in bad.items()))
        with pytest.raises(SettingsError, match=match):
            load_settings(cfg)
