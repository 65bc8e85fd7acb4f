"""Service settings precedence and `metaiqa serve` through the console entry point."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from metaiqa.service.settings import Settings, SettingsError, load_settings
from service_helpers import make_checkpoint, png_bytes

REPO = Path(__file__).resolve().parents[1]


def metaiqa_cmd() -> list[str]:
    exe = shutil.which("metaiqa")
    return [exe] if exe else [sys.executable, "-m", "metaiqa"]


def test_shipped_yaml_documents_the_defaults():
    assert load_settings(REPO / "configs" / "serve.yaml").model_dump() == Settings().model_dump()


def test_precedence_defaults_yaml_env_explicit(tmp_path, monkeypatch):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("max_batch: 4\nqueue_size: 10\npolicies: {shop: 0.6}\napi_keys: [a]\n")
    s = load_settings(cfg)
    assert (s.max_batch, s.queue_size, s.policies, s.api_keys) == (4, 10, {"shop": 0.6}, ["a"])
    monkeypatch.setenv("METAIQA_MAX_BATCH", "3")
    monkeypatch.setenv("METAIQA_API_KEYS", "k1, k2,")
    s = load_settings(cfg)
    assert (s.max_batch, s.api_keys) == (3, ["k1", "k2"])
    assert load_settings(cfg, max_batch=2).max_batch == 2
    monkeypatch.setenv("METAIQA_CONFIG", str(cfg))
    assert load_settings().queue_size == 10


@pytest.mark.parametrize(
    "text, words",
    [
        ("bogus_key: 1\n", "bogus_key"),
        ("max_batch: 100\nqueue_size: 10\n", "max_batch (100) > queue_size (10)"),
        ("policies: {x: 2}\n", "outside [0, 1]"),
        ("- a list\n", "expected a mapping"),
        ("a: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, text, words):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(SettingsError, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_settings(cfg)


def test_cli_serve_help_and_bad_config(tmp_path):
    r = subprocess.run([*metaiqa_cmd(), "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--models-dir" in r.stdout and "METAIQA_" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_pixels: -1\n")
    r = subprocess.run([*metaiqa_cmd(), "serve", "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "metaiqa serve: error:" in r.stderr and "max_pixels" in r.stderr
    r = subprocess.run([*metaiqa_cmd(), "serve", "--port", "99999"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "port must be in 0..65535" in r.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serve_runs_uvicorn_and_scores(tmp_path):
    models = tmp_path / "models"
    make_checkpoint(models / "shop.safetensors", seed=3)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAIQA_")}
    env.update(METAIQA_TORCH_THREADS="1", METAIQA_API_KEYS="s3cret")
    proc = subprocess.Popen(
        [*metaiqa_cmd(), "serve", "--port", str(port), "--model", "shop", "--models-dir", str(models)],
        cwd=tmp_path,  # no ./configs/serve.yaml here
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "service did not become ready"
            time.sleep(0.2)
        files = {"image": ("photo.png", png_bytes(), "image/png")}
        assert httpx.post(f"{base}/v1/score", files=files, timeout=30).status_code == 401
        r = httpx.post(f"{base}/v1/score", files=files, headers={"X-API-Key": "s3cret"}, timeout=30)
        assert r.status_code == 200 and r.json()["model"] == "shop"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
