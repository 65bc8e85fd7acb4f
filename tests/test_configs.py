"""Every shipped YAML config validates against its schema (an unknown key would be an error), and the
`base:` key layers one YAML over another."""

import re
from argparse import Namespace
from pathlib import Path

import pytest

from metaiqa.cli.adapt import _is_joint
from metaiqa.config import ConfigError, load_config
from metaiqa.meta.config import MetaTrainConfig
from metaiqa.meta.finetune import FineTuneConfig
from metaiqa.meta.joint import JointConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FINE_TUNE = sorted((CONFIGS / "fine_tune").glob("*.yaml"))


@pytest.mark.parametrize("path", sorted((CONFIGS / "meta_train").glob("*.yaml")), ids=lambda p: p.stem)
def test_meta_train_configs_validate(path):
    cfg = load_config(MetaTrainConfig, path)
    assert cfg.train.iterations >= 1


@pytest.mark.parametrize("path", FINE_TUNE, ids=lambda p: p.stem)
def test_fine_tune_configs_load_with_the_class_the_command_picks(path):
    """`fine-tune --config` takes the joint path iff `human` is set (in the file or one of its bases)."""
    joint = _is_joint(Namespace(config=str(path), overrides=[]))
    assert joint == (path.stem != "fewshot")
    cfg = load_config(JointConfig if joint else FineTuneConfig, path)
    if joint:
        assert cfg.human.startswith("biq2021-train:") and cfg.steps >= cfg.val_every


def test_every_yaml_under_configs_is_checked_by_a_test():
    # serve.yaml is loaded by the service's own settings (tests/test_service_cli.py)
    checked = {*(CONFIGS / "meta_train").glob("*.yaml"), *FINE_TUNE, CONFIGS / "serve.yaml"}
    assert set(CONFIGS.rglob("*.yaml")) == checked


def test_default_recipe_holds_out_five_types_and_test_scenes():
    cfg = load_config(MetaTrainConfig, CONFIGS / "meta_train" / "default.yaml")
    assert len(cfg.data.holdout_types) == 5 and cfg.data.test_fraction >= 0.15


def test_brighten_recipe_changes_only_the_brighten_weight_of_the_stage4_mapping():
    stage4 = load_config(JointConfig, CONFIGS / "fine_tune" / "continue_global_stats.yaml")
    brighten = load_config(JointConfig, CONFIGS / "fine_tune" / "continue_brighten.yaml")
    assert brighten.anchor_type_weights == {**stage4.anchor_type_weights, "brighten": 6}


@pytest.mark.parametrize(("child", "base", "changed"), [
    ("continue_brighten", "continue_global_stats", {"anchor_type_weights", "out_dir"}),
    ("continue_global_stats", "continue_mild_damage", {"global_stats", "head_lr", "out_dir"}),
    ("continue_mild_damage", "continue_weak_types", {"anchor_level_weights", "steps", "val_every",
                                                     "out_dir"}),
    ("continue_dark_exposure", "continue_weak_types", {"init", "anchor_dark_human", "out_dir"}),
])
def test_a_variant_recipe_changes_only_what_its_header_says(child, base, changed):
    old = load_config(JointConfig, CONFIGS / "fine_tune" / f"{base}.yaml").model_dump()
    new = load_config(JointConfig, CONFIGS / "fine_tune" / f"{child}.yaml").model_dump()
    assert {k for k in old if old[k] != new[k]} == changed


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_base_chain_merges_sections_replaces_lists_and_set_wins(tmp_path):
    _write(tmp_path / "a.yaml", "seed: 1\nsteps: 10\nanchor_scales: [384, 512]\n"
           "anchor_type_weights: {jpeg: 2, darken: 3}\nhuman: biq2021-train:x\n")
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "b.yaml", "base: ../a.yaml\nsteps: 20\nanchor_scales: [256]\n")
    child = _write(tmp_path / "sub" / "c.yaml", "base: b.yaml\nseed: 2\nanchor_type_weights: {darken: 5}\n")
    cfg = load_config(JointConfig, child, ["seed=7"])
    assert (cfg.seed, cfg.steps, cfg.anchor_scales) == (7, 20, [256])
    assert cfg.anchor_type_weights == {"jpeg": 2, "darken": 5}
    assert cfg.human == "biq2021-train:x"
    assert load_config(JointConfig, child).seed == 2


def test_base_merges_nested_sections_key_by_key(tmp_path):
    _write(tmp_path / "a.yaml", "train: {iterations: 4, val_every: 2}\ninner: {lr: 0.05, steps: 3}\n"
           "data: {holdout_types: [blur, noise], val_fraction: 0.2}\n")
    child = _write(tmp_path / "c.yaml",
                   "base: a.yaml\ntrain: {iterations: 9}\ndata: {holdout_types: [jpeg]}\n")
    cfg = load_config(MetaTrainConfig, child, ["inner.lr=0.5"])
    assert (cfg.train.iterations, cfg.train.val_every) == (9, 2)
    assert (cfg.inner.lr, cfg.inner.steps) == (0.5, 3)
    assert (cfg.data.holdout_types, cfg.data.val_fraction) == (["jpeg"], 0.2)


def test_missing_base_names_the_file_that_asked_for_it(tmp_path):
    (tmp_path / "sub").mkdir()
    child = _write(tmp_path / "sub" / "c.yaml", "base: ../nowhere.yaml\nseed: 1\n")
    looked = re.escape(str((tmp_path / "nowhere.yaml").resolve()))
    msg = rf"c\.yaml: its base '\.\./nowhere\.yaml' is not a file \(looked for {looked}\)"
    with pytest.raises(ConfigError, match=msg):
        load_config(JointConfig, child)


def test_a_base_cycle_is_an_error_showing_the_chain(tmp_path):
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"a\.yaml -> b\.yaml -> a\.yaml"):
        load_config(JointConfig, tmp_path / "a.yaml")


@pytest.mark.parametrize("value", ["[a.yaml]", "3", "''"])
def test_base_must_be_a_path(tmp_path, value):
    child = _write(tmp_path / "c.yaml", f"base: {value}\n")
    with pytest.raises(ConfigError, match="`base` must be the path of another YAML config"):
        load_config(JointConfig, child)


def test_an_unknown_key_in_a_base_is_still_rejected(tmp_path):
    _write(tmp_path / "a.yaml", "human: biq2021-train:x\nstepz: 3\n")
    child = _write(tmp_path / "c.yaml", "base: a.yaml\nseed: 1\n")
    with pytest.raises(ConfigError, match=r"invalid JointConfig in \S*c\.yaml: stepz: .*\(unknown key\)$"):
        load_config(JointConfig, child)


def test_fine_tune_takes_the_joint_path_when_human_is_set_in_a_base(tmp_path):
    child = _write(tmp_path / "c.yaml", f"base: {CONFIGS / 'fine_tune' / 'continue_global_stats.yaml'}\nseed: 3\n")
    assert _is_joint(Namespace(config=str(child), overrides=[]))
    assert not _is_joint(Namespace(config=str(CONFIGS / "fine_tune" / "fewshot.yaml"), overrides=[]))
