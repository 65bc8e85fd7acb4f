"""`metaiqa validate` warns when its images overlap what the model recorded as its training data."""

import json
import logging
from pathlib import Path

import pytest
import torch

from metaiqa.cli import main
from metaiqa.data.formats import parse_data_spec
from metaiqa.data.samples import Sample
from metaiqa.evaluation.overlap import recorded_names, training_overlap
from metaiqa.meta.config import MetaTrainConfig
from metaiqa.meta.datasplit import prepare_data
from metaiqa.models import create_model, save_checkpoint
from tests.test_formats import make_synth, save_image, write_csv

WEIGHTS = Path(__file__).resolve().parents[1] / "metaiqa" / "models" / "weights"


@pytest.fixture
def synth(tmp_path):
    """6 reference crops of 3 photos (photo1..3.jpg), 2 types x 3 levels each, 48 px (scorable)."""
    root = make_synth(tmp_path / "synth", refs=6)
    for i, path in enumerate(sorted((root / "images").iterdir())):
        save_image(path, i, size=48)
    return root


@pytest.fixture
def meta_split(synth):
    """What the meta-trainer records: one photo each in train, val and test."""
    cfg = MetaTrainConfig.model_validate({"data": {"spec": str(synth), "val_fraction": 0.34, "test_fraction": 0.34}})
    return prepare_data(cfg)


def test_meta_train_record_flags_train_and_val_scenes_not_the_test_split(synth, meta_split):
    samples = parse_data_spec(str(synth))
    test_scenes = set(meta_split.summary["splits"]["test"]["contents"])
    held_out = [s for s in samples if s.content in test_scenes]
    seen = [s for s in samples if s.content not in test_scenes]
    assert held_out and seen
    meta = {"data": meta_split.summary}
    assert training_overlap(meta, held_out)["images"] == 0
    res = training_overlap(meta, samples)
    assert res["images"] == len(seen) and res["of"] == len(samples)
    assert set(res["by_source"]) == {"meta-train train scenes", "meta-train val scenes"}
    assert "optimistic" in res["warning"]


def test_the_bundled_default_model_record(tmp_path):
    meta = json.loads((WEIGHTS / "metaiqa-default.json").read_text())
    sources = recorded_names(meta["data"])
    val_id = meta["data"]["human_val_ids"][0]
    scene = meta["data"]["anchor_scenes"][0]
    samples = [
        Sample(tmp_path / val_id.upper(), 0.5, ref_id=None),  # a file name, case aside
        Sample(tmp_path / "crop.png", 0.5, ref_id="I01", source=scene),  # a crop of a training scene
        Sample(tmp_path / "ss09 (1).jpg", 0.5, ref_id="ss09 (1).jpg"),  # not recorded
        Sample(tmp_path / "x.png", 0.5, ref_id="I01"),  # a bare id: the synthetic ref ids are not compared
    ]
    res = training_overlap(meta, samples, model="metaiqa-default")
    assert res["images"] == 2 and res["examples"] == [val_id.upper(), "crop.png"]
    assert res["by_source"] == {"human-rated selection images": 1, "synthetic training scenes": 1,
                                "prior's train scenes": 1}
    assert "prior's test scenes" not in sources and "metaiqa-default" in res["warning"]


def test_a_recorded_training_spec_is_read_when_it_exists(tmp_path, caplog):
    root = tmp_path / "biq"
    for i in range(3):
        save_image(root / "Images" / f"ss01 ({i}).jpg", i)
    write_csv(root / "Train (Images and MOS).csv", ["Image Name", "MOS"], [[f"ss01 ({i}).jpg", 0.5] for i in range(2)])
    meta = {"data": {"human": f"biq2021-train:{root}", "human_val_ids": ["ss01 (1).jpg", "..."]}}
    labels = write_csv(tmp_path / "labels.csv", ["path", "mos"],
                       [[str(root / "Images" / f"ss01 ({i}).jpg"), i / 2] for i in range(3)])
    samples = parse_data_spec(str(labels))
    assert training_overlap(meta, samples)["images"] == 1  # recorded names only: the one listed val id
    with caplog.at_level(logging.WARNING):
        res = training_overlap(meta, samples, load_specs=True)
    assert res["images"] == 2 and res["by_source"][f"human-rated training data biq2021-train:{root}"] == 2
    assert "overlaps the training data" in caplog.text
    missing = {"data": {"human": f"biq2021-train:{tmp_path / 'gone'}"}}
    assert training_overlap(missing, samples, load_specs=True)["checked"] is False  # nothing to compare here


def test_fine_tune_shots_are_compared_by_file_name(tmp_path):
    meta = {"data": {"train": {"contents": ["path:/elsewhere/a.png"], "paths": ["/elsewhere/a.png"]}}}
    res = training_overlap(meta, [Sample(tmp_path / "a.png", 0.1), Sample(tmp_path / "b.png", 0.2)])
    assert res["images"] == 1 and res["by_source"] == {"fine-tune shots": 1}


def test_no_record_means_not_checked_and_no_warning(tmp_path):
    res = training_overlap({"data": {}}, [Sample(tmp_path / "a.png", 0.1)])
    assert res["checked"] is False and res["warning"] is None


def save_tiny(path, data):
    torch.manual_seed(0)
    return save_checkpoint(path, create_model("metaiqa_tiny"), model_name="metaiqa_tiny",
                           preprocess={"policy": "center_crop", "size": 32}, data=data)


def test_validate_cli_warns_in_log_table_and_report(tmp_path, synth, meta_split, capsys, caplog):
    ckpt = save_tiny(tmp_path / "m.safetensors", meta_split.summary)
    out_dir = tmp_path / "report"
    code = main(["validate", "--model", str(ckpt), "--data", str(synth), "--bootstrap", "0", "--no-progress",
                 "--out", str(out_dir)])
    out, err = capsys.readouterr()
    assert code == 0
    n_seen = len(meta_split.train) + len(meta_split.val)  # no held-out types: every train/val image
    warning_line = next(line for line in out.splitlines() if line.startswith("WARNING: "))
    assert warning_line.startswith(f"WARNING: {n_seen} of 36 validation images share a scene")
    assert "overlaps the training data" in caplog.text
    caplog.clear()
    report = json.loads((out_dir / "report.json").read_text())
    assert report["training_overlap"]["images"] == n_seen
    assert "share a scene or file name" in (out_dir / "report.html").read_text()

    clean = save_tiny(tmp_path / "clean.safetensors", {"splits": {"train": {"contents": ["other.jpg"]}}})
    code = main(["validate", "--model", str(clean), "--data", str(synth), "--bootstrap", "0", "--no-progress",
                 "--no-report", "--format", "json"])
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert code == 0 and report["training_overlap"]["images"] == 0 and report["training_overlap"]["checked"]
    assert "overlaps" not in caplog.text
