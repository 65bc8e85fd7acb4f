"""Issue 12, items 10/11/15: the hash covers everything that changes a score, malformed sidecars
are refused naming the field, a crash between the two files of a save leaves a loadable pair,
and file writing lives in metaiqa.io without process-wide side effects."""

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors

import metaiqa
from metaiqa import io as mio
from metaiqa.errors import MetaIQAError
from metaiqa.models import (
    ChecksumMismatch,
    CorruptCheckpoint,
    MissingChecksum,
    SidecarFieldError,
    SidecarMismatch,
    create_model,
    load_checkpoint,
    read_sidecar,
    save_checkpoint,
    upgrade_checkpoint,
)
from metaiqa.models import checkpoint as ckpt_mod
from metaiqa.models.pretrained import PRIOR_MODEL, default_checkpoint_path

PRE = {"policy": "center_crop", "size": 64}


def _save(path: Path, seed: int = 0, **kw) -> Path:
    torch.manual_seed(seed)
    return save_checkpoint(path, create_model("metaiqa_tiny"), model_name="metaiqa_tiny",
                           model_kwargs={"input_norm": "mscn"}, preprocess=PRE, **kw)


def _edit(path: Path, **changes) -> None:
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    for key, value in changes.items():
        if value is ...:
            meta.pop(key, None)
        else:
            meta[key] = value
    side.write_text(json.dumps(meta))


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _legacy(path: Path, sha: str | None = "real") -> Path:
    """An old-format (metaiqa-checkpoint/1) checkpoint: no metadata in the tensor file."""
    torch.manual_seed(3)
    blob = save_safetensors(create_model("metaiqa_tiny").state_dict())
    path.write_bytes(blob)
    meta = {"format": "metaiqa-checkpoint/1", "model": "metaiqa_tiny", "model_kwargs": {}, "preprocess": PRE,
            "sha256": mio.sha256_bytes(blob) if sha == "real" else sha, "dtype": "float32", "metrics": {"x": 1}}
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


# ---------------------------------------------------------------------------- item 10


@pytest.mark.parametrize("sha", [None, ...], ids=["null", "missing"])
def test_checkpoint_without_hash_is_refused(tmp_path, sha):
    path = _save(tmp_path / "m.safetensors")
    _edit(path, sha256=sha)
    with pytest.raises(MissingChecksum, match="no sha256") as err:
        load_checkpoint(path)
    assert isinstance(err.value, ChecksumMismatch) and err.value.field == "sha256"


def test_swapped_weights_are_refused(tmp_path):
    a, b = _save(tmp_path / "a.safetensors", seed=1), _save(tmp_path / "b.safetensors", seed=2)
    a.write_bytes(b.read_bytes())
    with pytest.raises(ChecksumMismatch, match="sha256"):
        load_checkpoint(a)


@pytest.mark.parametrize(
    "field,value",
    [("model_kwargs", {"input_norm": "rgb"}), ("preprocess", {"policy": "center_crop", "size": 32}),
     ("model", "metaiqa_resnet18")],
)
def test_edited_score_fields_in_sidecar_are_refused(tmp_path, field, value):
    path = _save(tmp_path / "m.safetensors")
    _edit(path, **{field: value})
    with pytest.raises(SidecarMismatch, match=f"sidecar field {field}") as err:
        load_checkpoint(path)
    assert err.value.field == field


def test_score_fields_live_in_the_hashed_tensor_file(tmp_path):
    path = _save(tmp_path / "m.safetensors")
    meta = read_sidecar(path)
    assert meta["format"] == ckpt_mod.FORMAT and meta["sha256"] == mio.sha256_file(path)
    embedded = ckpt_mod._header_metadata(path.read_bytes(), path)
    assert embedded["model"] == "metaiqa_tiny"
    assert json.loads(embedded["model_kwargs"]) == {"input_norm": "mscn"}
    assert json.loads(embedded["preprocess"]) == PRE
    assert load_checkpoint(path).preprocess == PRE


def test_downgrading_the_sidecar_format_does_not_skip_the_check(tmp_path):
    path = _save(tmp_path / "m.safetensors")
    _edit(path, format="metaiqa-checkpoint/1", preprocess={"policy": "native"})
    with pytest.raises(SidecarMismatch, match="preprocess"):
        load_checkpoint(path)


def test_legacy_checkpoint_loads_with_warning_and_upgrades_bit_identically(tmp_path, caplog):
    path = _legacy(tmp_path / "old.safetensors")
    before = ckpt_mod.load_tensors(path)
    with caplog.at_level(logging.WARNING, logger="metaiqa.models.checkpoint"):
        loaded = load_checkpoint(path)
    assert "unverified" in caplog.text and loaded.preprocess == PRE
    upgrade_checkpoint(path)
    meta = read_sidecar(path)
    assert meta["format"] == ckpt_mod.FORMAT and meta["metrics"] == {"x": 1}
    assert meta["upgraded_from"]["format"] == "metaiqa-checkpoint/1"
    after = ckpt_mod.load_tensors(path, meta["sha256"])
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="metaiqa.models.checkpoint"):
        load_checkpoint(path)
    assert "unverified" not in caplog.text


def test_legacy_checkpoint_with_null_hash_is_refused(tmp_path):
    path = _legacy(tmp_path / "old.safetensors", sha=None)
    with pytest.raises(MissingChecksum, match="null"):
        load_checkpoint(path)
    with pytest.raises(MissingChecksum):
        upgrade_checkpoint(path)


def test_bundled_prior_is_in_the_current_format(caplog):
    path = default_checkpoint_path(PRIOR_MODEL)
    assert read_sidecar(path)["format"] == ckpt_mod.FORMAT
    with caplog.at_level(logging.WARNING, logger="metaiqa.models.checkpoint"):
        load_checkpoint(path)
    assert "unverified" not in caplog.text


def test_crash_between_tensor_file_and_sidecar_keeps_the_committed_pair(tmp_path, monkeypatch, caplog):
    path = _save(tmp_path / "last.safetensors", seed=1)
    committed = _weights(load_checkpoint(path).model)

    def crash(*_a, **_k):
        raise KeyboardInterrupt("killed between the two files")

    monkeypatch.setattr(ckpt_mod, "atomic_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        _save(path, seed=2)
    monkeypatch.undo()
    assert mio.sha256_file(path) != read_sidecar(path)["sha256"]  # the tensor file is already the new one
    with caplog.at_level(logging.WARNING, logger="metaiqa.models.checkpoint"):
        loaded = load_checkpoint(path)
    assert "interrupted" in caplog.text
    assert all(torch.equal(v, committed[k]) for k, v in loaded.model.state_dict().items())
    assert ckpt_mod.load_tensors(path, read_sidecar(path)["sha256"]).keys() == committed.keys()  # trainer resume
    _save(path, seed=2)  # the next save completes normally and drops the leftover
    assert not path.with_name(path.name + ".prev").exists() and not list(tmp_path.glob(".*.tmp"))
    assert read_sidecar(path)["sha256"] == mio.sha256_file(path)


def test_runfiles_save_model_and_trainer_state_roundtrip(tmp_path):
    from metaiqa.meta.runstate import RunFiles
    from metaiqa.meta.state import load_state, save_state

    run = RunFiles(tmp_path / "run", {"a": 1}, resume=False)
    model = create_model("metaiqa_tiny")
    path = run.save_model("last", model, model_name="metaiqa_tiny", preprocess=PRE)
    assert load_checkpoint(path).meta["config"] == {"a": 1}
    opt = torch.optim.Adam(model.parameters())
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    opt.step()
    save_state(tmp_path / "run" / "last", opt, read_sidecar(path)["sha256"], {"iteration": 7})
    assert load_state(tmp_path / "run" / "last", torch.optim.Adam(model.parameters()))["iteration"] == 7


# ---------------------------------------------------------------------------- item 11


@pytest.mark.parametrize(
    "changes,field",
    [({"preprocess": "center_crop"}, "preprocess"), ({"preprocess": {"policy": "center_crop", "size": "big"}},
     "preprocess.size"), ({"preprocess": {"policy": "zoom"}}, "preprocess.policy"),
     ({"model_kwargs": ["mscn"]}, "model_kwargs"), ({"model": 5}, "model"), ({"sha256": "abc"}, "sha256"),
     ({"preprocess": ...}, "preprocess")],
)
def test_malformed_sidecar_field_is_named(tmp_path, changes, field):
    path = _save(tmp_path / "m.safetensors")
    _edit(path, **changes)
    with pytest.raises(SidecarFieldError) as err:
        load_checkpoint(path)
    assert err.value.field == field and field.split(".")[-1] in str(err.value)


def test_unknown_model_kwargs_name_the_field(tmp_path):
    path = _legacy(tmp_path / "old.safetensors")
    _edit(path, model_kwargs={"wings": 2})
    with pytest.raises(SidecarFieldError, match="model_kwargs") as err:
        load_checkpoint(path)
    assert err.value.field == "model_kwargs"


def test_cli_reports_malformed_sidecar_in_one_line(tmp_path, capsys):
    from metaiqa.cli import main

    path = _save(tmp_path / "m.safetensors")
    _edit(path, preprocess={"policy": "center_crop", "size": [1, 2]})
    assert main(["export", str(path), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "preprocess.size" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_service_starts_and_skips_a_malformed_checkpoint(tmp_path, caplog):
    from fastapi.testclient import TestClient
    from metaiqa.service.app import create_app
    from metaiqa.service.settings import Settings

    good = _save(tmp_path / "models" / "good.safetensors")
    bad = _save(tmp_path / "models" / "bad.safetensors")
    _edit(bad, model_kwargs="input_norm=rgb")
    settings = Settings(model=str(good), models_dir=tmp_path / "models", torch_threads=1, bundled_models=False)
    with caplog.at_level(logging.ERROR, logger="metaiqa.service.models"), TestClient(create_app(settings)) as client:
        body = client.get("/v1/models").json()
    assert [m["name"] for m in body["models"]] == ["good"]
    assert any("bad.safetensors" in e and "model_kwargs" in e for e in body["errors"])
    assert "bad.safetensors" in caplog.text


# ---------------------------------------------------------------------------- item 15


def test_atomic_write_respects_umask_and_leaves_no_temp(tmp_path):
    import os

    old = os.umask(0o027)
    try:
        mio.atomic_write_bytes(tmp_path / "a" / "f.bin", b"x")
        mio.atomic_write_json(tmp_path / "a" / "g.json", {"b": 1}, durable=False)
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "f.bin").stat().st_mode & 0o777 == 0o640
    assert json.loads((tmp_path / "a" / "g.json").read_text()) == {"b": 1}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["f.bin", "g.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def boom(*_a):
        raise OSError("disk full")

    monkeypatch.setattr(mio.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        mio.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


class _Err(MetaIQAError):
    pass


@pytest.mark.parametrize(
    "content,match",
    [(None, "not found"), (b"{not json", "not valid JSON"), (b"\xff\xfe", "not valid JSON"),
     (b"[" * 5000 + b"]" * 5000, "not valid JSON"), (b"[1]", "JSON object"), (b'{"format": "x/1"}', "format 'x/1'"),
     (b"{}", "format None")],
)
def test_read_json_file_names_each_fault(tmp_path, content, match):
    path = tmp_path / "s.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(_Err, match=match):
        mio.read_json_file(path, "ok/1", error=_Err, what="test file")


def test_read_json_file_accepts_listed_formats(tmp_path):
    (tmp_path / "s.json").write_text('{"format": "ok/2", "v": 1}')
    assert mio.read_json_file(tmp_path / "s.json", ("ok/1", "ok/2"))["v"] == 1


def test_no_module_changes_the_umask():
    root = Path(metaiqa.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py") if "os.umask(" in p.read_text()]
    assert offenders == []


def test_checkpoint_module_keeps_its_old_names():
    from metaiqa.models.checkpoint import atomic_write_bytes, atomic_write_json

    assert atomic_write_bytes is mio.atomic_write_bytes and atomic_write_json is mio.atomic_write_json
    assert issubclass(SidecarMismatch, CorruptCheckpoint)
