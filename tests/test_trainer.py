"""Meta-training end to end on a tiny generated synthetic set with metaiqa_tiny."""

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import natural_image
from PIL import Image, ImageFilter

from metaiqa.cli import main as cli_main
from metaiqa.config import ConfigError, load_config
from metaiqa.data.samples import DatasetError
from metaiqa.meta.config import MetaTrainConfig
from metaiqa.meta.state import ResumeError, state_paths
from metaiqa.meta.trainer import MetaTrainer
from metaiqa.models import load_checkpoint
from metaiqa.models.checkpoint import load_tensors

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "meta_train" / "tiny.yaml"
TYPES = {"gaussian_blur": 1, "jpeg": 10, "white_noise": 11}


def _distort(img: Image.Image, kind: str, level: int, rng: np.random.Generator) -> Image.Image:
    if kind == "gaussian_blur":
        return img.filter(ImageFilter.GaussianBlur(0.8 * level))
    if kind == "white_noise":
        arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 10 * level, (*img.size[::-1], 3))
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    import io

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=max(5, 70 - 25 * level))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def make_synth(root: Path, photos: int = 6, crops: int = 2, levels: int = 3, size: int = 40) -> Path:
    """A fake `metaiqa data synth` output: images/, dmos.csv, manifest.json (agreed layout)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows, refs = [], {}
    ref = 0
    for photo in range(photos):
        for crop in range(crops):
            ref += 1
            ref_name = f"I{ref:02d}.png"
            img = Image.fromarray(natural_image(size, seed=100 * photo + crop))
            img.save(root / "images" / ref_name)
            refs[ref_name] = {"source": f"photo{photo}.jpg", "box": [0, 0, size, size], "scale": 1.0}
            for kind, tid in TYPES.items():
                for level in range(1, levels + 1):
                    name = f"I{ref:02d}_{tid:02d}_{level:02d}.png"
                    _distort(img, kind, level, rng).save(root / "images" / name)
                    dmos = 1.0 - 0.8 * level / levels + 0.03 * float(rng.random())
                    rows.append([name, ref_name, f"{dmos:.4f}", kind, level])
    with (root / "dmos.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dist_img", "ref_img", "dmos", "dist_type", "level"])
        w.writerows(rows)
    manifest = {"generator": "metaiqa data synth", "version": 1, "references": refs,
                "distortions": list(TYPES), "committee": {}, "seed": 0}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return make_synth(tmp_path_factory.mktemp("synth"))


def _cfg(synth: Path, out: Path, *extra: str) -> MetaTrainConfig:
    sets = [f"data.spec={synth}", f"out_dir={out}", "data.holdout_types=[white_noise]", *extra]
    return load_config(MetaTrainConfig, TINY, sets)


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_meta_train_checkpoints_and_records_split(synth, tmp_path):
    trainer = MetaTrainer(_cfg(synth, tmp_path / "run"), progress=False)
    summary = trainer.run()
    assert summary["iterations"] == 4 and summary["stopped_by"] == "iterations"
    out = tmp_path / "run"
    for name in ("last.safetensors", "last.json", "last.state.json", "last.state.safetensors", "config.yaml",
                 "best.safetensors", "log.csv"):
        assert (out / name).is_file(), name
    ck = load_checkpoint(out / "last")
    assert ck.meta["model"] == "metaiqa_tiny" and ck.meta["iteration"] == 4
    assert ck.preprocess == {"policy": "center_crop", "size": 32}
    assert ck.meta["batchnorm"] == "renorm"  # auto: single-type task batches -> Batch Renormalization
    data = ck.meta["data"]
    assert data["holdout_types"] == ["white_noise"] and "white_noise" not in data["train_types"]
    splits = data["splits"]
    scenes = [set(splits[p]["contents"]) for p in ("train", "val", "test")]
    assert all(scenes) and not (scenes[0] & scenes[1] or scenes[0] & scenes[2] or scenes[1] & scenes[2])
    # crops of one photo never straddle splits
    assert all(c.startswith("photo") for s in scenes for c in s)
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert rows[1]["val_srocc"] != "" and np.isfinite(float(rows[1]["val_srocc"]))
    # the model actually changed
    fresh = MetaTrainer(_cfg(synth, tmp_path / "other"), progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(fresh.model.state_dict().values(),
                                                        ck.model.state_dict().values(), strict=True))


@pytest.mark.parametrize("algorithm", ["fomaml", "supervised"])
def test_resume_is_bit_for_bit(synth, tmp_path, algorithm):
    straight = MetaTrainer(_cfg(synth, tmp_path / "a", f"algorithm={algorithm}"), progress=False)
    straight.run()
    half = MetaTrainer(_cfg(synth, tmp_path / "b", f"algorithm={algorithm}", "train.iterations=2"), progress=False)
    half.run()
    resumed = MetaTrainer(_cfg(synth, tmp_path / "b", f"algorithm={algorithm}"), resume=True, progress=False)
    assert resumed.iteration == 2
    resumed.run()
    assert resumed.batchnorm == ("batch" if algorithm == "supervised" else "renorm")
    a, b = _params(straight.model), _params(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa = straight.optimizer.state_dict()["state"]
    sb = resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    loss = lambda d: [r["loss"] for r in csv.DictReader((tmp_path / d / "log.csv").open())]  # noqa: E731
    assert loss("a") == loss("b")


@pytest.mark.parametrize("algorithm", ["maml", "reptile"])
def test_other_algorithms_run(synth, tmp_path, algorithm):
    t = MetaTrainer(_cfg(synth, tmp_path / algorithm, f"algorithm={algorithm}", "train.iterations=2",
                         "inner.optimizer=adam", "inner.lr=0.001"), progress=False)
    assert t.run()["iterations"] == 2


def test_cli_meta_train_then_resume_and_load(synth, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["meta-train", "--config", str(TINY), "--set", f"data.spec={synth}", "--out", str(out), "--no-progress"]
    assert cli_main([*args, "--set", "train.iterations=2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["iterations"] == 2
    assert cli_main([*args, "--resume"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["iterations"] == 4
    assert load_checkpoint(out / "last").meta["iteration"] == 4
    assert load_checkpoint(out / "best").model is not None


def test_sigterm_saves_last_and_stops(synth, tmp_path):
    trainer = MetaTrainer(_cfg(synth, tmp_path / "sig", "train.iterations=50", "train.checkpoint_every=50"),
                          progress=False)
    real = trainer.train_step

    def step(stop_request=False):
        if trainer.iteration == 2:
            os.kill(os.getpid(), 15)
        return real(stop_request)

    trainer.train_step = step
    summary = trainer.run()
    assert summary["stopped_by"] == "signal" and summary["iterations"] == 3
    assert load_checkpoint(tmp_path / "sig" / "last").meta["iteration"] == 3


def test_max_minutes_stops_cleanly(synth, tmp_path):
    trainer = MetaTrainer(_cfg(synth, tmp_path / "t", "train.iterations=50", "train.max_minutes=0.0001"),
                          progress=False)
    summary = trainer.run()
    assert summary["stopped_by"] == "time" and summary["iterations"] < 50
    assert (tmp_path / "t" / "last.state.json").is_file()


def test_unknown_config_key_is_named(synth, tmp_path):
    with pytest.raises(ConfigError, match="inner.lrr"):
        _cfg(synth, tmp_path, "inner.lrr=0.1")
    assert cli_main(["meta-train", "--config", str(TINY), "--set", "train.bogus=1"]) == 2


def test_empty_data_set_is_clear_error(tmp_path):
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "dmos.csv").write_text("dist_img,ref_img,dmos,dist_type,level\n")
    (empty / "manifest.json").write_text(json.dumps({"generator": "metaiqa data synth", "references": {}}))
    with pytest.raises(DatasetError, match="empty"):
        MetaTrainer(_cfg(empty, tmp_path / "out"), progress=False)


def test_task_smaller_than_support_plus_query(synth, tmp_path):
    from metaiqa.data.tasks import TaskTooSmall

    with pytest.raises(TaskTooSmall, match="support_refs=3"):
        MetaTrainer(_cfg(synth, tmp_path / "out", "task.support_refs=3", "task.query_refs=2"), progress=False)


def test_corrupt_resume_state_is_clear_error(synth, tmp_path):
    out = tmp_path / "c"
    MetaTrainer(_cfg(synth, out, "train.iterations=2"), progress=False).run()
    tensors, js = state_paths(out / "last")
    with pytest.raises(ResumeError, match="not found"):
        MetaTrainer(_cfg(synth, tmp_path / "nothing"), resume=True, progress=False)
    with pytest.raises(ResumeError, match="config differs.*inner.lr"):
        MetaTrainer(_cfg(synth, out, "inner.lr=0.5"), resume=True, progress=False)
    tensors.write_bytes(tensors.read_bytes()[:-7] + b"garbage")
    with pytest.raises(ResumeError, match="sha256"):
        MetaTrainer(_cfg(synth, out), resume=True, progress=False)
    js.write_text("{not json")
    with pytest.raises(ResumeError, match="not valid JSON"):
        MetaTrainer(_cfg(synth, out), resume=True, progress=False)


def test_checkpoint_weights_match_trained_model(synth, tmp_path):
    trainer = MetaTrainer(_cfg(synth, tmp_path / "w", "train.iterations=1"), progress=False)
    trainer.run()
    saved = load_tensors(tmp_path / "w" / "last.safetensors")
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(saved[k], v.detach().cpu().contiguous())


# ----------------------------------------------------------------- validation after a short adaptation
ADAPT = ("data.val_fraction=0.4", "train.val_adapt_steps=3", "train.val_adapt_lr=0.05")  # 2 val scenes per type


def test_adaptation_tasks_are_per_type_with_disjoint_contents(synth, tmp_path):
    from metaiqa.data.tasks import content_key

    trainer = MetaTrainer(_cfg(synth, tmp_path / "x", *ADAPT), progress=False)
    tasks = trainer.adapt_tasks
    assert sorted(t.group for t in tasks) == ["gaussian_blur", "jpeg"]  # the training types, not held-out
    for t in tasks:
        query = [trainer.val[i] for i in t.query]
        assert {s.group for s in t.support} == {s.group for s in query} == {t.group}
        assert not {content_key(s) for s in t.support} & {content_key(s) for s in query}
        assert len(query) >= 3
    assert trainer.select_key == "val_srocc_adapted"
    # too few validation contents (1 scene): no task, 'best' falls back to the zero-shot figure
    assert MetaTrainer(_cfg(synth, tmp_path / "y"), progress=False).select_key == "val_srocc"


def test_validation_adapts_a_copy_and_leaves_training_state_alone(synth, tmp_path):
    from metaiqa.meta.state import capture_rng

    trainer = MetaTrainer(_cfg(synth, tmp_path / "v", *ADAPT), progress=False)
    trainer.train_step()
    before, rng_before = _params(trainer.model), capture_rng()
    sampler_before = trainer.sampler.state_dict()
    metrics = trainer.validate()
    assert np.isfinite(metrics["val_srocc"]) and np.isfinite(metrics["val_srocc_adapted"])
    assert np.isfinite(metrics["val_srocc_query_zero_shot"])
    after, rng_after = _params(trainer.model), capture_rng()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running stats
    assert all(torch.equal(rng_before[0][k], rng_after[0][k]) for k in rng_before[0]) and rng_before[1] == rng_after[1]
    assert trainer.sampler.state_dict() == sampler_before and trainer.model.training
    assert trainer.validate() == metrics  # the same tasks and crops at every validation
    steps0 = MetaTrainer(_cfg(synth, tmp_path / "w", *ADAPT, "train.val_adapt_steps=0"), progress=False)
    steps0.model.load_state_dict(trainer.model.state_dict())
    m0 = steps0.validate()  # no step: the adapted figure is the zero-shot one on the same query sets
    assert m0["val_srocc_adapted"] == pytest.approx(m0["val_srocc_query_zero_shot"], abs=1e-9)


def test_validating_with_adaptation_does_not_change_the_trajectory(synth, tmp_path):
    often = MetaTrainer(_cfg(synth, tmp_path / "often", *ADAPT, "train.val_every=1"), progress=False)
    often.run()
    rarely = MetaTrainer(_cfg(synth, tmp_path / "rarely", *ADAPT, "train.val_every=100"), progress=False)
    rarely.run()
    a, b = _params(often.model), _params(rarely.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = list(csv.DictReader((tmp_path / "often" / "log.csv").open()))
    assert [r["loss"] for r in rows] == [r["loss"] for r in csv.DictReader((tmp_path / "rarely" / "log.csv").open())]
    assert all(np.isfinite(float(r["val_srocc_adapted"])) and r["val_srocc"] != "" for r in rows)
    best = load_checkpoint(tmp_path / "often" / "best").meta["metrics"]
    assert best["selected_by"] == "val_srocc_adapted" and "val_srocc" in best
    scores = [float(r["val_srocc_adapted"]) for r in rows]
    assert best["iteration"] == 1 + int(np.argmax(scores))


@pytest.mark.parametrize(("select_by", "expected"), [("adapted", 2), ("zero_shot", 1)])
def test_best_is_selected_on_the_configured_figure(synth, tmp_path, select_by, expected):
    scripted = {1: (0.9, 0.1), 2: (0.2, 0.6), 3: (0.5, 0.3), 4: (0.1, 0.2)}  # iteration: (zero-shot, adapted)
    trainer = MetaTrainer(_cfg(synth, tmp_path / select_by, *ADAPT, "train.val_every=1",
                               f"train.select_by={select_by}"), progress=False)
    trainer.validate = lambda: dict(zip(("val_srocc", "val_srocc_adapted"), scripted[trainer.iteration], strict=True))
    summary = trainer.run()
    best = load_checkpoint(tmp_path / select_by / "best").meta
    assert best["iteration"] == expected and summary["best_by"] == best["metrics"]["selected_by"]
    assert summary["best"] == pytest.approx(max(v[0 if select_by == "zero_shot" else 1] for v in scripted.values()))


def test_resume_with_another_selection_figure_starts_best_afresh(synth, tmp_path):
    out = tmp_path / "sel"
    MetaTrainer(_cfg(synth, out, *ADAPT, "train.iterations=2", "train.select_by=zero_shot"), progress=False).run()
    same = MetaTrainer(_cfg(synth, out, *ADAPT, "train.select_by=zero_shot"), resume=True, progress=False)
    assert same.best is not None
    other = MetaTrainer(_cfg(synth, out, *ADAPT), resume=True, progress=False)  # select_by may change on resume
    assert other.best is None and other.select_key == "val_srocc_adapted"
