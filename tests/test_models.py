import json

import pytest
import torch

from metaiqa.models import (
    ChecksumMismatch,
    CorruptCheckpoint,
    UnknownModel,
    create_model,
    list_models,
    load_checkpoint,
    save_checkpoint,
)
from metaiqa.models.resnet_iqa import PretrainedWeightsUnavailable


def test_registry_lists_and_rejects_unknown():
    assert {"metaiqa_resnet18", "metaiqa_tiny"} <= set(list_models())
    with pytest.raises(UnknownModel, match="nope"):
        create_model("nope")


def test_resnet18_head_shape_and_range():
    model = create_model("metaiqa_resnet18").eval()
    head = model.head.layers
    linears = [m for m in head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1000, 1024), (1024, 512), (512, 1)]
    assert any(isinstance(m, torch.nn.PReLU) for m in head)
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in head)
    with torch.inference_mode():
        out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2,) and ((out > 0) & (out < 1)).all()


def test_missing_backbone_file_is_clear_error(tmp_path):
    with pytest.raises(PretrainedWeightsUnavailable, match="not found"):
        create_model("metaiqa_resnet18", pretrained_backbone=str(tmp_path / "x.pth"))


def test_checkpoint_roundtrip_and_hash_check(tmp_path):
    model = create_model("metaiqa_tiny").eval()
    x = torch.rand(3, 3, 32, 32)
    path = save_checkpoint(tmp_path / "m.safetensors", model, model_name="metaiqa_tiny", metrics={"srocc": 0.5})
    loaded = load_checkpoint(path)
    assert torch.allclose(loaded.model(x), model(x))
    assert json.loads(path.with_suffix(".json").read_text())["metrics"] == {"srocc": 0.5}
    assert not list(tmp_path.glob("*.tmp"))

    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(ChecksumMismatch, match="sha256"):
        load_checkpoint(path)


def test_half_checkpoint_loads_as_float(tmp_path):
    model = create_model("metaiqa_tiny").eval()
    path = save_checkpoint(tmp_path / "h", model, model_name="metaiqa_tiny", half=True)
    loaded = load_checkpoint(path)
    assert loaded.meta["dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())


def test_corrupt_sidecar_and_garbage_tensor_file(tmp_path):
    model = create_model("metaiqa_tiny")
    path = save_checkpoint(tmp_path / "c.safetensors", model, model_name="metaiqa_tiny")
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(CorruptCheckpoint, match="JSON"):
        load_checkpoint(path)
    with pytest.raises(CorruptCheckpoint, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_export_half_keeps_scores_and_records_source(tmp_path):
    from metaiqa.cli import main
    from metaiqa.models.checkpoint import read_sidecar

    model = create_model("metaiqa_tiny").eval()
    src = save_checkpoint(tmp_path / "run" / "best", model, model_name="metaiqa_tiny", metrics={"val": 0.7})
    assert main(["export", str(src), str(tmp_path / "ship.safetensors"), "--note", "demo"]) == 0
    meta = read_sidecar(tmp_path / "ship.safetensors")
    assert meta["dtype"] == "float16" and meta["metrics"] == {"val": 0.7} and meta["note"] == "demo"
    assert meta["exported_from"]["sha256"] == read_sidecar(src)["sha256"]
    x = torch.rand(4, 3, 32, 32)
    shipped = load_checkpoint(tmp_path / "ship.safetensors").model
    assert torch.allclose(shipped(x), model(x), atol=2e-3)
    (tmp_path / "run" / "best.safetensors").write_bytes(b"garbage")
    assert main(["export", str(src), str(tmp_path / "other.safetensors")]) == 2


def test_checkpoint_files_are_readable_by_others(tmp_path):
    path = save_checkpoint(tmp_path / "p", create_model("metaiqa_tiny"), model_name="metaiqa_tiny")
    assert path.stat().st_mode & 0o044 == 0o044 and path.with_suffix(".json").stat().st_mode & 0o044 == 0o044
