"""Issue 11: the ONNX Runtime backend (optional extra): export, hash rules, parity, selection."""

import json
import sys

import numpy as np
import pytest
from conftest import natural_image
from fastapi.testclient import TestClient
from metaiqa.service.app import create_app
from service_helpers import make_checkpoint, png_bytes, settings_for

from metaiqa.cli import main
from metaiqa.inference import Scorer
from metaiqa.inference.backends import BackendUnavailable
from metaiqa.inference.onnx_export import StaleExport, export_onnx, load_onnx, sidecar_path
from metaiqa.models import create_model, save_checkpoint
from metaiqa.models.checkpoint import ChecksumMismatch, MissingChecksum, SidecarMismatch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

VIEWS = {"policy": "views", "scale": 160, "size": 64, "max_views": 16}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors")


@pytest.fixture(scope="module")
def views_ckpt(tmp_path_factory):
    import torch

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("v") / "wide.safetensors"
    return save_checkpoint(path, create_model("metaiqa_tiny"), model_name="metaiqa_tiny", preprocess=VIEWS)


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    return export_onnx(ckpt, tmp_path_factory.mktemp("o") / "tiny.onnx")


def images():
    return [natural_image(96, seed=s) for s in range(3)] + [natural_image(200, seed=9)[:150]]


@pytest.mark.parametrize("which", ["center_crop", "views"])
def test_onnx_scores_match_torch(which, ckpt, views_ckpt, exported, tmp_path):
    src = ckpt if which == "center_crop" else views_ckpt
    out = exported if which == "center_crop" else export_onnx(views_ckpt, tmp_path / "wide.onnx")
    torch_scores = Scorer.from_checkpoint(src).score_arrays(images())
    onnx = Scorer.from_checkpoint(src, backend="onnx", onnx_path=out)
    assert onnx.backend.name == "onnx"
    onnx_scores = onnx.score_arrays(images())
    assert np.abs(np.array(onnx_scores) - np.array(torch_scores)).max() < 0.01
    assert len(set(np.round(onnx_scores, 6))) > 1  # not a constant


def test_sidecar_records_source_and_hash(ckpt, exported):
    side = json.loads(sidecar_path(exported).read_text())
    ck = json.loads(ckpt.with_suffix(".json").read_text())
    assert side["format"] == "metaiqa-onnx/1" and len(side["sha256"]) == 64
    assert side["source"]["sha256"] == ck["sha256"] and side["preprocess"] == ck["preprocess"]


def _copy(exported, tmp_path):
    dst = tmp_path / "copy.onnx"
    dst.write_bytes(exported.read_bytes())
    sidecar_path(dst).write_text(sidecar_path(exported).read_text())
    return dst


def test_tampered_onnx_file_is_refused(exported, tmp_path):
    dst = _copy(exported, tmp_path)
    data = bytearray(dst.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dst.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match="sha256 is .* its sidecar expects"):
        load_onnx(dst)


@pytest.mark.parametrize("field, value", [("preprocess", {"policy": "center_crop", "size": 32}),
                                          ("source", {"sha256": "0" * 64})])
def test_edited_sidecar_is_refused(exported, tmp_path, field, value):
    dst = _copy(exported, tmp_path)
    side = json.loads(sidecar_path(dst).read_text())
    side[field] = value
    sidecar_path(dst).write_text(json.dumps(side))
    with pytest.raises(SidecarMismatch, match="the sidecar was edited"):
        load_onnx(dst)


def test_sidecar_without_hash_is_refused(exported, tmp_path):
    dst = _copy(exported, tmp_path)
    side = json.loads(sidecar_path(dst).read_text())
    side["sha256"] = None
    sidecar_path(dst).write_text(json.dumps(side))
    with pytest.raises(MissingChecksum, match="sha256 must be 64"):
        load_onnx(dst)


def test_export_of_another_checkpoint_is_refused(views_ckpt, exported):
    with pytest.raises(StaleExport, match="re-run metaiqa export --onnx"):
        Scorer.from_checkpoint(views_ckpt, backend="onnx", onnx_path=exported)


def test_backend_finds_the_export_beside_the_checkpoint_or_makes_one_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METAIQA_CACHE_DIR", str(tmp_path / "cache"))
    ck = make_checkpoint(tmp_path / "m" / "shop.safetensors", seed=3)
    first = Scorer.from_checkpoint(ck, backend="onnx")  # exported once into the cache
    cached = list((tmp_path / "cache" / "onnx").glob("shop-*.onnx"))
    assert len(cached) == 1 and sidecar_path(cached[0]).is_file()
    assert first.backend.source == str(cached[0])
    beside = export_onnx(ck, ck.with_suffix(".onnx"))
    assert Scorer.from_checkpoint(ck, backend="onnx").backend.source == str(beside)


def test_missing_onnxruntime_is_a_clear_error(ckpt, exported, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendUnavailable, match=r"pip install onnxruntime"):
        Scorer.from_checkpoint(ckpt, backend="onnx", onnx_path=exported)
    img = exported.parent / "a.png"
    img.write_bytes(png_bytes(96))
    assert main(["score", str(img), "--model", str(ckpt), "--backend", "onnx"]) == 2
    assert "needs onnxruntime" in capsys.readouterr().err


def test_cli_export_and_score_with_onnx(ckpt, tmp_path, capsys):
    out = tmp_path / "models" / "tiny.onnx"
    assert main(["export", "--onnx", str(ckpt), str(out)]) == 0
    assert out.is_file() and sidecar_path(out).is_file()
    img = tmp_path / "a.png"
    img.write_bytes(png_bytes(96, seed=4))
    capsys.readouterr()
    assert main(["-q", "score", str(img), "--model", str(ckpt), "--format", "json"]) == 0
    ref = json.loads(capsys.readouterr().out)[0]["score"]
    (tmp_path / "models" / "tiny.safetensors").write_bytes(ckpt.read_bytes())
    (tmp_path / "models" / "tiny.json").write_bytes(ckpt.with_suffix(".json").read_bytes())
    assert main(["-q", "score", str(img), "--model", str(tmp_path / "models" / "tiny.safetensors"),
                 "--backend", "onnx", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["score"] == pytest.approx(ref, abs=0.01)


def test_service_scores_with_the_onnx_backend(ckpt, exported, tmp_path, monkeypatch):
    monkeypatch.setenv("METAIQA_CACHE_DIR", str(tmp_path / "cache"))
    png = png_bytes(96, seed=2)
    ref = Scorer.from_checkpoint(ckpt).score_bytes([png])[0]
    with TestClient(create_app(settings_for(ckpt, backend="onnx", score_threads=1))) as c:
        served = c.app.state.service.models.get(None)
        assert served.scorer.backend.name == "onnx"
        assert c.get("/v1/models").json()["models"][0]["backend"] == "onnx"
        r = c.post("/v1/score", files={"image": ("a.png", png, "image/png")})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["score"] == pytest.approx(ref, abs=0.01)


def test_serve_backend_flag_reaches_the_workers(monkeypatch, tmp_path):
    import uvicorn
    from metaiqa.service.settings import load_settings

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: seen.setdefault("settings", load_settings()))
    monkeypatch.setenv("METAIQA_BACKEND", "torch")  # recorded, so the "onnx" cmd_serve exports is undone
    monkeypatch.delenv("METAIQA_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./configs/serve.yaml
    assert main(["serve", "--backend", "onnx"]) == 0
    assert seen["settings"].backend == "onnx"


def test_heatmap_shows_the_score_the_onnx_backend_answers(ckpt, exported, tmp_path, monkeypatch):
    monkeypatch.setenv("METAIQA_CACHE_DIR", str(tmp_path / "cache"))
    png = png_bytes(96, seed=5)
    with TestClient(create_app(settings_for(ckpt, backend="onnx", score_threads=1))) as c:
        scored = c.post("/v1/score", files={"image": ("a.png", png, "image/png")}).json()["results"][0]["score"]
        heat = c.post("/v1/heatmap", files={"image": ("a.png", png, "image/png")})
    assert heat.status_code == 200, heat.text
    assert heat.json()["score"] == pytest.approx(scored, abs=1e-5)
