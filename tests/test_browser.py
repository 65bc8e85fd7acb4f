"""The web page in a real browser: Debian's headless Chromium driven by Playwright.

uvicorn serves the app (tiny checkpoint) on 127.0.0.1 in a thread; the test picks a generated
image through the file input and reads the score, model and heatmap the page shows.
Skipped (with the reason) only when Chromium or Playwright is missing.
"""

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from service_helpers import make_checkpoint, png_bytes, settings_for

CHROMIUM = os.environ.get("METAIQA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.skipif(
        not (Path(CHROMIUM).is_file() or shutil.which("chromium")),
        reason=f"Chromium not installed at {CHROMIUM} (apt-get install chromium); browser test skipped",
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn
    from metaiqa.service.app import create_app

    from metaiqa.models import pretrained

    d = tmp_path_factory.mktemp("browser")
    for seed, name in enumerate(pretrained.BUNDLED_MODELS):  # tiny stand-ins for the two bundled models
        make_checkpoint(d / "weights" / f"{name}.safetensors", seed=seed + 10)
    make_checkpoint(d / "models" / "tiny.safetensors")
    make_checkpoint(d / "models" / "second.safetensors", seed=5)
    patch = pytest.MonkeyPatch()
    patch.setattr(pretrained, "WEIGHTS_DIR", d / "weights")
    app = create_app(settings_for(None, models_dir=d / "models", bundled_models=True))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", d
    srv.should_exit = True
    thread.join(10)
    patch.undo()


def test_page_scores_an_uploaded_image(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="python playwright not installed")
    base, _ = server
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(120, seed=4))

    with sync_api.sync_playwright() as p:
        exe = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base + "/")
            # models come from /v1/models: the default first and selected, then the other bundled one
            page.wait_for_function("document.querySelectorAll('#model option').length === 4")
            names = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
            assert names == ["metaiqa-default", "metaiqa-prior", "second", "tiny"]
            assert page.eval_on_selector("#model", "s => s.value") == "metaiqa-default"
            assert "human opinion scores" in page.inner_text("#model-description")
            page.select_option("#model", "metaiqa-prior")
            assert "meta-learned prior" in page.inner_text("#model-description")
            page.select_option("#model", "second")

            page.set_input_files("#file", str(photo))
            page.wait_for_function("document.getElementById('score').dataset.score !== ''", timeout=30_000)
            shown = float(page.inner_text("#score"))
            exact = float(page.get_attribute("#score", "data-score"))
            assert page.inner_text("#used-model") == "second"
            assert page.inner_text("#dims") == "120 × 120"

            # the page shows what the API answers for the same file and model
            import httpx

            api = httpx.post(
                f"{base}/v1/score?model=second", files={"image": ("photo.png", photo.read_bytes(), "image/png")}
            ).json()["results"][0]["score"]
            assert exact == pytest.approx(api, abs=1e-6)
            assert shown == pytest.approx(api, abs=5e-4)

            # heatmap overlay arrives as an image the browser decoded
            page.wait_for_function(
                "(() => { const i = document.getElementById('heatmap'); return i.complete && i.naturalWidth > 0; })()",
                timeout=30_000,
            )
            assert page.eval_on_selector("#heatmap", "i => i.naturalWidth") == 120
            assert page.eval_on_selector("#method", "s => s.value") == "views"  # local scores by default
            assert "fixed 0–1 score scale" in page.inner_text("#heatmap-caption")
            assert "done" in page.inner_text("#status")
            assert not errors, errors
            page.screenshot(path=str(Path(os.environ.get("METAIQA_SCREENSHOT_DIR", tmp_path)) / "page.png"))

            # a bad file shows the server's message instead of a score
            bad = tmp_path / "notes.png"
            bad.write_bytes(b"this is text")
            page.set_input_files("#file", str(bad))
            page.wait_for_function("document.getElementById('status').classList.contains('error')", timeout=30_000)
            assert "415" in page.inner_text("#status") and "not a recognised image" in page.inner_text("#status")
        finally:
            browser.close()
