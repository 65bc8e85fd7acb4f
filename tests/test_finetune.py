"""Few-shot fine-tuning, validation and the `fine-tune` / `validate` commands, on tiny generated data."""

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import natural_image
from PIL import Image, ImageFilter

from metaiqa.cli import main
from metaiqa.data.formats import parse_data_spec
from metaiqa.data.samples import DatasetError, Sample
from metaiqa.data.tasks import NotEnoughContents, few_shot_split
from metaiqa.errors import InvalidInput
from metaiqa.evaluation import metrics
from metaiqa.evaluation.validate import UnreadableImage, validate_checkpoint, validate_scorer
from metaiqa.meta.finetune import FineTuneConfig, fine_tune, fine_tune_checkpoint, predict
from metaiqa.meta.images import ImageCache
from metaiqa.models import create_model
from metaiqa.models.checkpoint import CorruptCheckpoint, load_checkpoint, read_sidecar, save_checkpoint

PREPROCESS = {"policy": "center_crop", "size": 48}
FAST = dict(epochs=6, lr=0.01, head_lr=0.01, batch_size=8, patience=3, seed=0)


def make_dataset(root: Path, n_refs: int = 6, levels: int = 4, size: int = 64) -> Path:
    """Blur and noise at increasing levels of tiny photo-like images; label falls with level."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for r in range(n_refs):
        base = natural_image(size, seed=r)
        rng = np.random.default_rng(100 + r)
        for lv in range(1, levels + 1):
            blur = Image.fromarray(base).filter(ImageFilter.GaussianBlur(0.7 * lv))
            noise = Image.fromarray(np.clip(base + rng.normal(0, 10 * lv, base.shape), 0, 255).astype(np.uint8))
            for g, im in (("gaussian_blur", blur), ("white_noise", noise)):
                name = f"img/R{r:02d}_{g}_{lv}.png"
                im.save(root / name)
                rows.append([name, round(1 - 0.2 * lv, 3), g, f"R{r:02d}", lv])
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "mos", "group", "ref_id", "level"])
        w.writerows(rows)
    return root / "labels.csv"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    spec = make_dataset(root)
    torch.manual_seed(0)
    prior = save_checkpoint(root / "prior.safetensors", create_model("metaiqa_tiny"), model_name="metaiqa_tiny",
                            preprocess=PREPROCESS)
    return {"root": root, "spec": str(spec), "prior": prior, "samples": parse_data_spec(str(spec))}


def _split(samples, shots=30):
    train, val, _ = few_shot_split(samples, shots, seed=0, val_fraction=0.3)
    return train, val


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_fine_tune_learns_keeps_best_and_leaves_prior_untouched(data):
    model = load_checkpoint(data["prior"]).model
    before = _state(model)
    train, val = _split(data["samples"])
    net, hist = fine_tune(model, train, val, FineTuneConfig(**FAST), preprocess=PREPROCESS, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy was trained
    assert hist["criterion"] == "val_srocc"
    rows = hist["epochs"]
    assert rows[0]["epoch"] == 0 and rows[0]["train_loss"] is None  # epoch 0 = the prior, zero-shot
    assert all(math.isfinite(r["train_loss"]) for r in rows[1:])
    best = max(rows, key=lambda r: r["val_srocc"])
    assert hist["best_epoch"] == best["epoch"]
    # the returned weights are the best epoch's: re-scoring val reproduces its SROCC
    imgs = [ImageCache().get(s.path) for s in val]
    mos = [s.mos for s in val]
    assert metrics.srocc(predict(net, imgs, PREPROCESS), mos) == pytest.approx(best["val_srocc"], abs=1e-9)
    assert best["val_srocc"] > rows[0]["val_srocc"] + 0.2  # it learnt the distortions from 21 images


def test_early_stopping_triggers_when_val_stops_improving(data):
    model = load_checkpoint(data["prior"]).model
    train, val = _split(data["samples"])
    cfg = FineTuneConfig(**{**FAST, "lr": 0.0, "head_lr": 0.0, "epochs": 20, "patience": 2})
    net, hist = fine_tune(model, train, val, cfg, preprocess=PREPROCESS, progress=False)
    assert hist["stopped_early"] is True
    assert len(hist["epochs"]) == 1 + 2  # the prior + `patience` epochs without gain
    assert hist["best_epoch"] == 0


def test_fine_tune_is_deterministic_by_seed(data):
    model = load_checkpoint(data["prior"]).model
    train, val = _split(data["samples"])
    cfg = FineTuneConfig(**{**FAST, "epochs": 2})
    runs = [fine_tune(model, train, val, cfg, preprocess=PREPROCESS, progress=False) for _ in range(2)]
    strip = [[{k: v for k, v in r.items() if k != "seconds"} for r in h["epochs"]] for _, h in runs]
    assert strip[0] == strip[1]
    a, b = (n.state_dict() for n, _ in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_sidecar_records_config_data_and_metrics(data, tmp_path):
    cfg = FineTuneConfig(**{**FAST, "shots": 30, "val_fraction": 0.3})
    res = fine_tune_checkpoint(data["prior"], data["samples"], cfg, tmp_path / "ft.safetensors", progress=False)
    meta = read_sidecar(res.path)
    loaded = load_checkpoint(res.path)  # hash-verified, loadable
    assert meta["model"] == "metaiqa_tiny" and loaded.preprocess == PREPROCESS
    assert meta["config"]["fine_tune"]["shots"] == 30
    assert meta["data"]["train"]["n"] + meta["data"]["val"]["n"] == 30
    assert not set(meta["data"]["train"]["contents"]) & set(meta["data"]["val"]["contents"])
    assert math.isfinite(meta["metrics"]["val_srocc"])
    assert meta["prior"]["sha256"] == read_sidecar(data["prior"])["sha256"]


def test_validate_checkpoint_writes_finite_report(data, tmp_path):
    rep = validate_checkpoint(data["prior"], data["samples"], splits=3, out_dir=tmp_path / "rep", bootstrap=50,
                              progress=False)
    assert rep["n"] == len(data["samples"])
    assert sorted(rep["per_group"]) == ["gaussian_blur", "white_noise"]
    for key in ("srocc", "krcc", "plcc", "rmse"):
        assert math.isfinite(rep["overall"][key])
    for f in ("json", "scatter", "html", "predictions"):
        assert Path(rep["files"][f]).is_file()
    on_disk = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert on_disk["model"]["path"] == str(data["prior"])


def test_validation_uses_the_serving_scorer(data):
    from metaiqa.inference.scorer import Scorer

    scorer = Scorer.from_checkpoint(data["prior"])
    subset = data["samples"][:12]
    expected = scorer.score_paths([s.path for s in subset])
    rep = validate_scorer(scorer, subset, bootstrap=0, progress=False)
    mos = [s.mos for s in subset]
    assert rep["overall"]["srocc"] == pytest.approx(metrics.srocc(expected, mos))


def test_unreadable_image_is_named(data, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    samples = list(data["samples"][:5]) + [Sample(bad, 0.5, "gaussian_blur", "R99", 1)]
    with pytest.raises(UnreadableImage, match="broken.png"):
        validate_checkpoint(data["prior"], samples, bootstrap=0, progress=False)
    with pytest.raises(DatasetError, match="broken.png"):
        fine_tune(create_model("metaiqa_tiny"), samples, [], FineTuneConfig(epochs=1), progress=False)


def test_bad_inputs_give_clear_errors(data, tmp_path):
    model = create_model("metaiqa_tiny")
    with pytest.raises(DatasetError, match="0 samples"):
        fine_tune(model, [], [], FineTuneConfig(), progress=False)
    with pytest.raises(DatasetError, match="empty"):
        validate_checkpoint(data["prior"], [], progress=False)
    with pytest.raises(InvalidInput, match="splits must be an integer >= 1, got 0"):
        validate_checkpoint(data["prior"], data["samples"], splits=0, progress=False)
    nan = [dataclasses.replace(s, mos=float("nan")) if i == 3 else s for i, s in enumerate(data["samples"])]
    with pytest.raises(DatasetError, match=str(nan[3].path.name)):
        fine_tune_checkpoint(data["prior"], nan, FineTuneConfig(shots=10), tmp_path / "x", progress=False)
    with pytest.raises(NotEnoughContents, match="shots=500"):
        fine_tune_checkpoint(data["prior"], data["samples"], FineTuneConfig(shots=500), tmp_path / "x",
                             progress=False)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(Path(data["prior"]).read_bytes()[:-10] + b"0123456789")
    corrupt.with_suffix(".json").write_text(Path(data["prior"]).with_suffix(".json").read_text())
    with pytest.raises(CorruptCheckpoint, match="corrupt.safetensors"):
        fine_tune_checkpoint(corrupt, data["samples"], FineTuneConfig(shots=10), tmp_path / "x", progress=False)
    with pytest.raises(CorruptCheckpoint):
        validate_checkpoint(corrupt, data["samples"], progress=False)


def test_cli_fine_tune_then_validate(data, tmp_path, capsys):
    out = tmp_path / "tuned.safetensors"
    config = Path(__file__).resolve().parents[1] / "configs" / "fine_tune" / "fewshot.yaml"
    rc = main(["-q", "fine-tune", "--prior", str(data["prior"]), "--data", data["spec"], "--shots", "30",
               "--epochs", "3", "--lr", "0.01", "--seed", "1", "--set", "head_lr=0.01", "--set", "batch_size=8",
               "--config", str(config), "--out", str(out), "--no-progress"])
    assert rc == 0
    assert "saved" in capsys.readouterr().out
    meta = read_sidecar(out)
    assert meta["config"]["fine_tune"]["epochs"] == 3 and meta["config"]["fine_tune"]["seed"] == 1

    rc = main(["-q", "validate", "--model", str(out), "--data", data["spec"], "--splits", "3", "--bootstrap", "50",
               "--out", str(tmp_path / "rep"), "--format", "json", "--no-progress"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert math.isfinite(rep["overall"]["srocc"]) and math.isfinite(rep["splits"]["median"]["srocc"])
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "scatter.png").is_file()

    rc = main(["-q", "validate", "--model", str(out), "--data", data["spec"], "--no-report", "--bootstrap", "0",
               "--no-progress"])
    table = capsys.readouterr().out
    assert rc == 0 and "overall" in table and "gaussian_blur" in table and "white_noise" in table


def test_cli_errors_exit_2_with_message(data, tmp_path, capsys):
    rc = main(["fine-tune", "--prior", str(data["prior"]), "--data", data["spec"], "--set", "learning_rate=1",
               "--out", str(tmp_path / "x"), "--no-progress"])
    assert rc == 2 and "learning_rate" in capsys.readouterr().err
    rc = main(["validate", "--model", str(tmp_path / "missing.safetensors"), "--data", data["spec"], "--no-progress"])
    assert rc == 2 and "missing" in capsys.readouterr().err


def test_help_states_the_config_defaults():
    import argparse

    from metaiqa.cli import adapt

    parser = argparse.ArgumentParser()
    adapt.register(parser.add_subparsers())
    text = " ".join(parser._subparsers._group_actions[0].choices["fine-tune"].format_help().split())
    cfg = FineTuneConfig()
    for flag, key in (("--shots", "shots"), ("--epochs", "epochs"), ("--lr", "lr"), ("--head-lr", "head_lr"),
                      ("--batch-size", "batch_size"), ("--patience", "patience"), ("--seed", "seed")):
        assert f"(default {getattr(cfg, key)})" in text.split(flag, 2)[-1].split("--", 1)[0], flag


def test_freeze_backbone_trains_only_the_head(data):
    model = load_checkpoint(data["prior"]).model
    train, val = _split(data["samples"])
    cfg = FineTuneConfig(**{**FAST, "epochs": 1, "freeze_backbone": True, "patience": 5})
    net, hist = fine_tune(model, train, [], cfg, preprocess=PREPROCESS, progress=False)
    assert hist["criterion"] == "none" and hist["best_epoch"] == 1  # no val: the last epoch is kept
    old, new = model.state_dict(), net.state_dict()
    params = dict(model.named_parameters())
    changed = {k for k in params if not torch.equal(old[k], new[k])}
    assert changed and all(k.startswith("head.") for k in changed)


def test_resize_policy_trains_on_the_scale_the_scorer_sees(data):
    model = load_checkpoint(data["prior"]).model
    train, val = _split(data["samples"])
    pre = {"policy": "resize", "size": 40}
    cfg = FineTuneConfig(**{**FAST, "epochs": 1, "crop_size": 32})
    net, hist = fine_tune(model, train, val, cfg, preprocess=pre, progress=False)
    assert hist["crop_size"] == 32 and math.isfinite(hist["epochs"][1]["train_loss"])
