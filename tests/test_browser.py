"""The web page in a real browser: Debian's headless Chromium driven by Playwright.

uvicorn serves the app (tiny checkpoints) on 127.0.0.1 in a thread. One page load walks through
what a user does: first load (no empty card, no broken image, no console error), several images
at once (one card each, the API's scores), a pass/fail threshold, re-scoring on another heatmap
method or model, an unreadable file and then a good one (nothing of the failed file stays).
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


BROKEN_IMAGES = """() => [...document.images]
    .filter((i) => i.getClientRects().length > 0 && !(i.complete && i.naturalWidth > 0))
    .map((i) => i.className || i.id || i.alt)"""
RUN_DONE = """(n) => { const r = document.getElementById('results');
    return Number(r.dataset.runs) > n && r.dataset.state === 'idle'; }"""
CARDS = """() => [...document.querySelectorAll('#results .card')].map((c) => {
    const q = (s) => c.querySelector(s);
    const shown = (s) => !q(s).hidden && q(s).getClientRects().length > 0;
    return {
      name: q('.filename').textContent, state: c.dataset.state, method: c.dataset.method,
      verdict: c.dataset.verdict || '', verdictText: shown('.verdict') ? q('.verdict').textContent : '',
      score: q('.score').dataset.score, shownScore: q('.score').textContent,
      model: shown('.details') ? q('.used-model').textContent : '',
      dims: shown('.details') ? q('.dims').textContent : '',
      error: shown('.card-error') ? q('.card-error').textContent : '',
      heatWidth: shown('.heatmap') ? q('.heatmap').naturalWidth : 0,
      previewWidth: shown('.original') ? q('.original').naturalWidth : 0,
      visibleImages: [...c.querySelectorAll('img')].filter((i) => i.getClientRects().length > 0).length,
    };
  })"""


def _api_score(base: str, model: str, path: Path) -> float:
    import httpx

    r = httpx.post(f"{base}/v1/score?model={model}", files={"image": (path.name, path.read_bytes(), "image/png")})
    return r.json()["results"][0]["score"]


class Page:
    """The page under test, with the few waits every step needs."""

    def __init__(self, page):
        self.page = page
        self.console_errors: list[str] = []
        self.requests: list[str] = []
        page.on("pageerror", lambda e: self.console_errors.append(f"pageerror: {e}"))
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        page.on("request", lambda r: r.method == "POST" and self.requests.append(r.url))

    def act(self, action) -> list[dict]:
        """Run `action` (upload, select, ...), wait for the page's run it starts to finish, return the cards."""
        runs = int(self.page.get_attribute("#results", "data-runs"))
        action()
        self.page.wait_for_function(RUN_DONE, arg=runs, timeout=60_000)
        assert self.page.evaluate(BROKEN_IMAGES) == []
        return self.page.evaluate(CARDS)


def test_page_several_images_threshold_rescore_and_errors(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="python playwright not installed")
    base, _ = server
    photos = []
    for i, size in enumerate((120, 96, 80)):
        photos.append(tmp_path / f"photo{i}.png")
        photos[-1].write_bytes(png_bytes(size, seed=4 + i))
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is text")

    with sync_api.sync_playwright() as p:
        exe = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            ui = Page(browser.new_page(viewport={"width": 1100, "height": 900}))
            page = ui.page
            _check_first_load(ui, base)
            _check_several_and_threshold(ui, base, photos, bad)
            _check_rescore(ui, base, photos)
            page.screenshot(path=str(Path(os.environ.get("METAIQA_SCREENSHOT_DIR", tmp_path)) / "page.png"),
                            full_page=True)
            _check_error_then_good(ui, photos[0], bad)
            # the only console errors are Chromium's notes on the deliberate 415 answers
            assert [e for e in ui.console_errors if "status of 415" not in e] == [], ui.console_errors
        finally:
            browser.close()


def _check_first_load(ui: Page, base: str) -> None:
    page = ui.page
    page.goto(base + "/")
    # models come from /v1/models: the default first and selected, then the other bundled one
    page.wait_for_function("document.querySelectorAll('#model option').length === 4")
    names = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    assert names == ["metaiqa-default", "metaiqa-prior", "second", "tiny"]
    assert page.eval_on_selector("#model", "s => s.value") == "metaiqa-default"
    assert "human opinion scores" in page.inner_text("#model-description")
    page.select_option("#model", "metaiqa-prior")  # no image yet: nothing to re-score
    assert "meta-learned prior" in page.inner_text("#model-description")
    # nothing scored yet: no result card, no image at all (the empty card with broken-image icons)
    assert page.eval_on_selector("#results", "r => r.children.length") == 0
    assert page.evaluate("[...document.images].filter(i => i.getClientRects().length > 0).length") == 0
    assert page.evaluate(BROKEN_IMAGES) == []
    assert page.eval_on_selector("#summary", "s => getComputedStyle(s).display") == "none"
    assert page.eval_on_selector("#method", "s => s.value") == "views"  # local scores by default
    assert "fixed 0–1" in page.inner_text("#heatmap-caption")
    icon = page.evaluate("fetch('/favicon.ico').then(r => [r.status, r.headers.get('content-type')])")
    assert icon == [200, "image/x-icon"]
    assert page.evaluate("document.querySelector('link[rel=icon]').href").endswith("/static/favicon.svg")
    assert ui.console_errors == [] and ui.requests == []


def _check_several_and_threshold(ui: Page, base: str, photos: list[Path], bad: Path) -> None:
    page = ui.page
    page.select_option("#model", "second")
    cards = ui.act(lambda: page.set_input_files("#file", [str(p) for p in photos] + [str(bad)]))
    assert [c["name"] for c in cards] == [p.name for p in photos] + [bad.name]
    good, broken = cards[:3], cards[3]
    for card, photo, size in zip(good, photos, (120, 96, 80), strict=True):
        assert card["state"] == "done" and card["method"] == "views" and card["error"] == ""
        assert card["model"] == "second" and card["dims"] == f"{size} × {size}"
        assert float(card["score"]) == pytest.approx(_api_score(base, "second", photo), abs=1e-6)
        assert float(card["shownScore"]) == pytest.approx(float(card["score"]), abs=5e-4)
        assert card["heatWidth"] == size and card["previewWidth"] == size  # decoded, not broken
        assert card["verdict"] == "" and card["verdictText"] == ""  # no threshold yet
    assert broken["state"] == "error" and broken["visibleImages"] == 0 and broken["dims"] == ""
    assert "415" in broken["error"] and "not a recognised image" in broken["error"]
    status = page.inner_text("#status")
    assert "3 of 4 images scored" in status and "notes.png" in status
    assert "1 could not be scored" in page.inner_text("#summary")

    # the threshold needs no new request: verdicts follow the typed value (a score at it passes)
    scores = sorted({c["score"] for c in good}, key=float)
    assert len(scores) > 1, f"the three photos should not score alike: {scores}"
    sent = len(ui.requests)
    page.fill("#threshold", scores[-1])
    verdicts = [c["verdict"] for c in page.evaluate(CARDS)]
    assert verdicts == [("pass" if float(c["score"]) >= float(scores[-1]) else "fail") for c in good] + [""]
    assert "pass" in verdicts and "fail" in verdicts
    n_pass = verdicts.count("pass")
    assert f"{n_pass} pass, {3 - n_pass} fail at threshold {float(scores[-1])}" in page.inner_text("#summary")
    page.fill("#threshold", "1.5")  # out of range: said so, and no verdict at all
    assert all(c["verdictText"] == "" for c in page.evaluate(CARDS))
    assert "not a number from 0 to 1" in page.inner_text("#threshold-hint")
    page.fill("#threshold", scores[-1])
    assert len(ui.requests) == sent


def _check_rescore(ui: Page, base: str, photos: list[Path]) -> None:
    page = ui.page
    before = page.evaluate(CARDS)
    sent = len(ui.requests)
    cards = ui.act(lambda: page.select_option("#method", "gradient"))
    new = ui.requests[sent:]
    # another method redraws the heatmaps only: the scores stand
    assert new and all("/v1/heatmap?model=second&method=gradient" in u for u in new), new
    assert len(new) == 3  # the unreadable file is not sent again
    assert [c["score"] for c in cards] == [c["score"] for c in before]
    assert [c["method"] for c in cards[:3]] == ["gradient"] * 3 and all(c["heatWidth"] for c in cards[:3])

    sent = len(ui.requests)
    threshold = page.input_value("#threshold")
    cards = ui.act(lambda: page.select_option("#model", "tiny"))
    new = ui.requests[sent:]
    assert sum("/v1/score?model=tiny" in u for u in new) == 4
    assert sum("/v1/heatmap?model=tiny&method=gradient" in u for u in new) == 3
    for card, photo in zip(cards[:3], photos, strict=True):
        assert card["model"] == "tiny" and card["state"] == "done" and card["method"] == "gradient"
        assert float(card["score"]) == pytest.approx(_api_score(base, "tiny", photo), abs=1e-6)
        # the verdicts are those of the new scores
        assert card["verdict"] == ("pass" if float(card["score"]) >= float(threshold) else "fail")
    assert [c["score"] for c in cards[:3]] != [c["score"] for c in before[:3]]


def _check_error_then_good(ui: Page, photo: Path, bad: Path) -> None:
    page = ui.page
    cards = ui.act(lambda: page.set_input_files("#file", str(bad)))
    assert len(cards) == 1 and cards[0]["state"] == "error" and cards[0]["name"] == "notes.png"
    assert cards[0]["shownScore"] == "–" and cards[0]["model"] == "" and cards[0]["visibleImages"] == 0
    assert page.eval_on_selector("#status", "s => s.classList.contains('error')")
    assert "415" in page.inner_text("#status") and "not a recognised image" in page.inner_text("#status")
    # a good image next: nothing of the failed file (or of the earlier set) stays
    cards = ui.act(lambda: page.set_input_files("#file", str(photo)))
    assert len(cards) == 1 and cards[0]["name"] == photo.name and cards[0]["state"] == "done"
    assert cards[0]["error"] == "" and cards[0]["dims"] == "120 × 120" and cards[0]["heatWidth"] == 120
    assert not page.eval_on_selector("#status", "s => s.classList.contains('error')")
    assert page.inner_text("#status") == "done: 1 of 1 image scored"
    assert "could not" not in page.inner_text("#summary")
