// metaiqa web page: pick/drop images -> POST /v1/score and /v1/heatmap per image -> one result card each.
// No dependencies. Every run (new files, another model, another heatmap method) gets a number and an
// AbortController: a newer run cancels the older one's requests and nothing stale is ever drawn.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_FILES = 50;
const SCORE_CONCURRENCY = 3;
const state = { cards: [], run: 0, controller: null };

// What each heatmap shows: the same words as the README and metaiqa/inference/heatmap.py LEGENDS.
const HEATMAP_CAPTIONS = {
  views:
    "Local scores: each region shows the model's own score for the views covering it, on the fixed 0–1 " +
    "score scale (red = 0, bad; yellow = 0.5; blue = 1, good); comparable between images.",
  gradient:
    "Sensitivity |∂score/∂pixel|, relative to this image (red = its most sensitive pixels): where a change " +
    "would move the score most, not where damage is; not comparable between images.",
  gradcam:
    "Grad-CAM of the last stage, relative to this image (red = the regions carrying the score most); " +
    "coarse; not comparable between images.",
};
const METHOD_NAMES = { views: "local scores", gradient: "gradient sensitivity", gradcam: "Grad-CAM" };

function headers(extra = {}) {
  const key = $("apikey").value.trim();
  return key ? { ...extra, "X-API-Key": key } : extra;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    return `${resp.status}: ${body.detail}`;
  } catch (_) {
    return `${resp.status} ${resp.statusText}`;
  }
}

function policyText(pre) {
  if (!pre || !pre.policy) return "";
  if (pre.policy === "views") return `whole image at ${pre.scale ?? 384} px short side, ${pre.size ?? 224}² views`;
  if (pre.policy === "center_crop") return `one ${pre.size ?? 224}² centre crop`;
  return pre.policy;
}

function showModelDescription() {
  const opt = $("model").selectedOptions[0];
  $("model-description").textContent = opt ? opt.dataset.description || "" : "";
}

function showMethodCaption() {
  $("heatmap-caption").textContent = HEATMAP_CAPTIONS[$("method").value] || "";
}

async function loadModels() {
  const select = $("model");
  const resp = await fetch("/v1/models", { headers: headers() });
  if (!resp.ok) {
    setStatus(`cannot list models (${await errorText(resp)})`, true);
    return;
  }
  const body = await resp.json();
  select.replaceChildren();
  // the default first, then the bundled models, then the others (the API lists them by name)
  const rank = (m) => (m.default ? 0 : m.bundled ? 1 : 2);
  const models = [...body.models].sort((a, b) => rank(a) - rank(b) || a.name.localeCompare(b.name));
  for (const m of models) {
    const opt = document.createElement("option");
    opt.value = m.name;
    opt.textContent = m.default ? `${m.name} (default)` : m.name;
    opt.selected = m.default;
    opt.dataset.description = [m.description, policyText(m.preprocess)].filter(Boolean).join(" — ");
    opt.title = opt.dataset.description;
    select.append(opt);
  }
  showModelDescription();
  if (!body.models.length) setStatus("the server has no model loaded; see /readyz", true);
}

// ------------------------------------------------------------------------------------------ threshold

/** The threshold in [0, 1], or null when the field is empty or invalid (then no card shows a verdict). */
function threshold() {
  const input = $("threshold");
  const text = input.value.trim();
  const t = Number(text);
  const valid = text === "" || (Number.isFinite(t) && t >= 0 && t <= 1);
  input.classList.toggle("invalid", !valid);
  input.setCustomValidity(valid ? "" : "a number from 0 to 1");
  $("threshold-hint").textContent = valid
    ? "a score at or above it passes (like metaiqa gate --min-score)"
    : `"${text}" is not a number from 0 to 1; no verdicts shown`;
  $("threshold-hint").classList.toggle("error", !valid);
  return text === "" || !valid ? null : t;
}

function applyThreshold() {
  const t = threshold();
  let pass = 0;
  let fail = 0;
  for (const card of state.cards) {
    const verdict = card.el.querySelector(".verdict");
    const ok = card.score !== null && t !== null;
    verdict.hidden = !ok;
    card.el.dataset.verdict = ok ? (card.score >= t ? "pass" : "fail") : "";
    if (!ok) continue;
    verdict.textContent = card.score >= t ? `PASS ≥ ${t}` : `FAIL < ${t}`;
    verdict.className = `verdict ${card.el.dataset.verdict}`;
    card.score >= t ? pass++ : fail++;
  }
  summarise(t, pass, fail);
}

function summarise(t, pass, fail) {
  const scored = state.cards.filter((c) => c.score !== null).length;
  const failed = state.cards.filter((c) => c.error !== null).length;
  const parts = [];
  if (scored) parts.push(t === null ? `${scored} scored` : `${pass} pass, ${fail} fail at threshold ${t}`);
  if (failed) parts.push(`${failed} could not be scored`);
  $("summary").textContent = parts.join("; ");
  $("summary").hidden = !parts.length;
}

// ------------------------------------------------------------------------------------------ cards

function newCard(file) {
  const el = $("card-template").content.firstElementChild.cloneNode(true);
  el.querySelector(".filename").textContent = file.name;
  $("results").append(el);
  return { el, file, score: null, error: null, previewUrl: null, heatUrl: null };
}

function dropCards() {
  for (const card of state.cards) {
    if (card.previewUrl) URL.revokeObjectURL(card.previewUrl);
    if (card.heatUrl) URL.revokeObjectURL(card.heatUrl);
  }
  state.cards = [];
  $("results").replaceChildren();
}

/** Back to "scoring": nothing from an earlier model or file stays on the card. */
function resetCard(card) {
  const q = (sel) => card.el.querySelector(sel);
  card.score = null;
  card.error = null;
  card.el.dataset.state = "scoring";
  q(".score").textContent = "…";
  q(".score").dataset.score = "";
  q(".bar-fill").style.width = "0";
  q(".card-error").hidden = true;
  q(".details").hidden = true;
  resetHeatmap(card, "Heatmap: waiting for the score");
}

function resetHeatmap(card, note) {
  const img = card.el.querySelector(".heatmap");
  img.hidden = true;
  img.removeAttribute("src");
  card.el.dataset.method = "";
  if (card.score !== null) card.el.dataset.state = "scored";
  card.el.querySelector(".heatmap-note").textContent = note;
  if (card.heatUrl) URL.revokeObjectURL(card.heatUrl);
  card.heatUrl = null;
}

function failCard(card, message) {
  card.error = message;
  card.el.dataset.state = "error";
  const q = (sel) => card.el.querySelector(sel);
  q(".score").textContent = "–";
  q(".card-error").textContent = `could not score: ${message}`;
  q(".card-error").hidden = false;
  q(".details").hidden = true;
}

/** Shows an image only once the browser decoded it: never a broken-image icon. */
function showImage(img, url, note, failText) {
  img.hidden = true;
  img.onload = () => (img.hidden = false);
  img.onerror = () => {
    img.hidden = true;
    img.removeAttribute("src");
    note.textContent = failText;
  };
  img.src = url;
}

function showScore(card, model, r) {
  const q = (sel) => card.el.querySelector(sel);
  card.score = r.score;
  q(".score").textContent = r.score.toFixed(3);
  q(".score").dataset.score = String(r.score);
  q(".bar-fill").style.width = `${Math.round(r.score * 100)}%`;
  q(".used-model").textContent = model;
  q(".dims").textContent = `${r.width} × ${r.height}`;
  q(".latency").textContent = `${r.latency_ms.toFixed(0)} ms`;
  q(".details").hidden = false;
  card.el.dataset.state = "scored";
  if (!card.previewUrl) {
    card.previewUrl = URL.createObjectURL(card.file);
    showImage(q(".original"), card.previewUrl, q(".preview-note"), "Image (this browser cannot display the format)");
  }
}

// ------------------------------------------------------------------------------------------ requests

function form(file) {
  const f = new FormData();
  f.append("image", file, file.name);
  return f;
}

async function scoreCard(card, job) {
  const resp = await fetch(`/v1/score?model=${encodeURIComponent(job.model)}`, {
    method: "POST", body: form(card.file), headers: headers(), signal: job.signal,
  });
  if (!job.live()) return;
  if (!resp.ok) {
    failCard(card, await errorText(resp));
    return;
  }
  const body = await resp.json();
  if (job.live()) showScore(card, body.model, body.results[0]);
}

async function heatmapCard(card, job) {
  const method = job.method;
  resetHeatmap(card, `Heatmap (${METHOD_NAMES[method] || method}) …`);
  const url = `/v1/heatmap?model=${encodeURIComponent(job.model)}&method=${encodeURIComponent(method)}`;
  const resp = await fetch(url, {
    method: "POST", body: form(card.file), headers: headers({ Accept: "image/png" }), signal: job.signal,
  });
  if (!job.live()) return;
  const note = card.el.querySelector(".heatmap-note");
  if (!resp.ok) {
    const why = await errorText(resp);
    note.textContent = `heatmap failed: ${why}`;
    job.errors.push(`heatmap of ${card.file.name} failed: ${why}`);
    return;
  }
  const blob = await resp.blob();
  if (!job.live()) return;
  const shown = resp.headers.get("X-Heatmap-Method") || method;
  card.heatUrl = URL.createObjectURL(blob);
  card.el.dataset.method = shown;
  note.textContent = `Heatmap: ${METHOD_NAMES[shown] || shown}`;
  note.title = HEATMAP_CAPTIONS[shown] || "";
  showImage(card.el.querySelector(".heatmap"), card.heatUrl, note, "heatmap could not be displayed");
  card.el.dataset.state = "done";
}

/** Runs `fn` over `items`, at most `n` at a time. */
async function pool(items, n, fn) {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
}

// ------------------------------------------------------------------------------------------ runs

function startJob() {
  if (state.controller) state.controller.abort();
  state.controller = new AbortController();
  const id = ++state.run;
  $("results").dataset.state = "busy";
  return {
    model: $("model").value, method: $("method").value, signal: state.controller.signal,
    live: () => id === state.run, errors: [],
  };
}

function finishJob(job) {
  if (!job.live()) return;
  applyThreshold();
  const failed = state.cards.filter((c) => c.error !== null);
  const done = state.cards.length - failed.length;
  const problems = [...failed.map((c) => `could not score ${c.file.name}: ${c.error}`), ...job.errors];
  const text = `done: ${done} of ${state.cards.length} image${state.cards.length === 1 ? "" : "s"} scored`;
  setStatus(problems.length ? `${text}; ${problems.join("; ")}` : text, problems.length > 0);
  $("results").dataset.state = "idle";
  $("results").dataset.runs = String(Number($("results").dataset.runs) + 1);
}

/** Scores every card (unless `heatmapsOnly`), then draws the heatmaps one after another. */
async function run({ heatmapsOnly = false } = {}) {
  if (!state.cards.length) return;
  const job = startJob();
  const n = state.cards.length;
  try {
    if (!heatmapsOnly) {
      state.cards.forEach(resetCard); // nothing from the previous model stays while this one runs
      applyThreshold();
      setStatus(`scoring ${n} image${n === 1 ? "" : "s"} with ${job.model} …`);
      await pool(state.cards, SCORE_CONCURRENCY, async (card) => {
        if (!job.live()) return; // a newer run owns the cards now
        await scoreCard(card, job);
        if (job.live()) applyThreshold();
      });
      if (!job.live()) return;
    }
    const scored = state.cards.filter((c) => c.score !== null);
    scored.forEach((card) => resetHeatmap(card, "Heatmap: queued"));
    for (const [i, card] of scored.entries()) {
      if (!job.live()) return;
      setStatus(`computing heatmap ${i + 1} of ${scored.length} (${METHOD_NAMES[job.method]}) …`);
      await heatmapCard(card, job);
    }
  } catch (e) {
    if (!job.live() || e.name === "AbortError") return;
    job.errors.push(`cannot reach the server: ${e.message || e}`);
  }
  finishJob(job);
}

function analyse(files) {
  const list = Array.from(files || []);
  if (!list.length) return;
  dropCards();
  state.cards = list.slice(0, MAX_FILES).map(newCard);
  if (list.length > MAX_FILES) setStatus(`only the first ${MAX_FILES} of ${list.length} files are scored`, true);
  run();
}

function setupDrop() {
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((ev) =>
    drop.addEventListener(ev, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    })
  );
  ["dragleave", "drop"].forEach((ev) =>
    drop.addEventListener(ev, (e) => {
      e.preventDefault();
      drop.classList.remove("over");
    })
  );
  drop.addEventListener("drop", (e) => analyse(e.dataTransfer.files));
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") $("file").click();
  });
  $("file").addEventListener("change", (e) => {
    analyse(e.target.files);
    e.target.value = ""; // choosing the same file again is a new run too
  });
  $("apikey").addEventListener("change", loadModels);
  $("model").addEventListener("change", () => {
    showModelDescription();
    run();
  });
  $("method").addEventListener("change", () => {
    showMethodCaption();
    // scores stay valid for another heatmap method, unless an interrupted run left some unscored
    const complete = state.cards.every((c) => c.score !== null || c.error !== null);
    run({ heatmapsOnly: complete });
  });
  $("threshold").addEventListener("input", applyThreshold);
}

setupDrop();
showMethodCaption();
loadModels().catch((e) => setStatus(`cannot reach the server: ${e}`, true));
