"""Joint adaptation (human scores + synthetic orderings), on tiny generated data and a tiny model."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import natural_image
from PIL import Image

from metaiqa.config import load_config
from metaiqa.meta.anchors import AnchorSet, SyntheticOrderingSet, TypeSampler, darkest_well_rated, level_probs
from metaiqa.meta.joint import JointConfig, JointTrainer, anchor_triple_hinge, scene_splits
from metaiqa.meta.runstate import RunDirError
from metaiqa.models import create_model
from metaiqa.models.checkpoint import load_checkpoint, read_sidecar, save_checkpoint

SCENES = {"train": {"contents": ["r0.png", "r1.png", "r2.png"]}, "val": {"contents": ["r3.png"]},
          "test": {"contents": ["r4.png"]}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("joint")
    refs = root / "refs"
    refs.mkdir()
    for i in range(5):
        Image.fromarray(natural_image(96, seed=10 + i)).save(refs / f"r{i}.png")
    (root / "photos").mkdir()
    rows = []
    for i in range(24):
        img = natural_image(72, seed=100 + i)
        noise = np.random.default_rng(i).normal(0, 3 * (i % 6), img.shape)
        Image.fromarray(np.clip(img + noise, 0, 255).astype(np.uint8)).save(root / "photos" / f"p{i}.png")
        rows.append([f"photos/p{i}.png", round(1 - (i % 6) / 6, 3)])
    with open(root / "human.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "mos"], *rows])
    torch.manual_seed(0)
    prior = save_checkpoint(root / "prior", create_model("metaiqa_tiny"), model_name="metaiqa_tiny",
                            preprocess={"policy": "center_crop", "size": 32}, data={"splits": SCENES})
    return root, prior


def _cfg(root: Path, prior: Path, out: str, **kw) -> JointConfig:
    base = dict(init=str(prior), human=f"csv:{root / 'human.csv'}", references=str(root / "refs"), scale=48,
                crop_size=32, anchor_scales=[48], batch_human=4, anchor_crops=2, steps=6, val_every=3,
                checkpoint_every=2, warmup_steps=1, threads=1, lr=1e-3, head_lr=1e-3, val_fraction=0.25,
                out_dir=str(root / out))
    base.update(kw)
    return JointConfig(**base)


def test_anchor_triples_are_ordered_and_from_allowed_scenes(setup):
    root, _ = setup
    anchor = AnchorSet.from_folder(root / "refs", SCENES, "train", [48], 32)
    assert anchor.scenes == ["r0.png", "r1.png", "r2.png"]
    crops, labels, kinds = anchor.sample(3, np.random.default_rng(0))
    assert len(kinds) == 3 and set(kinds) <= set(anchor.types)
    assert len(crops) == 9 and all(c.shape == (32, 32, 3) and c.dtype == np.uint8 for c in crops)
    for k in range(3):
        pristine, lighter, heavier = labels[3 * k : 3 * k + 3]
        assert pristine == 1.0 and pristine > lighter > heavier


def test_ordering_validation_rewards_a_scorer_that_follows_the_levels(setup):
    root, _ = setup
    ordering = SyntheticOrderingSet.from_folder(root / "refs", SCENES, "val", 48)
    assert ordering.scenes == ["r3.png"]
    levels = np.array([lv for _, _, lv in ordering.keys], dtype=float)
    perfect = ordering.evaluate(lambda imgs: 1.0 - levels / 10)
    backwards = ordering.evaluate(lambda imgs: levels / 10)
    assert perfect["val_synth_within_srocc"] == pytest.approx(1.0)
    assert perfect["val_synth_pristine_above"] == 1.0
    assert backwards["val_synth_within_srocc"] == pytest.approx(-1.0)
    assert backwards["val_synth_pristine_above"] == 0.0
    upside_down = np.where([kind == "jpeg" for _, kind, _ in ordering.keys], 1.0 + levels / 10, 1.0 - levels / 10)
    per_type = ordering.per_type(upside_down)
    assert per_type["jpeg"] == {"within_srocc": pytest.approx(-1.0), "pristine_above": 0.0}
    assert per_type["white_noise"] == {"within_srocc": pytest.approx(1.0), "pristine_above": 1.0}
    overall = ordering.evaluate(lambda imgs: upside_down)
    assert overall["val_synth_pristine_above"] == pytest.approx(np.mean([r["pristine_above"] for r in per_type.values()]))


def test_joint_run_widens_the_front_end_and_saves_views_policy(setup):
    root, prior = setup
    out = JointTrainer(_cfg(root, prior, "run_a"), progress=False).run()
    assert out["step"] == 6
    best = load_checkpoint(root / "run_a" / "best.safetensors")
    assert best.meta["model_kwargs"]["input_norm"] == "mscn_rgb"
    assert best.preprocess["policy"] == "views" and best.preprocess["scale"] == 48
    rows = [json.loads(line) for line in (root / "run_a" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 3, 6]
    assert {"val_human_srocc", "val_synth_within_srocc", "select"} <= set(rows[-1])
    sidecar = read_sidecar(root / "run_a" / "best")
    assert sidecar["data"]["anchor_scenes"] == ["r0.png", "r1.png", "r2.png"]
    assert sidecar["data"]["val_scenes"] == ["r3.png"]


def test_without_init_validation_best_is_the_best_validated_training_step(setup):
    root, prior = setup
    out = JointTrainer(_cfg(root, prior, "run_noinit", validate_init=False), progress=False).run()
    rows = [json.loads(line) for line in (root / "run_noinit" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6]
    best = max(rows, key=lambda r: r["select"])
    assert out["best_step"] == best["step"]
    assert read_sidecar(root / "run_noinit" / "best")["metrics"]["step"] == best["step"]


def test_widened_prior_scores_exactly_like_the_prior_before_training(setup):
    root, prior = setup
    trainer = JointTrainer(_cfg(root, prior, "run_w", steps=1), progress=False)
    ref = load_checkpoint(prior).model.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(trainer.model.eval()(x), ref(x), atol=1e-6)


def test_resume_continues_like_an_uninterrupted_run(setup):
    root, prior = setup
    JointTrainer(_cfg(root, prior, "full"), progress=False).run()
    part = JointTrainer(_cfg(root, prior, "parts", max_minutes=1e-9), progress=False)
    part.run()  # stops after the first step (time budget), saving its state
    assert part.step == 1
    resumed = JointTrainer(_cfg(root, prior, "parts", max_minutes=1e-9), resume=True, progress=False)
    assert resumed.step == 1
    resumed.cfg = _cfg(root, prior, "parts")  # lift the budget, same run
    resumed.run()
    a = load_checkpoint(root / "full" / "last.safetensors").model.state_dict()
    b = load_checkpoint(root / "parts" / "last.safetensors").model.state_dict()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k


def test_an_existing_run_is_not_overwritten_and_a_changed_config_cannot_resume(setup):
    root, prior = setup
    JointTrainer(_cfg(root, prior, "guard", steps=1), progress=False).run()
    with pytest.raises(RunDirError, match="--resume"):
        JointTrainer(_cfg(root, prior, "guard", steps=1), progress=False)
    with pytest.raises(RunDirError, match="steps"):
        JointTrainer(_cfg(root, prior, "guard", steps=2), resume=True, progress=False)


@pytest.mark.parametrize("name, architecture", [("default", "metaiqa_effnet_lite0"), ("resnet18", None)])
def test_shipped_recipe_configs_are_valid(name, architecture):
    cfg = load_config(JointConfig, Path(__file__).parents[1] / "configs" / "fine_tune" / f"{name}.yaml")
    assert cfg.init == "metaiqa-prior" and cfg.human.startswith("biq2021-train:")
    assert cfg.architecture == architecture and cfg.pretrained_backbone == ("imagenet" if architecture else None)


def test_fine_tune_cli_runs_the_joint_recipe_and_resumes(setup, tmp_path, capsys):
    from metaiqa.cli import main

    root, prior = setup
    cfg = tmp_path / "joint.yaml"
    cfg.write_text(f"human: csv:{root / 'human.csv'}\nreferences: {root / 'refs'}\nscale: 48\ncrop_size: 32\n"
                   "anchor_scales: [48]\nbatch_human: 4\nanchor_crops: 1\nsteps: 2\nval_every: 2\nthreads: 1\n"
                   "val_fraction: 0.25\n")
    out = tmp_path / "run"
    argv = ["fine-tune", "--config", str(cfg), "--prior", str(prior), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert "trained to step 2; saved" in capsys.readouterr().out
    assert main(argv) == 2  # the folder holds a run: refuse without --resume, clear message
    assert "--resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0  # nothing left to do, but resumes cleanly
    assert main(["fine-tune", "--out", str(tmp_path / "x")]) == 2
    assert "--data is required" in capsys.readouterr().err


def test_both_levels_of_an_anchor_triple_shift_the_same_way(setup):
    root, _ = setup
    anchor = AnchorSet.from_folder(root / "refs", SCENES, "train", [48], 32)
    only_shift = np.eye(len(anchor.types))[anchor.types.index("mean_shift")]
    crops, _, kinds = anchor.sample(8, np.random.default_rng(1), type_probs=only_shift)
    assert set(kinds) == {"mean_shift"}
    for k in range(8):
        pristine, lighter, heavier = (c.astype(float).mean() for c in crops[3 * k : 3 * k + 3])
        assert (lighter - pristine) * (heavier - pristine) > 0  # same direction, up or down
        assert abs(heavier - pristine) > abs(lighter - pristine)


def test_type_sampler_draws_hard_types_more_and_keeps_a_uniform_floor():
    types = ["a", "b", "c", "d"]
    assert TypeSampler(types, adaptive=False).probs() is None
    sampler = TypeSampler(types, adaptive=True, floor=0.5)
    assert sampler.probs() is None  # nothing seen yet: uniform
    sampler.update(["a", "b", "c", "d"], [0.3, 0.1, 0.0, 0.0])
    p = sampler.probs()
    assert p.sum() == pytest.approx(1.0) and p[0] > p[1] > p[2] == p[3] == pytest.approx(0.5 / 4)
    assert list(sampler.hardest(2)) == ["a", "b"]
    restored = TypeSampler(types, adaptive=True, floor=0.5)
    restored.load_state_dict(sampler.state_dict())
    assert np.allclose(restored.probs(), p)
    with pytest.raises(ValueError, match="holds 4 types"):
        TypeSampler(types[:2], adaptive=True).load_state_dict(sampler.state_dict())


def test_type_weights_set_the_base_draws_and_the_floor_of_loss_sampling():
    types = ["a", "b", "c", "d"]
    fixed = TypeSampler(types, adaptive=False, weights={"a": 3.0, "c": 0.0})
    assert np.allclose(fixed.probs(), [0.6, 0.2, 0.0, 0.2])
    adaptive = TypeSampler(types, adaptive=True, floor=0.5, weights={"a": 3.0})
    adaptive.update(types, [0.0, 0.0, 0.0, 0.4])
    assert np.allclose(adaptive.probs(), 0.5 * np.array([0.5, 1 / 6, 1 / 6, 1 / 6]) + 0.5 * np.array([0, 0, 0, 1]))
    with pytest.raises(ValueError, match="unknown types"):
        TypeSampler(types, adaptive=False, weights={"e": 1.0})
    rng = np.random.default_rng(0)
    anchor = AnchorSet([np.full((40, 40, 3), 128, np.uint8)], ["s"], 32, ["white_noise", "mean_shift", "jpeg"])
    _, _, kinds = anchor.sample(30, rng, TypeSampler(anchor.types, adaptive=False, weights={"white_noise": 0, "jpeg": 0}).probs())
    assert set(kinds) == {"mean_shift"}


def test_level_weights_decide_which_two_levels_an_anchor_triple_shows(setup):
    root, prior = setup
    anchor = AnchorSet([np.full((40, 40, 3), 128, np.uint8)], ["s"], 32, ["mean_shift"])
    _, labels, _ = anchor.sample(20, np.random.default_rng(0), level_probs=level_probs([1, 1, 0, 0, 0]))
    assert sorted(set(labels)) == [0.8, 0.9, 1.0]  # only levels 1 and 2 besides the pristine crop
    _, uniform, _ = anchor.sample(20, np.random.default_rng(0), level_probs=level_probs(None))
    _, default, _ = anchor.sample(20, np.random.default_rng(0))
    assert uniform == default and len(set(uniform)) > 3
    assert _cfg(root, prior, "ok", anchor_level_weights=[3, 2, 1, 1, 1]).anchor_level_weights == [3, 2, 1, 1, 1]
    for bad in ([1, 1, 1], [1, 0, 0, 0, 0], [1, -1, 1, 1, 1]):
        with pytest.raises(ValueError, match=r"anchor_level_weights[\s\S]*5 values"):
            _cfg(root, prior, "bad", anchor_level_weights=bad)


def test_anchor_type_weights_are_checked_against_the_distortion_registry(setup):
    root, prior = setup
    assert _cfg(root, prior, "ok", anchor_type_weights={"mean_shift": 3.0}).anchor_type_weights == {"mean_shift": 3.0}
    with pytest.raises(ValueError, match="anchor_type_weights.*mean_shfit"):
        _cfg(root, prior, "bad", anchor_type_weights={"mean_shfit": 3.0})
    with pytest.raises(ValueError, match="anchor_type_weights"):
        _cfg(root, prior, "bad", anchor_type_weights={"mean_shift": -1.0})


def test_anchor_triple_hinge_is_zero_only_for_ordered_triples_with_margin():
    ordered = torch.tensor([1.0, 0.8, 0.6])
    assert anchor_triple_hinge(ordered, 0.05).item() == 0.0
    swapped = torch.tensor([1.0, 0.6, 0.8, 0.5, 0.6, 0.7])
    per_triple = anchor_triple_hinge(swapped, 0.05)
    assert per_triple.shape == (2,) and 0 < per_triple[0] < per_triple[1]


def test_select_weights_name_known_metrics(setup):
    root, prior = setup
    with pytest.raises(ValueError, match="select_weights"):
        _cfg(root, prior, "bad", select_weights={"val_test_srocc": 1.0})
    with pytest.raises(ValueError, match="select_weights"):
        _cfg(root, prior, "bad", select_weights={"val_human_srocc": 0.0})


def test_continuing_a_joint_checkpoint_keeps_its_scene_splits_and_type_state(setup):
    root, prior = setup
    JointTrainer(_cfg(root, prior, "stage1", steps=2, val_every=2), progress=False).run()
    stage1 = root / "stage1" / "best.safetensors"
    assert scene_splits(load_checkpoint(stage1).meta) == SCENES
    cfg = _cfg(root, stage1, "stage2", steps=4, val_every=2, anchor_type_sampling="loss",
               select_weights={"val_human_srocc": 0.5, "val_synth_pristine_above": 0.5})
    trainer = JointTrainer(cfg, progress=False)
    assert trainer.anchor.scenes == ["r0.png", "r1.png", "r2.png"]  # not every reference: the test scene stays out
    trainer.run()
    assert not np.isnan(trainer.type_sampler.loss_ema).all()
    rows = [json.loads(line) for line in (root / "stage2" / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["select"] == pytest.approx(0.5 * rows[-1]["val_human_srocc"] + 0.5 * rows[-1]["val_synth_pristine_above"])
    assert "hardest_anchor_types" in rows[-1]
    resumed = JointTrainer(cfg, resume=True, progress=False)
    assert np.allclose(resumed.type_sampler.loss_ema, trainer.type_sampler.loss_ema, equal_nan=True)


def test_continue_anchors_recipe_starts_from_the_default_and_counts_pristine_above():
    cfg = load_config(JointConfig, Path(__file__).parents[1] / "configs" / "fine_tune" / "continue_anchors.yaml")
    assert cfg.init == "metaiqa-default" and cfg.architecture is None and cfg.anchor_top_human > 0
    assert "val_synth_pristine_above" in cfg.select_weights


def test_weak_types_recipe_draws_the_weak_types_more_and_selects_on_validation_photos():
    cfg = load_config(JointConfig, Path(__file__).parents[1] / "configs" / "fine_tune" / "continue_weak_types.yaml")
    assert cfg.init == "metaiqa-default" and cfg.val_photo_orderings > 0
    assert min(cfg.anchor_type_weights.values()) > 1  # only types drawn more often are named
    assert {"val_photo_within_srocc", "val_photo_pristine_above"} <= set(cfg.select_weights)
    assert not any(k.startswith("val_synth") for k in cfg.select_weights)


def test_best_rated_human_photos_join_the_anchor_and_the_cli_names_the_best_step(setup, tmp_path):
    root, prior = setup
    trainer = JointTrainer(_cfg(root, prior, "top", steps=1, anchor_top_human=3), progress=False)
    top = sorted(trainer.human_train, key=lambda s: -s.mos)[:3]
    assert trainer.anchor.scenes[:3] == ["r0.png", "r1.png", "r2.png"]
    assert trainer.anchor.scenes[3:] == [s.ref_id for s in top]
    assert len(trainer.anchor.images) == 3 + 3  # one scale of the references + the 3 photos
    out = trainer.run()
    assert out["best_step"] in (0, 1) and out["step"] == 1


def test_darkest_well_rated_skips_photos_rated_below_the_median():
    shades = [10, 20, 30, 40, 200, 220]
    images = [np.full((4, 4, 3), v, np.uint8) for v in shades]
    mos = [0.1, 0.9, 0.2, 0.8, 0.7, 0.95]  # median 0.75: the 10- and 30-shade photos are rated below it
    assert darkest_well_rated(images, mos, 2).tolist() == [1, 3]
    assert darkest_well_rated(images, mos, 10).tolist() == [1, 3, 5]
    with pytest.raises(ValueError, match="6 images but 5 scores"):
        darkest_well_rated(images, mos[:5], 2)


def test_dark_well_rated_human_photos_join_the_anchor(setup):
    root, prior = setup
    trainer = JointTrainer(_cfg(root, prior, "dark", steps=1, anchor_top_human=2, anchor_dark_human=3), progress=False)
    expect = darkest_well_rated(trainer.train_imgs, [s.mos for s in trainer.human_train], 3)
    assert trainer.anchor.scenes[5:] == [trainer.human_train[i].ref_id for i in expect]
    assert len(trainer.anchor.images) == 3 + 2 + 3
    brightness = [trainer.anchor.images[5 + k].mean() for k in range(3)]
    assert brightness == sorted(brightness)
    assert all(trainer.human_train[i].mos >= np.median([s.mos for s in trainer.human_train]) for i in expect)


def test_photo_orderings_validate_on_the_best_rated_validation_photos(setup):
    root, prior = setup
    with pytest.raises(ValueError, match="val_photo_orderings"):
        _cfg(root, prior, "photo_bad", select_weights={"val_photo_within_srocc": 1.0})
    cfg = _cfg(root, prior, "photo", steps=1, val_photo_orderings=2,
               select_weights={"val_human_srocc": 0.5, "val_photo_pristine_above": 0.5})
    trainer = JointTrainer(cfg, progress=False)
    best_two = [trainer.human_val[i].ref_id for i in np.argsort(-trainer.val_mos, kind="stable")[:2]]
    assert trainer.photo_ordering_val.scenes == best_two
    row = trainer.validate()
    assert 0.0 <= row["val_photo_pristine_above"] <= 1.0 and -1.0 <= row["val_photo_within_srocc"] <= 1.0
    assert row["select"] == pytest.approx(0.5 * row["val_human_srocc"] + 0.5 * row["val_photo_pristine_above"])


def test_ordering_set_from_images_takes_the_centre_and_every_type_and_level():
    photo = np.zeros((40, 60, 3), np.uint8)
    photo[:, 10:50] = 200  # the centre 40x40 is bright
    oset = SyntheticOrderingSet.from_images([photo], ["p"], 48)
    assert oset.images[0].shape == (40, 40, 3) and oset.images[0].min() == 200
    assert len(oset.images) == 1 + 3 * len({kind for _, kind, _ in oset.keys if kind})


def test_a_joint_run_can_add_the_photometric_branch_and_trains_it(setup):
    root, prior = setup
    trainer = JointTrainer(_cfg(root, prior, "run_gs", global_stats=True), progress=False)
    ref = load_checkpoint(prior).model.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(trainer.model.eval()(x), ref(x), atol=1e-6)  # the branch starts at zero
    trainer.run()
    last = load_checkpoint(root / "run_gs" / "last.safetensors")
    assert last.meta["model_kwargs"]["global_stats"] is True
    assert last.model.stats_head.layers[-1].weight.abs().sum() > 0


def test_global_stats_recipe_adds_the_branch_to_the_default():
    cfg = load_config(JointConfig, Path(__file__).parents[1] / "configs" / "fine_tune" / "continue_global_stats.yaml")
    assert cfg.init == "metaiqa-default" and cfg.global_stats is True and cfg.architecture is None
