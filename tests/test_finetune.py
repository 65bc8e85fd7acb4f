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
from metaiqa.config import ConfigError, load_config
from metaiqa.data.formats import parse_data_spec
from metaiqa.data.samples import DatasetError, Sample
from metaiqa.data.tasks import NotEnoughContents, content_key, few_shot_split
from metaiqa.errors import InvalidInput
from metaiqa.evaluation import metrics
from metaiqa.evaluation.validate import UnreadableImage, validate_checkpoint, validate_scorer
from metaiqa.meta.finetune import FineTuneConfig, fine_tune, fine_tune_checkpoint, rank_across_images
from metaiqa.meta.images import ImageCache
from metaiqa.meta.selection import MIN_CONTENTS, MIN_IMAGES, choose_epochs, fold_curve, plan_folds
from metaiqa.models import create_model
from metaiqa.models.checkpoint import CorruptCheckpoint, load_checkpoint, read_sidecar, save_checkpoint

PREPROCESS = {"policy": "center_crop", "size": 48}
FAST = dict(epochs=4, lr=0.01, head_lr=0.01, batch_size=8, seed=0)


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


def _shots(samples, shots=30):
    """`shots` labelled images in whole contents (4 contents of 8 images for 30), the rest untouched."""
    return few_shot_split(samples, shots, seed=0, val_fraction=0.0)[0]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


class RecordingCache(ImageCache):
    """An ImageCache that remembers every path it was asked for."""

    def __init__(self):
        super().__init__()
        self.paths = set()

    def get(self, path):
        self.paths.add(str(path))
        return super().get(path)


def _own_content(samples, n):
    """Real-photo style: each image its own content (ref_id = file name, no group), as the biq2021 adapter."""
    return [dataclasses.replace(s, ref_id=s.path.name, group=None, level=None) for s in samples[:n]]


def test_kfold_rule_picks_epochs_from_folds_and_reads_only_the_shots(data):
    model = load_checkpoint(data["prior"]).model
    before = _state(model)
    shots = _shots(data["samples"])
    cache = RecordingCache()
    net, hist = fine_tune(model, shots, FineTuneConfig(**FAST), preprocess=PREPROCESS, progress=False, cache=cache)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy was trained
    # nothing outside the shots was read: no test data, no other content
    assert cache.paths <= {str(s.path) for s in shots}
    assert hist["rule"] == "kfold" and len(hist["folds"]) == 2  # 4 contents -> 2 folds of 2 contents
    contents = [set(f["contents"]) for f in hist["folds"]]
    assert all(len(c) >= 2 for c in contents) and not contents[0] & contents[1]
    assert contents[0] | contents[1] == {content_key(s) for s in shots}
    assert sum(f["n_val"] for f in hist["folds"]) == len(shots)
    for f in hist["folds"]:
        assert f["n_train"] + f["n_val"] == len(shots)
        assert [r["epoch"] for r in f["epochs"]] == list(range(FAST["epochs"] + 1))
    # the curve is the mean over folds per epoch count, and the chosen budget is its argmax
    for e, row in enumerate(hist["curve"]):
        folds = [f["epochs"][e]["val_srocc"] for f in hist["folds"]]
        assert row["val_srocc_folds"] == folds and row["val_srocc_mean"] == pytest.approx(np.mean(folds))
    means = [r["val_srocc_mean"] for r in hist["curve"]]
    assert hist["chosen_epochs"] == int(np.argmax(means)) and hist["cv_val_srocc"] == max(means)
    assert hist["cv_zero_shot_srocc"] == means[0]
    # the final fit ran the chosen number of epochs on ALL shots
    assert [r["epoch"] for r in hist["final"]] == list(range(hist["chosen_epochs"] + 1))
    assert hist["chosen_epochs"] > 0 and hist["cv_val_srocc"] > hist["cv_zero_shot_srocc"] + 0.15
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_kfold_keeps_the_prior_when_training_does_not_help(data):
    model = load_checkpoint(data["prior"]).model
    cfg = FineTuneConfig(**{**FAST, "lr": 0.0, "head_lr": 0.0})
    net, hist = fine_tune(model, _shots(data["samples"]), cfg, preprocess=PREPROCESS, progress=False)
    assert hist["rule"] == "kfold" and len({r["val_srocc_mean"] for r in hist["curve"]}) == 1
    assert hist["chosen_epochs"] == 0 and len(hist["final"]) == 1  # ties -> fewest epochs: the prior itself
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in model.state_dict().items())


def test_too_few_shots_use_the_fixed_budget_without_selecting(data):
    model = load_checkpoint(data["prior"]).model
    shots = _shots(data["samples"], shots=8)  # one content of 8 images: nothing to hold out
    cfg = FineTuneConfig(**{**FAST, "epochs": 2})
    net, hist = fine_tune(model, shots, cfg, preprocess=PREPROCESS, progress=False)
    assert hist["rule"] == "fixed" and "8 images in 1 contents" in hist["rule_reason"]
    assert hist["folds"] == [] and hist["curve"] == [] and hist["cv_val_srocc"] is None
    assert hist["chosen_epochs"] == 2 and [r["epoch"] for r in hist["final"]] == [0, 1, 2]
    assert all(math.isfinite(r["train_loss"]) for r in hist["final"][1:])


def test_plan_folds_rule():
    def photos(n, per=1):
        return [Sample(Path(f"/x/{c}_{i}.png"), 0.1 * i, None, f"c{c}", None) for c in range(n) for i in range(per)]

    assert plan_folds(photos(9), 4, 0).rule == "fixed"  # < 10 images
    assert plan_folds(photos(3, per=5), 4, 0).rule == "fixed"  # < 4 contents
    plan = plan_folds(photos(10), 4, 0)  # 4 folds would hold 2 images: lowered to 3
    assert plan.rule == "kfold" and len(plan.folds) == 3
    assert all(len(f) >= 3 and len({content_key(s) for s in f}) >= 2 for f in plan.folds)
    assert sorted(str(s.path) for f in plan.folds for s in f) == sorted(str(s.path) for s in photos(10))
    many = photos(12, per=3)
    plan = plan_folds(many, 4, 0)
    assert len(plan.folds) == 4
    keys = [{content_key(s) for s in f} for f in plan.folds]
    assert sum(len(k) for k in keys) == len(set().union(*keys)) == 12  # whole contents, disjoint
    assert plan_folds(many[::-1], 4, 0).folds == plan.folds  # independent of input order
    assert plan_folds(many, 4, 1).folds != plan.folds  # but not of the seed
    with pytest.raises(ValueError, match="folds must be an integer >= 2, got 1"):
        plan_folds(many, 1, 0)


def test_choose_epochs_takes_the_best_mean_and_the_fewest_on_ties():
    curve = fold_curve([[0.1, 0.5, 0.7, 0.7], [0.3, 0.5, float("nan"), 0.7]])
    assert [r["val_srocc_mean"] for r in curve] == pytest.approx([0.2, 0.5, 0.7, 0.7])
    assert curve[2]["finite_folds"] == 1
    assert choose_epochs(curve) == 2
    assert choose_epochs(fold_curve([[float("nan")] * 3, [float("nan")] * 3])) is None
    with pytest.raises(ValueError, match="same number of epochs"):
        fold_curve([[0.1, 0.2], [0.1]])


def test_ranking_goes_across_images_when_each_image_is_its_own_content(data):
    photos = _own_content(data["samples"], 12)
    assert rank_across_images(photos) and not rank_across_images(data["samples"])
    model = load_checkpoint(data["prior"]).model
    losses = {}
    for weight in (0.0, 1.0):
        cfg = FineTuneConfig(**{**FAST, "epochs": 1, "ranking_weight": weight, "batchnorm": "train"})
        _, hist = fine_tune(model, photos, cfg, preprocess=PREPROCESS, progress=False)
        assert hist["ranking"] == "across images" and hist["rule"] == "kfold"  # 12 contents -> 4 folds of 3
        losses[weight] = hist["folds"][0]["epochs"][1]["train_loss"]
    assert losses[1.0] > losses[0.0]  # same crops and order: the ranking term is what differs
    _, hist = fine_tune(model, _shots(data["samples"], 8), FineTuneConfig(**{**FAST, "epochs": 1}),
                        preprocess=PREPROCESS, progress=False)
    assert hist["ranking"] == "within content"


def test_fine_tune_is_deterministic_by_seed(data):
    model = load_checkpoint(data["prior"]).model
    shots = _shots(data["samples"])
    cfg = FineTuneConfig(**{**FAST, "epochs": 2})
    runs = [fine_tune(model, shots[::-1] if i else shots, cfg, preprocess=PREPROCESS, progress=False)
            for i in range(2)]

    def strip(h):
        return [[{k: v for k, v in r.items() if k != "seconds"} for r in f["epochs"]] for f in h["folds"]]

    assert strip(runs[0][1]) == strip(runs[1][1]) and runs[0][1]["curve"] == runs[1][1]["curve"]
    assert runs[0][1]["chosen_epochs"] == runs[1][1]["chosen_epochs"]
    a, b = (n.state_dict() for n, _ in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_removed_early_stopping_keys_name_their_replacement(tmp_path):
    for key, value in (("patience", 5), ("val_fraction", 0.2), ("min_delta", 0.0)):
        with pytest.raises(ConfigError, match=f"'{key}'.*removed.*folds"):
            FineTuneConfig(**{key: value})
        with pytest.raises(ConfigError, match=key):
            load_config(FineTuneConfig, None, [f"{key}={value}"])
    cfg = tmp_path / "old.yaml"
    cfg.write_text("shots: 20\nepochs: 5\n")  # the keys that kept their meaning still load
    assert load_config(FineTuneConfig, cfg).epochs == 5


def test_checkpoint_sidecar_records_rule_curve_and_chosen_epochs(data, tmp_path):
    cfg = FineTuneConfig(**{**FAST, "epochs": 2, "shots": 30})
    res = fine_tune_checkpoint(data["prior"], data["samples"], cfg, tmp_path / "ft.safetensors", progress=False)
    meta = read_sidecar(res.path)
    loaded = load_checkpoint(res.path)  # hash-verified, loadable
    assert meta["model"] == "metaiqa_tiny" and loaded.preprocess == PREPROCESS
    assert meta["config"]["fine_tune"]["shots"] == 30 and meta["config"]["fine_tune"]["folds"] == 4
    assert meta["data"]["train"]["n"] == 30 and meta["data"]["test_images"] == len(data["samples"]) - 32
    shot_contents = set(meta["data"]["train"]["contents"])
    hist = meta["history"]
    assert hist["rule"] == "kfold" and len(hist["curve"]) == 3 and hist["chosen_epochs"] in (0, 1, 2)
    assert {c for f in hist["folds"] for c in f["contents"]} == shot_contents
    assert meta["metrics"]["rule"] == "kfold" and meta["metrics"]["chosen_epochs"] == hist["chosen_epochs"]
    assert meta["metrics"]["folds"] == 2 and math.isfinite(meta["metrics"]["cv_val_srocc"])
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
        fine_tune(create_model("metaiqa_tiny"), samples, FineTuneConfig(epochs=1), progress=False)


def test_bad_inputs_give_clear_errors(data, tmp_path):
    model = create_model("metaiqa_tiny")
    with pytest.raises(DatasetError, match="0 samples"):
        fine_tune(model, [], FineTuneConfig(), progress=False)
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
    printed = capsys.readouterr().out
    meta = read_sidecar(out)
    assert meta["config"]["fine_tune"]["epochs"] == 3 and meta["config"]["fine_tune"]["seed"] == 1
    chosen = meta["history"]["chosen_epochs"]
    assert "saved" in printed and "rule: 2-fold cross-validation" in printed
    assert f"-> {chosen} epochs" in printed and f"final fit: {chosen} epochs on all 30 shots" in printed

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
                      ("--batch-size", "batch_size"), ("--folds", "folds"), ("--seed", "seed")):
        assert f"(default {getattr(cfg, key)})" in text.split(flag, 2)[-1].split("--", 1)[0], flag
    # the help explains the selection rule with the thresholds the code uses
    assert "never on test data and never on fewer than two contents" in text
    assert f"(< {MIN_IMAGES} images or < {MIN_CONTENTS} contents)" in text and "final fit on ALL shots" in text
    assert "--patience" not in text and "--val-fraction" not in text


def test_freeze_backbone_trains_only_the_head(data):
    model = load_checkpoint(data["prior"]).model
    shots = _shots(data["samples"], shots=8)
    cfg = FineTuneConfig(**{**FAST, "epochs": 1, "freeze_backbone": True})
    net, hist = fine_tune(model, shots, cfg, preprocess=PREPROCESS, progress=False)
    assert hist["rule"] == "fixed" and hist["chosen_epochs"] == 1
    old, new = model.state_dict(), net.state_dict()
    params = dict(model.named_parameters())
    changed = {k for k in params if not torch.equal(old[k], new[k])}
    assert changed and all(k.startswith("head.") for k in changed)


def test_resize_policy_trains_on_the_scale_the_scorer_sees(data):
    model = load_checkpoint(data["prior"]).model
    pre = {"policy": "resize", "size": 40}
    cfg = FineTuneConfig(**{**FAST, "epochs": 1, "crop_size": 32})
    net, hist = fine_tune(model, _shots(data["samples"]), cfg, preprocess=pre, progress=False)
    assert hist["crop_size"] == 32 and math.isfinite(hist["folds"][0]["epochs"][1]["train_loss"])
    assert math.isfinite(hist["folds"][0]["epochs"][1]["val_srocc"])
