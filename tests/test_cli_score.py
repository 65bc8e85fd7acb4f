"""`metaiqa score` / `metaiqa gate` through the console entry point (and once as the installed script)."""

import csv
import io
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from metaiqa.cli import main
from metaiqa.inference.scorer import Scorer
from metaiqa.models import create_model, save_checkpoint
from tests.conftest import natural_image


@pytest.fixture
def ckpt(tmp_path):
    """A tiny checkpoint whose last layer is scaled up so different images get clearly different scores."""
    torch.manual_seed(0)
    model = create_model("metaiqa_tiny").eval()
    with torch.no_grad():
        model.head.layers[-1].weight.mul_(300.0)
    return save_checkpoint(
        tmp_path / "models" / "tiny.safetensors",
        model,
        model_name="metaiqa_tiny",
        preprocess={"policy": "center_crop", "size": 64},
    )


@pytest.fixture
def images(tmp_path):
    """photos/a.png, photos/b.png, photos/sub/c.jpg and photos/sub/d.png: four readable images."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    noisy = np.clip(natural_image(96, 3).astype(int) + np.random.default_rng(0).integers(-60, 60, (96, 96, 3)), 0, 255)
    Image.fromarray(natural_image(96, 1)).save(root / "a.png")
    Image.fromarray(np.full((80, 120, 3), 128, np.uint8)).save(root / "b.png")
    Image.fromarray(natural_image(96, 2)).save(root / "sub" / "c.jpg", quality=90)
    Image.fromarray(noisy.astype(np.uint8)).save(root / "sub" / "d.png")
    (root / "notes.txt").write_text("not an image, and not picked up from a folder")
    return root


@pytest.fixture
def bad_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG this is not really a png")
    return path


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def reference_scores(ckpt, paths):
    return dict(zip(map(str, paths), Scorer.from_checkpoint(ckpt).score_paths(paths), strict=True))


def test_score_json_folder_recursive(capsys, ckpt, images):
    code, out, err = run(capsys, "score", images, "--model", ckpt, "--format", "json")
    assert code == 0
    rows = json.loads(out)  # stdout is exactly one JSON document
    paths = sorted(images.rglob("*.png")) + sorted(images.rglob("*.jpg"))
    assert sorted(r["path"] for r in rows) == sorted(map(str, paths))
    ref = reference_scores(ckpt, paths)
    for r in rows:
        assert r["error"] is None and r["model"] == "tiny"
        assert r["score"] == pytest.approx(ref[r["path"]], abs=1e-6)
    b = next(r for r in rows if r["path"].endswith("b.png"))
    assert (b["width"], b["height"]) == (120, 80)
    assert len({round(r["score"], 3) for r in rows}) > 1


def test_unreadable_and_missing_reported_per_file_without_aborting(capsys, ckpt, images, bad_file, tmp_path):
    missing = tmp_path / "nope.png"
    code, out, _ = run(capsys, "score", images / "a.png", bad_file, missing, "--model", ckpt, "--format", "json")
    assert code == 0  # at least one image scored
    rows = {r["path"]: r for r in json.loads(out)}
    assert rows[str(images / "a.png")]["error"] is None
    assert "not a recognised image" in rows[str(bad_file)]["error"]
    assert rows[str(bad_file)]["error_type"] == "NotAnImage" and rows[str(bad_file)]["score"] is None
    assert "no such file" in rows[str(missing)]["error"]


def test_score_exits_2_when_nothing_could_be_scored(capsys, ckpt, bad_file, tmp_path):
    code, out, err = run(capsys, "score", bad_file, "--model", ckpt, "--format", "json")
    assert code == 2 and json.loads(out)[0]["error_type"] == "NotAnImage"
    code, out, err = run(capsys, "score", tmp_path / "missing-dir", "--model", ckpt)
    assert code == 2 and "no image files" in err


def test_score_csv_and_table_and_glob(capsys, ckpt, images):
    code, out, _ = run(capsys, "score", f"{images}/**/*.png", "--model", ckpt, "--format", "csv", "--crops", "2")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["path"] for r in rows] == [str(p) for p in sorted(images.rglob("*.png"))]
    assert all(0 <= float(r["score"]) <= 1 and r["error"] == "" for r in rows)
    code, out, _ = run(capsys, "score", images / "a.png", "--model", ckpt)
    header, line = out.strip().splitlines()
    assert header.split() == ["score", "width", "height", "path", "error"]
    assert line.split()[1:] == ["96", "96", str(images / "a.png")]


def test_score_writes_heatmaps(capsys, ckpt, images, tmp_path):
    out_dir = tmp_path / "heat"
    for method in ("gradient", "gradcam", "views", None):
        flag = [] if method is None else ["--heatmap-method", method]
        code, out, _ = run(
            capsys, "score", images / "b.png", images / "sub", "--model", ckpt, "--format", "json",
            "--heatmap-dir", out_dir, *flag,
        )  # fmt: skip
        assert code == 0
        for r in json.loads(out):
            png = Image.open(r["heatmap"])  # the image, then a legend strip (colour bar, score) below it
            assert png.format == "PNG" and png.width == r["width"] and png.height > r["height"]
            assert r["heatmap"].endswith(f".{method or 'gradient'}.png")  # gradient: centre-crop default
    assert len(list(out_dir.glob("*.png"))) == 9


def test_model_by_name_and_clear_errors(capsys, ckpt, images):
    code, out, _ = run(capsys, "score", images / "a.png", "--model", "tiny", "--models-dir", ckpt.parent)
    assert code == 0
    code, _, err = run(capsys, "score", images / "a.png", "--model", "other", "--models-dir", ckpt.parent)
    assert code == 2 and "'other' not found" in err and "tiny" in err
    from metaiqa.models.pretrained import default_checkpoint_path

    if not default_checkpoint_path().is_file():
        code, _, err = run(capsys, "score", images / "a.png")
        assert code == 2 and "no default model" in err


def gate_threshold(ckpt, images):
    """A threshold between the lowest and the second-lowest score: exactly one image fails."""
    paths = sorted(images.rglob("*.png"))
    scores = sorted(Scorer.from_checkpoint(ckpt).score_paths(paths))
    assert scores[1] - scores[0] > 1e-3, scores  # the fixture's model spreads scores enough
    return (scores[0] + scores[1]) / 2, len(paths)


def test_gate_exit_codes(capsys, ckpt, images):
    t, n = gate_threshold(ckpt, images)
    pngs = f"{images}/**/*.png"
    code, out, err = run(capsys, "gate", pngs, "--model", ckpt, "--min-score", t)
    assert code == 1 and out.count("FAIL") == 1 and out.count("PASS") == n - 1 and "gate FAIL" in err
    code, _, _ = run(capsys, "gate", pngs, "--model", ckpt, "--min-score", t, "--max-failures", 1)
    assert code == 0
    code, _, _ = run(capsys, "gate", pngs, "--model", ckpt, "--min-score", 0)
    assert code == 0
    code, out, _ = run(capsys, "gate", pngs, "--model", ckpt, "--min-score", 1, "--format", "json")
    report = json.loads(out)
    assert code == 1 and report["verdict"] == "fail" and report["failed"] == n and report["passed"] == 0
    assert all(r["passed"] is False for r in report["results"])


def test_gate_unreadable_input_is_exit_2_not_1(capsys, ckpt, images, bad_file):
    code, out, err = run(capsys, "gate", images / "a.png", bad_file, "--model", ckpt, "--min-score", 0, "--format", "json")
    report = json.loads(out)
    assert code == 2 and report["verdict"] == "error" and report["unreadable"] == 1 and report["passed"] == 1
    code, _, _ = run(capsys, "gate", images / "missing.png", "--model", ckpt, "--min-score", 0.5)
    assert code == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["gate", "x.png", "--min-score", "1.5"],
        ["gate", "x.png", "--min-score", "high"],
        ["gate", "x.png"],
        ["gate", "x.png", "--min-score", "0.5", "--max-failures", "-1"],
        ["score", "x.png", "--crops", "0"],
        ["score", "x.png", "--format", "xml"],
        ["score"],
    ],
)
def test_usage_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_help_has_examples(capsys):
    for cmd in ("score", "gate"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        out = capsys.readouterr().out
        assert exc.value.code == 0 and "examples:" in out and f"metaiqa {cmd}" in out


def test_installed_script_json_on_stdout_only(ckpt, images):
    exe = shutil.which("metaiqa")
    if exe is None:
        pytest.skip("the `metaiqa` console script is not installed (pip install -e .)")
    proc = subprocess.run(
        [exe, "score", str(images), "--model", str(ckpt), "--format", "json", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 4 and all(0 <= r["score"] <= 1 for r in rows)
    assert "INFO" in proc.stderr  # logs went to stderr, not into the JSON


# --- the two bundled models, and images a whole-image model refuses ---------------------------


@pytest.fixture
def bundled(tmp_path, monkeypatch):
    """A weights folder holding tiny stand-ins for both bundled models (the real files are big)."""
    from metaiqa.models import pretrained

    weights = tmp_path / "weights"
    for seed, name in enumerate(pretrained.BUNDLED_MODELS):
        torch.manual_seed(seed)
        save_checkpoint(weights / f"{name}.safetensors", create_model("metaiqa_tiny"), model_name="metaiqa_tiny",
                        preprocess={"policy": "center_crop", "size": 64})  # fmt: skip
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights)
    return weights


def test_no_model_means_metaiqa_default_and_the_prior_by_name(capsys, bundled, images, tmp_path):
    code, out, _ = run(capsys, "score", images / "a.png", "--format", "json")
    assert code == 0 and json.loads(out)[0]["model"] == "metaiqa-default"
    code, out, _ = run(capsys, "score", images / "a.png", "--model", "metaiqa-prior", "--format", "json")
    assert code == 0 and json.loads(out)[0]["model"] == "metaiqa-prior"
    code, out, _ = run(capsys, "gate", images / "a.png", "--min-score", 0, "--format", "json")
    assert code == 0 and json.loads(out)["model"] == "metaiqa-default"
    labels = tmp_path / "labels.csv"
    paths = sorted(images.rglob("*.png")) + sorted(images.rglob("*.jpg"))
    labels.write_text("path,mos\n" + "".join(f"{p},{i / 4:.2f}\n" for i, p in enumerate(paths)))
    for extra, name in (([], "metaiqa-default"), (["--model", "metaiqa-prior"], "metaiqa-prior")):
        code, out, _ = run(capsys, "validate", "--data", labels, "--no-report", "--bootstrap", 0, "--format", "json",
                           "--no-progress", *extra)  # fmt: skip
        assert code == 0 and json.loads(out)["model"]["name"] == name


def test_real_bundled_prior_scores_by_name(capsys, images):
    code, out, _ = run(capsys, "score", images / "a.png", "--model", "metaiqa-prior", "--format", "json")
    (row,) = json.loads(out)
    assert code == 0 and row["model"] == "metaiqa-prior" and 0 <= row["score"] <= 1


def test_help_says_what_each_bundled_model_is(capsys):
    for cmd in ("score", "gate", "validate"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        out = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also at hyphens
        assert "metaiqa-default(bundled,usedwhen" in out and "realphotos" in out, cmd
        assert "metaiqa-prior(bundled" in out and "synthetic-only" in out, cmd


@pytest.fixture
def views_ckpt(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "views.safetensors", create_model("metaiqa_tiny"), model_name="metaiqa_tiny",
                           preprocess={"policy": "views", "scale": 96, "size": 64})  # fmt: skip


@pytest.fixture
def thin_png(tmp_path):
    """32 x 2000 pixels: readable, but 62.5:1 is beyond the whole-image policy's 12:1."""
    path = tmp_path / "strip.png"
    Image.fromarray(np.tile(natural_image(64, 5)[:32], (1, 32, 1))[:, :2000]).save(path)
    return path


def test_extreme_aspect_ratio_is_reported_per_file_and_the_batch_continues(capsys, views_ckpt, images, thin_png):
    code, out, err = run(capsys, "score", thin_png, images / "a.png", "--model", views_ckpt, "--format", "json")
    rows = {r["path"]: r for r in json.loads(out)}
    assert code == 0 and "Traceback" not in err
    bad = rows[str(thin_png)]
    assert bad["score"] is None and bad["error_type"] == "ExtremeAspectRatio"
    assert "62.5:1" in bad["error"] and "limit 12:1" in bad["error"]
    assert 0 <= rows[str(images / "a.png")]["score"] <= 1
    code, out, err = run(capsys, "score", thin_png, "--model", views_ckpt)
    assert code == 2 and "limit 12:1" in out and "Traceback" not in err
    code, out, _ = run(capsys, "gate", thin_png, images / "a.png", "--model", views_ckpt, "--min-score", 0, "--format", "json")
    report = json.loads(out)
    assert code == 2 and report["unreadable"] == 1 and report["passed"] == 1
