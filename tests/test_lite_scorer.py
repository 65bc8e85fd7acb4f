"""Issue 11: the light ONNX path (no torch), the "auto" backend and reading ahead while scoring."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import natural_image
from PIL import Image
from service_helpers import make_checkpoint

from metaiqa.cli import main
from metaiqa.errors import InvalidInput
from metaiqa.inference import Scorer
from metaiqa.inference import backends as backends_mod
from metaiqa.inference.backends import BackendUnavailable, resolve_backend_name
from metaiqa.inference.lite import LiteScorer
from metaiqa.inference.onnx_export import cached_export_path, export_onnx
from metaiqa.models import create_model, save_checkpoint
from metaiqa.models.checkpoint import ChecksumMismatch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

VIEWS = {"policy": "views", "scale": 160, "size": 64, "max_views": 16}


@pytest.fixture(scope="module")
def views_ckpt(tmp_path_factory):
    import torch

    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("v") / "wide.safetensors"
    ck = save_checkpoint(path, create_model("metaiqa_tiny"), model_name="metaiqa_tiny", preprocess=VIEWS)
    export_onnx(ck, ck.with_suffix(".onnx"))
    return ck


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i, (h, w) in enumerate([(96, 96), (150, 200), (300, 400), (120, 90), (400, 300)]):
        img = np.asarray(Image.fromarray(natural_image(max(h, w), seed=i)).resize((w, h)))
        paths.append(folder / f"p{i}.jpg")
        Image.fromarray(img).save(paths[-1], quality=92)
    return paths


def test_light_scores_equal_the_full_onnx_path_and_torch(views_ckpt, photos):
    lite = LiteScorer.open(views_ckpt)
    assert lite is not None and lite.preprocess == VIEWS
    full = Scorer.from_checkpoint(views_ckpt, backend="onnx")
    torch_scores = Scorer.from_checkpoint(views_ckpt).score_paths(photos)
    lite_scores = [r.score for r in lite.score_paths_safe(photos)]
    assert lite_scores == pytest.approx(full.score_paths(photos), abs=1e-6)
    assert lite_scores == pytest.approx(torch_scores, abs=0.01)
    assert len(set(np.round(lite_scores, 6))) > 1


def test_light_path_declines_what_only_the_full_path_can_do(views_ckpt, tmp_path):
    center = make_checkpoint(tmp_path / "center.safetensors")
    export_onnx(center, center.with_suffix(".onnx"))
    assert LiteScorer.open(center) is None  # center_crop policy: torch resizing
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes(views_ckpt.read_bytes())
    (tmp_path / "lone.json").write_bytes(views_ckpt.with_suffix(".json").read_bytes())
    assert LiteScorer.open(lone) is None  # no export beside it, none in the cache yet
    Scorer.from_checkpoint(lone, backend="onnx")  # exports once into the cache ...
    import metaiqa.models.sidecar as sidecar

    sha = sidecar.read_sidecar(lone)["sha256"]
    assert cached_export_path("lone", sha).is_file()
    assert LiteScorer.open(lone) is not None  # ... which the light path then finds
    data = bytearray(lone.read_bytes())
    data[-5] ^= 0xFF  # tampered weights: the light path steps aside, the full path names the fault
    lone.write_bytes(bytes(data))
    assert LiteScorer.open(lone) is None
    with pytest.raises(ChecksumMismatch):
        Scorer.from_checkpoint(lone, backend="onnx")


def test_cli_score_skips_torch_once_the_export_exists(views_ckpt, photos):
    code = (
        "import sys, json; from metaiqa.cli import main; "
        f"rc = main(['-q', 'score', {str(photos[2])!r}, '--model', {str(views_ckpt)!r}, '--format', 'json']); "
        "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    rows, status = out.stdout.rsplit("\n", 2)[0], json.loads(out.stdout.strip().splitlines()[-1])
    assert status == {"rc": 0, "torch": False}
    expected = Scorer.from_checkpoint(views_ckpt).score_paths([photos[2]])[0]
    assert json.loads(rows)[0]["score"] == pytest.approx(expected, abs=0.01)


def test_auto_backend_picks_onnx_and_falls_back_to_torch_saying_why(views_ckpt, monkeypatch, caplog):
    assert resolve_backend_name("auto") == "onnx"
    assert resolve_backend_name("torch") == "torch"
    monkeypatch.setattr(backends_mod, "onnxruntime_available", lambda: False)
    assert resolve_backend_name("auto") == "torch"
    monkeypatch.undo()

    import metaiqa.inference.onnx_export as onnx_export

    def fail(*a, **k):
        raise BackendUnavailable("cannot write the ONNX export to /read-only")

    monkeypatch.setattr(onnx_export, "onnx_backend_for", fail)
    with caplog.at_level("WARNING"):
        scorer = Scorer.from_checkpoint(views_ckpt, backend="auto")
    assert scorer.backend.name == "torch"
    assert "/read-only" in caplog.text
    with pytest.raises(BackendUnavailable, match="read-only"):
        Scorer.from_checkpoint(views_ckpt, backend="onnx")


@pytest.mark.parametrize("light", [False, True])
def test_reading_ahead_keeps_order_and_per_file_errors(views_ckpt, photos, tmp_path, light):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    paths = [photos[0], bad, *photos[1:], tmp_path / "missing.jpg", photos[0]]
    scorer = LiteScorer.open(views_ckpt) if light else Scorer.from_checkpoint(views_ckpt)
    ahead = [r for chunk in scorer.iter_paths_safe(paths, batch_size=2) for r in chunk]
    plain = [r for chunk in scorer.iter_paths_safe(paths, batch_size=2, prefetch=False) for r in chunk]
    assert len(ahead) == len(paths)
    assert [type(r).__name__ for r in ahead] == [type(r).__name__ for r in plain]
    assert isinstance(ahead[1], Exception) and isinstance(ahead[-2], OSError)
    scores = [r.score for r in ahead if not isinstance(r, Exception)]
    assert scores == [r.score for r in plain if not isinstance(r, Exception)]
    assert scores[0] == scores[-1]  # the same photo, first and last


@pytest.fixture(scope="module")
def int8_ckpt(views_ckpt, photos, tmp_path_factory):
    """A copy of the views checkpoint with its float32 export and an int8 export beside it."""
    from metaiqa.inference.onnx_int8 import export_onnx_int8

    folder = tmp_path_factory.mktemp("q")
    ck = folder / "quant.safetensors"
    ck.write_bytes(views_ckpt.read_bytes())
    ck.with_suffix(".json").write_bytes(views_ckpt.with_suffix(".json").read_bytes())
    export_onnx(ck, ck.with_suffix(".onnx"))
    calib = folder / "calibration"
    calib.mkdir()
    for i in range(6):
        Image.fromarray(natural_image(160, seed=20 + i)).save(calib / f"c{i}.png")
    export_onnx_int8(ck, folder / "quant.int8.onnx", calib)
    return ck


def test_int8_export_is_preferred_by_auto_ignored_by_onnx_and_close_to_float(int8_ckpt, photos):
    from metaiqa.inference.onnx_load import sidecar_path

    side = json.loads(sidecar_path(int8_ckpt.with_name("quant.int8.onnx")).read_text())
    assert side["dtype"] == "int8" and side["quantization"]["calibration"]["photos"] == 6
    auto, onnx, req = (Scorer.from_checkpoint(int8_ckpt, backend=b) for b in ("auto", "onnx", "int8"))
    assert (auto.backend.name, onnx.backend.name, req.backend.name) == ("onnx-int8", "onnx", "onnx-int8")
    assert LiteScorer.open(int8_ckpt).backend.name == "onnx-int8"
    assert LiteScorer.open(int8_ckpt, int8="no").backend.name == "onnx"
    q, f = auto.score_paths(photos), onnx.score_paths(photos)
    assert q != f  # really another model file
    assert np.abs(np.array(q) - np.array(f)).max() < 0.05  # a tiny random network: a loose bound


def test_int8_backend_without_an_export_says_how_to_make_one(views_ckpt, capsys, photos):
    with pytest.raises(BackendUnavailable, match="metaiqa export --onnx --int8 --calibration"):
        Scorer.from_checkpoint(views_ckpt, backend="int8")
    assert LiteScorer.open(views_ckpt, int8="require") is None
    assert main(["-q", "score", str(photos[0]), "--model", str(views_ckpt), "--backend", "int8"]) == 2
    assert "--int8 --calibration" in capsys.readouterr().err


def test_tampered_int8_export_is_refused_not_skipped(int8_ckpt, tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    for f in int8_ckpt.parent.iterdir():
        if f.is_file():
            (folder / f.name).write_bytes(f.read_bytes())
    q = folder / "quant.int8.onnx"
    data = bytearray(q.read_bytes())
    data[len(data) // 2] ^= 0x01
    q.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch):
        Scorer.from_checkpoint(folder / "quant.safetensors", backend="auto")


def test_export_int8_needs_calibration_photos(views_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", "--onnx", "--int8", str(views_ckpt), str(tmp_path / "x.int8.onnx")])
    assert exc.value.code == 2 and "--calibration" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", "--onnx", "--int8", "--calibration", str(empty), str(views_ckpt),
                 str(tmp_path / "x.int8.onnx")]) == 2
    assert "at least 4" in capsys.readouterr().err


def test_forward_passes_are_capped_and_scores_do_not_depend_on_the_cap(views_ckpt, photos):
    scorer = LiteScorer.open(views_ckpt)
    big = scorer.score_paths(photos * 4)
    sizes = []
    original = scorer._forward
    scorer._forward = lambda views: sizes.append(len(views)) or original(views)
    scorer.max_views_per_pass = 5
    capped = scorer.score_paths(photos * 4)
    assert max(sizes) <= 5 and len(sizes) > 1
    assert capped == pytest.approx(big, abs=1e-6)


def test_int8_calibration_skips_unreadable_photos_and_needs_four_good_ones(views_ckpt, tmp_path, caplog):
    from metaiqa.inference.onnx_int8 import export_onnx_int8

    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    for i in range(3):
        Image.fromarray(natural_image(160, seed=40 + i)).save(calib / f"c{i}.png")
    with pytest.raises(InvalidInput, match="only 3 of 4 photos could be read"):
        export_onnx_int8(views_ckpt, tmp_path / "a.int8.onnx", calib)
    Image.fromarray(natural_image(160, seed=50)).save(calib / "c3.png")
    with caplog.at_level("WARNING"):
        out = export_onnx_int8(views_ckpt, tmp_path / "a.int8.onnx", calib)
    assert out.is_file() and "broken.jpg" in caplog.text
