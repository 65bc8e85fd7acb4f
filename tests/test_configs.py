"""Every shipped YAML config validates against its schema (an unknown key would be an error)."""

from pathlib import Path

import pytest

from metaiqa.config import load_config
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
