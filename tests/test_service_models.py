"""The service's models: both bundled models plus --models-dir ones, a missing bundled file
skipped with its reason, GET /v1/models describing each; images a whole-image model refuses."""

import io
import json

import numpy as np
import pytest
import torch
from conftest import natural_image
from fastapi.testclient import TestClient
from metaiqa.service.app import create_app
from metaiqa.service.settings import Settings
from PIL import Image
from service_helpers import make_checkpoint, png_bytes, settings_for

from metaiqa.models import create_model, save_checkpoint
from metaiqa.models.pretrained import BUNDLED_DESCRIPTIONS, DEFAULT_MODEL, PRIOR_MODEL

VIEWS = {"policy": "views", "scale": 96, "size": 64, "max_views": 16}


@pytest.fixture
def weights(tmp_path, monkeypatch):
    """An empty stand-in for metaiqa/models/weights/ (the real files are big); fill it per test."""
    from metaiqa.models import pretrained

    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", folder)
    return folder


def bundle(weights, name, seed, **extra):
    torch.manual_seed(seed)
    return save_checkpoint(weights / f"{name}.safetensors", create_model("metaiqa_tiny"), model_name="metaiqa_tiny",
                           preprocess=extra.pop("preprocess", {"policy": "center_crop", "size": 64}), **extra)  # fmt: skip


def bundled_settings(**kw) -> Settings:
    kw.setdefault("torch_threads", 1)
    kw.setdefault("max_wait_ms", 1.0)
    return Settings(**kw)


def test_both_bundled_models_and_the_models_dir_are_served(weights, tmp_path):
    bundle(weights, DEFAULT_MODEL, 0, preprocess=VIEWS, metrics={"biq2021_val_srocc": 0.7},
           extra={"description": "real photos, whole image"})  # fmt: skip
    bundle(weights, PRIOR_MODEL, 1, metrics={"val_srocc": 0.45})
    make_checkpoint(tmp_path / "models" / "shop.safetensors", seed=2, extra={"note": "for the shop"})
    with TestClient(create_app(bundled_settings(models_dir=tmp_path / "models"))) as c:
        body = c.get("/v1/models").json()
        assert body["default"] == DEFAULT_MODEL and body["errors"] == []
        by_name = {m["name"]: m for m in body["models"]}
        assert set(by_name) == {DEFAULT_MODEL, PRIOR_MODEL, "shop"}
        default, prior, shop = by_name[DEFAULT_MODEL], by_name[PRIOR_MODEL], by_name["shop"]
        assert default["default"] and default["bundled"] and default["description"] == "real photos, whole image"
        assert default["preprocess"] == VIEWS and default["training"]["metrics"] == {"biq2021_val_srocc": 0.7}
        assert prior["bundled"] and not prior["default"] and prior["description"] == BUNDLED_DESCRIPTIONS[PRIOR_MODEL]
        assert prior["preprocess"]["policy"] == "center_crop" and prior["training"]["metrics"] == {"val_srocc": 0.45}
        assert not shop["bundled"] and shop["description"] == "for the shop"
        png = {"image": ("a.png", png_bytes(96), "image/png")}
        assert c.post("/v1/score", files=png).json()["model"] == DEFAULT_MODEL
        assert c.post(f"/v1/score?model={PRIOR_MODEL}", files=png).json()["model"] == PRIOR_MODEL


def test_missing_bundled_default_is_skipped_with_its_reason_not_a_crash(weights, caplog):
    bundle(weights, PRIOR_MODEL, 1)
    with TestClient(create_app(bundled_settings())) as c:
        assert c.get("/readyz").status_code == 200
        body = c.get("/v1/models").json()
        assert [m["name"] for m in body["models"]] == [PRIOR_MODEL]
        assert body["default"] == PRIOR_MODEL  # requests without ?model= still get an answer
        (err,) = body["errors"]
        assert DEFAULT_MODEL in err and "not bundled" in err
    assert any(DEFAULT_MODEL in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)


def test_no_bundled_file_at_all_starts_but_is_not_ready(weights):
    with TestClient(create_app(bundled_settings())) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and DEFAULT_MODEL in r.json()["detail"] and PRIOR_MODEL in r.json()["detail"]


def test_bundled_models_can_be_left_out(weights, tmp_path):
    bundle(weights, DEFAULT_MODEL, 0)
    bundle(weights, PRIOR_MODEL, 1)
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")
    with TestClient(create_app(settings_for(ckpt))) as c:  # settings_for: bundled_models=False
        assert [m["name"] for m in c.get("/v1/models").json()["models"]] == ["tiny"]


def test_real_bundled_prior_is_listed_with_its_sidecar():
    from metaiqa.models.pretrained import default_checkpoint_path

    sidecar = json.loads(default_checkpoint_path(PRIOR_MODEL).with_suffix(".json").read_text())
    with TestClient(create_app(bundled_settings())) as c:
        by_name = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        prior = by_name[PRIOR_MODEL]
        assert prior["bundled"] and prior["sha256"] == sidecar["sha256"]
        assert prior["description"] == BUNDLED_DESCRIPTIONS[PRIOR_MODEL]
        assert prior["preprocess"] == sidecar["preprocess"] and prior["training"]["metrics"] == sidecar["metrics"]


# ---------------------------------------------------------------------------- refusals and sizes


@pytest.fixture(scope="module")
def views_client(tmp_path_factory):
    d = tmp_path_factory.mktemp("views")
    torch.manual_seed(0)
    ckpt = save_checkpoint(d / "whole.safetensors", create_model("metaiqa_tiny"), model_name="metaiqa_tiny", preprocess=VIEWS)
    with TestClient(create_app(settings_for(ckpt))) as c:
        yield c


def thin_png() -> bytes:
    """32 x 2000 pixels: a readable PNG, 62.5:1."""
    return png_bytes(image=np.tile(natural_image(64, 5)[:32], (1, 32, 1))[:, :2000])


@pytest.mark.parametrize("route", ["/v1/score", "/v1/gate?threshold=0.1", "/v1/heatmap"])
def test_extreme_aspect_ratio_is_422_naming_the_limit(views_client, route):
    r = views_client.post(route, files={"image": ("strip.png", thin_png(), "image/png")})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail.startswith("strip.png: ") and "62.5:1" in detail and "limit 12:1" in detail
    ok = views_client.post("/v1/score", files={"image": ("a.png", png_bytes(96), "image/png")})
    assert ok.status_code == 200  # the service carries on


def test_large_jpeg_reports_its_full_size(views_client):
    buf = io.BytesIO()
    Image.fromarray(natural_image(400)).resize((1600, 1200)).save(buf, "JPEG", quality=85)
    r = views_client.post("/v1/score", files={"image": ("big.jpg", buf.getvalue(), "image/jpeg")})
    res = r.json()["results"][0]
    assert r.status_code == 200 and (res["width"], res["height"]) == (1600, 1200)
