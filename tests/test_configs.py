"""Every shipped YAML config validates against its schema (an unknown key would be an error), and the
`base:` key layers one YAML over another."""

from pathlib import Path

import pytest

from metaiqa.config import ConfigError, load_config
from metaiqa.meta.config import MetaTrainConfig
from metaiqa.meta.finetune import FineTuneConfig
from metaiqa.meta.joint import JointConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "meta_train").glob("*.yaml")), ids=lambda p: p.stem)
def test_meta_train_configs_validate(path):
    cfg = load_config(MetaTrainConfig, path)
    assert cfg.train.iterations >= 1


def test_fine_tune_config_validates():
    load_config(FineTuneConfig, CONFIGS / "fine_tune" / "fewshot.yaml")


@pytest.mark.parametrize("path", sorted(p for p in (CONFIGS / "fine_tune").glob("*.yaml") if p.stem != "fewshot"),
                         ids=lambda p: p.stem)
def test_joint_recipe_configs_validate(path):
    cfg = load_config(JointConfig, path)
    assert cfg.human.startswith("biq2021-train:") and cfg.steps >= cfg.val_every


def test_default_recipe_holds_out_five_types_and_test_scenes():
    cfg = load_config(MetaTrainConfig, CONFIGS / "meta_train" / "default.yaml")
    assert len(cfg.data.holdout_types) == 5 and cfg.data.test_fraction >= 0.15


def test_brighten_recipe_is_the_stage4_recipe_but_for_brighten_and_out_dir():
    stage4 = load_config(JointConfig, CONFIGS / "fine_tune" / "continue_global_stats.yaml").model_dump()
    brighten = load_config(JointConfig, CONFIGS / "fine_tune" / "continue_brighten.yaml").model_dump()
    changed = {k for k in stage4 if stage4[k] != brighten[k]}
    assert changed == {"anchor_type_weights", "out_dir"}
    assert brighten["anchor_type_weights"] == {**stage4["anchor_type_weights"], "brighten": 6}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_base_chain_merges_sections_replaces_lists_and_set_wins(tmp_path):
    _write(tmp_path / "a.yaml", "seed: 1\nsteps: 10\nanchor_scales: [384, 512]\n"
           "anchor_type_weights: {jpeg: 2, darken: 3}\nhuman: biq2021-train:x\n")
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "b.yaml", "base: ../a.yaml\nsteps: 20\nanchor_scales: [256]\n")
    child = _write(tmp_path / "sub" / "c.yaml", "base: b.yaml\nanchor_type_weights: {darken: 5}\n")
    cfg = load_config(JointConfig, child, ["seed=7"])
    assert (cfg.seed, cfg.steps, cfg.anchor_scales) == (7, 20, [256])
    assert cfg.anchor_type_weights == {"jpeg": 2, "darken": 5}
    assert cfg.human == "biq2021-train:x"


def test_missing_base_names_the_file_that_asked_for_it(tmp_path):
    child = _write(tmp_path / "c.yaml", "base: nowhere.yaml\nseed: 1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: its base 'nowhere\.yaml' is not a file"):
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
    _write(tmp_path / "a.yaml", "stepz: 3\n")
    child = _write(tmp_path / "c.yaml", "base: a.yaml\nseed: 1\n")
    with pytest.raises(ConfigError, match=r"stepz.*unknown key"):
        load_config(JointConfig, child)


def test_fine_tune_takes_the_joint_path_when_human_is_set_in_a_base(tmp_path):
    from argparse import Namespace

    from metaiqa.cli.adapt import _is_joint

    child = _write(tmp_path / "c.yaml", f"base: {CONFIGS / 'fine_tune' / 'continue_global_stats.yaml'}\nseed: 3\n")
    assert _is_joint(Namespace(config=str(child), overrides=[]))
    assert not _is_joint(Namespace(config=str(CONFIGS / "fine_tune" / "fewshot.yaml"), overrides=[]))
