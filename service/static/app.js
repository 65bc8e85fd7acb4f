// metaiqa web page: pick/drop an image -> POST /v1/score and /v1/heatmap -> show both. No dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { objectUrls: [] };

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

function releaseUrls() {
  state.objectUrls.forEach((u) => URL.revokeObjectURL(u));
  state.objectUrls = [];
}

function objectUrl(blob) {
  const url = URL.createObjectURL(blob);
  state.objectUrls.push(url);
  return url;
}

async function analyse(file) {
  if (!file) return;
  state.file = file;
  releaseUrls();
  const model = $("model").value;
  const query = model ? `?model=${encodeURIComponent(model)}` : "";
  const form = () => {
    const f = new FormData();
    f.append("image", file, file.name);
    return f;
  };
  setStatus(`scoring ${file.name} …`);
  $("result").hidden = false;
  $("score").textContent = "…";
  $("score").dataset.score = "";
  $("original").src = objectUrl(file);
  $("heatmap").removeAttribute("src");

  const scoreResp = await fetch(`/v1/score${query}`, { method: "POST", body: form(), headers: headers() });
  if (!scoreResp.ok) {
    $("score").textContent = "–";
    setStatus(`could not score ${file.name}: ${await errorText(scoreResp)}`, true);
    return;
  }
  const body = await scoreResp.json();
  const r = body.results[0];
  $("score").textContent = r.score.toFixed(3);
  $("score").dataset.score = String(r.score);
  $("bar-fill").style.width = `${Math.round(r.score * 100)}%`;
  $("used-model").textContent = body.model;
  $("filename").textContent = r.filename;
  $("dims").textContent = `${r.width} × ${r.height}`;
  $("latency").textContent = `${r.latency_ms.toFixed(0)} ms`;
  setStatus(`computing heatmap …`);

  const method = $("method").value;
  const sep = query ? "&" : "?";
  const heatResp = await fetch(`/v1/heatmap${query}${sep}method=${method}`, {
    method: "POST",
    body: form(),
    headers: headers({ Accept: "image/png" }),
  });
  if (!heatResp.ok) {
    setStatus(`score ok; heatmap failed: ${await errorText(heatResp)}`, true);
    return;
  }
  $("heatmap").src = objectUrl(await heatResp.blob());
  $("heatmap-caption").textContent = HEATMAP_CAPTIONS[heatResp.headers.get("X-Heatmap-Method") || method] || "Heatmap";
  setStatus(`done: ${file.name}`);
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
  drop.addEventListener("drop", (e) => analyse(e.dataTransfer.files[0]));
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") $("file").click();
  });
  $("file").addEventListener("change", (e) => analyse(e.target.files[0]));
  $("apikey").addEventListener("change", loadModels);
  $("model").addEventListener("change", showModelDescription);
  $("method").addEventListener("change", () => analyse(state.file));
}

setupDrop();
loadModels().catch((e) => setStatus(`cannot reach the server: ${e}`, true));
