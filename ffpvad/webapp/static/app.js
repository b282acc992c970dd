// The operator's page: Detect, Adapt, Results, Jobs.  Plain JavaScript, no build step, nothing from a CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";
const W = 1000, H = 160;

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { detail: text }; }
  if (!response.ok) throw new Error((data && data.detail) || response.statusText);
  return data;
}

const post = (path, body) => api(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                         body: JSON.stringify(body || {}) });

function showError(id, error) {
  const el = $(id);
  el.textContent = error ? String(error.message || error) : "";
  el.classList.toggle("hidden", !error);
}

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== "") node.textContent = text;
  return node;
}

const pct = (x) => (x === null || x === undefined ? "-" : (100 * x).toFixed(2) + "%");

// --- tabs ------------------------------------------------------------------------------------------------------
document.querySelectorAll("nav .tab").forEach((button) => button.addEventListener("click", () => {
  document.querySelectorAll("nav .tab").forEach((b) => b.classList.toggle("active", b === button));
  document.querySelectorAll(".panel").forEach((p) => p.classList.toggle("active", p.id === "tab-" + button.dataset.tab));
  if (button.dataset.tab === "results") loadResults();
  if (button.dataset.tab === "jobs") loadJobs();
}));

// --- lists -----------------------------------------------------------------------------------------------------
function describeCheckpoint(c) {
  if (c.error) return `${c.path} (unreadable: ${c.error})`;
  const auc = c.auc ? `, AUC ${pct(c.auc)}` : "";
  return `${c.path}: ${c.dataset}, ${c.model}, ${c.img_size} px, step ${c.step}${auc}`;
}

async function loadCheckpoints(select) {
  const list = await api("/api/checkpoints");
  for (const id of ["checkpoint", "base"]) {
    const box = $(id);
    const keep = box.value;
    [...box.querySelectorAll("option[data-ckpt]")].forEach((o) => o.remove());
    [...box.options].filter((o) => o.value).forEach((o) => o.remove());
    for (const c of list) {
      if (c.error || !c.detectable) continue;  // detect and adapt both need a frame-prediction checkpoint
      const option = el("option", { value: c.path, "data-ckpt": "1" }, describeCheckpoint(c));
      box.appendChild(option);
    }
    if (keep) box.value = keep;
  }
  if (select) $("checkpoint").value = select;
  return list;
}

async function loadVideos(select) {
  const list = await api("/api/videos");
  for (const id of ["video", "footage", "calibration"]) {
    const box = $(id);
    const kept = [...box.selectedOptions].map((o) => o.value);
    box.innerHTML = "";
    if (id === "calibration") box.append(el("option", { value: "" }, "the checkpoint's calibration or training data"));
    for (const v of list) {
      const value = JSON.stringify({ root: v.root, path: v.path });
      const option = el("option", { value }, `${v.root === "uploads" ? "uploaded" : v.root}: ${v.path}`);
      option.selected = kept.includes(value);
      box.appendChild(option);
    }
  }
  if (select) $("video").value = JSON.stringify(select);
  return list;
}

async function upload(kind, file) {
  return api(`/api/upload/${kind}?name=${encodeURIComponent(file.name)}`, { method: "PUT", body: file });
}

$("checkpoint-file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  try { const c = await upload("checkpoint", file); await loadCheckpoints(c.path); showError("detect-error", null); }
  catch (e) { showError("detect-error", e); }
});

$("video-file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  try { const v = await upload("video", file); await loadVideos({ root: v.root, path: v.path }); showError("detect-error", null); }
  catch (e) { showError("detect-error", e); }
});

$("footage-file").addEventListener("change", async (event) => {
  try {
    const chosen = [];
    for (const file of event.target.files) { const v = await upload("video", file); chosen.push(JSON.stringify({ root: v.root, path: v.path })); }
    await loadVideos();
    [...$("footage").options].forEach((o) => { if (chosen.includes(o.value)) o.selected = true; });
    showError("adapt-error", null);
  } catch (e) { showError("adapt-error", e); }
});

// --- jobs ------------------------------------------------------------------------------------------------------
function progressText(job) {
  const p = job.progress;
  if (!p) return job.stage_names.length > 1 ? `${job.stage_names[job.stage]}...` : "starting...";
  const rate = p.rate ? `${p.rate.toFixed(1)} ${p.unit}/s` : "";
  return `${p.desc ? p.desc + ": " : ""}${p.n}/${p.total} ${rate}, ETA ${p.eta}`;
}

async function follow(job, ids, onDone) {
  $(ids.box).classList.remove("hidden");
  $(ids.stop).onclick = () => post(`/api/jobs/${job.id}/stop`).catch(() => {});
  for (;;) {
    job = await api(`/api/jobs/${job.id}`);
    const p = job.progress;
    $(ids.bar).value = p && p.total ? p.n / p.total : 0;
    $(ids.text).textContent = progressText(job);
    if (ids.stage) $(ids.stage).textContent = `stage ${job.stage + 1} of ${job.stage_names.length}: ${job.stage_names[Math.min(job.stage, job.stage_names.length - 1)]}`;
    if (job.state !== "running") break;
    await new Promise((r) => setTimeout(r, 400));
  }
  $(ids.box).classList.add("hidden");
  if (job.state === "done") { await onDone(job); showError(ids.error, null); }
  else showError(ids.error, `${job.state}: ${job.error}`);
  return job;
}

$("run").addEventListener("click", async () => {
  showError("detect-error", null);
  $("detect-result").classList.add("hidden");  // the previous result goes until this one is ready
  current = null;
  try {
    const body = { checkpoint: $("checkpoint").value, video: JSON.parse($("video").value || "null"),
                   norm: $("norm").value, fpr: $("fpr").value,
                   calibration: $("calibration").value ? JSON.parse($("calibration").value) : null };
    const job = await post("/api/detect", body);
    $("run").disabled = true;
    await follow(job, { box: "detect-job", bar: "progress", text: "progress-text", stop: "stop", error: "detect-error" },
                 (done) => showResult(done.outputs.run));
  } catch (e) { showError("detect-error", e); }
  finally { $("run").disabled = false; }
});

$("adapt-run").addEventListener("click", async () => {
  showError("adapt-error", null);
  $("adapt-done").classList.add("hidden");
  try {
    const body = { name: $("adapt-name").value, base: $("base").value || null, iters: parseInt($("iters").value, 10),
                   footage: [...$("footage").selectedOptions].map((o) => JSON.parse(o.value)) };
    const job = await post("/api/adapt", body);
    await followAdapt(job);
  } catch (e) { showError("adapt-error", e); }
});

async function followAdapt(job) {
  $("adapt-run").disabled = true;
  try {
    await follow(job, { box: "adapt-job", bar: "adapt-progress", text: "adapt-progress-text", stop: "adapt-stop",
                        stage: "adapt-stage", error: "adapt-error" }, async (done) => {
      await loadCheckpoints();
      const msg = $("adapt-done");
      msg.textContent = `done: ${done.outputs.checkpoint} is in the Detect list (calibrated on ${done.outputs.calibration}).`;
      msg.classList.remove("hidden");
    });
  } finally { $("adapt-run").disabled = false; }
}

async function loadJobs() {
  const body = $("jobs").querySelector("tbody");
  body.innerHTML = "";
  for (const job of await api("/api/jobs")) {
    const row = el("tr", { "data-job": job.id });
    row.append(el("td", {}, job.title), el("td", { class: "state" }, job.state),
               el("td", {}, `${Math.min(job.stage + 1, job.stage_names.length)} of ${job.stage_names.length}: ${job.stage_names[Math.min(job.stage, job.stage_names.length - 1)]}`),
               el("td", {}, job.error || ""));
    const cell = el("td");
    if (job.state === "running") {
      const b = el("button", {}, "Stop"); b.onclick = () => post(`/api/jobs/${job.id}/stop`).then(loadJobs); cell.append(b);
    } else if (job.kind === "adapt" && ["stopped", "interrupted", "failed"].includes(job.state)) {
      const b = el("button", { class: "resume" }, "Resume");
      b.onclick = async () => {
        try { const j = await post(`/api/jobs/${job.id}/resume`); loadJobs(); followAdapt(j); }
        catch (e) { alert(`cannot resume: ${e.message}`); }
      };
      cell.append(b);
    }
    row.append(cell);
    body.append(row);
  }
}

// --- a detection result ----------------------------------------------------------------------------------------
let current = null;

async function showResult(run) {
  const data = await api(`/api/results/${encodeURIComponent(run)}`);
  current = data;
  $("detect-result").classList.remove("hidden");
  const video = $("player");
  video.src = `/files/${encodeURIComponent(run)}/annotated.mp4?t=${Date.now()}`;
  video.load();
  const warnings = $("warnings");
  warnings.innerHTML = "";
  for (const w of (data.summary && data.summary.warnings) || []) warnings.append(el("li", {}, w));
  drawTimeline(data);
  const s = data.summary || {};
  $("detect-summary").textContent = `${s.frames} frames (${s.predicted_frames} predicted), ${s.flagged_frames} flagged in ${s.events} events; rule ${s.norm}, threshold ${s.threshold}; ${s.frames_per_second} frames/s` + (s.auc !== undefined && s.auc !== null ? `; AUC ${pct(s.auc)}` : "");
  const tbody = $("events").querySelector("tbody");
  tbody.innerHTML = "";
  data.events.forEach((e, k) => {
    const row = el("tr", { "data-start": e.start_s });
    row.append(el("td", {}, String(k + 1)), el("td", {}, e.start_s.toFixed(2)), el("td", {}, e.end_s.toFixed(2)),
               el("td", {}, e.peak_score.toFixed(3)), el("td", {}, String(e.flagged_frames)));
    row.addEventListener("click", () => seek(e.start_s));
    tbody.append(row);
  });
  const links = $("downloads");
  links.innerHTML = "Downloads: ";
  for (const name of ["annotated.mp4", "scores.csv", "events.json", "summary.json", "scores.png"]) {
    if (!data.files.includes(name)) continue;
    links.append(el("a", { href: `/files/${encodeURIComponent(run)}/${name}`, download: name, class: "download" }, name), " ");
  }
}

function seek(t) {
  const video = $("player");
  video.currentTime = t;
  moveCursor(t);
}

function timeRange(scores) {
  const t0 = scores.length ? scores[0].time_s : 0, t1 = scores.length ? scores[scores.length - 1].time_s : 1;
  return [t0, Math.max(t1, t0 + 1e-6)];
}

function drawTimeline(data) {
  const scores = data.scores;
  const [t0, t1] = timeRange(scores);
  const x = (t) => ((t - t0) / (t1 - t0)) * W, y = (s) => H - 8 - s * (H - 16);
  $("score-line").setAttribute("points", scores.map((r) => `${x(r.time_s).toFixed(2)},${y(r.score).toFixed(2)}`).join(" "));
  const threshold = data.summary ? data.summary.threshold : 0.5;
  $("threshold").setAttribute("y1", y(threshold));
  $("threshold").setAttribute("y2", y(threshold));
  const spans = $("flagged-spans");
  spans.innerHTML = "";
  const dt = scores.length > 1 ? (t1 - t0) / (scores.length - 1) : 0;
  for (const e of data.events) {
    const r = document.createElementNS(SVG_NS, "rect");
    r.setAttribute("x", x(e.start_s)); r.setAttribute("y", 0); r.setAttribute("height", H);
    r.setAttribute("width", Math.max(2, x(e.end_s + dt) - x(e.start_s)));
    spans.append(r);
  }
  moveCursor(0);
}

function moveCursor(t) {
  if (!current) return;
  const [t0, t1] = timeRange(current.scores);
  const cx = Math.min(W, Math.max(0, ((t - t0) / (t1 - t0)) * W));
  $("cursor").setAttribute("x1", cx);
  $("cursor").setAttribute("x2", cx);
}

$("timeline").addEventListener("click", (event) => {
  if (!current || !current.scores.length) return;
  const box = $("timeline").getBoundingClientRect();
  const [t0, t1] = timeRange(current.scores);
  const t = t0 + ((event.clientX - box.left) / box.width) * (t1 - t0);
  // the nearest predicted frame's time
  let best = current.scores[0];
  for (const r of current.scores) if (Math.abs(r.time_s - t) < Math.abs(best.time_s - t)) best = r;
  seek(best.time_s);
});

$("player").addEventListener("timeupdate", () => moveCursor($("player").currentTime));

// --- results ---------------------------------------------------------------------------------------------------
let resultList = [];

async function loadResults() {
  resultList = await api("/api/results");
  const body = $("results").querySelector("tbody");
  body.innerHTML = "";
  for (const r of resultList) {
    const row = el("tr", { "data-run": r.run });
    const flagged = r.kind === "detect" ? `${r.flagged_frames} of ${r.frames} (${r.events} events)` : "";
    row.append(el("td", {}, r.run), el("td", {}, r.kind), el("td", {}, pct(r.micro_auc ?? r.auc)),
               el("td", {}, pct(r.macro_auc)), el("td", {}, pct(r.eer)), el("td", {}, r.label_source || ""),
               el("td", {}, r.selection || ""), el("td", {}, r.video || r.checkpoint || ""), el("td", {}, flagged));
    row.addEventListener("click", () => { $("left").value = r.run; renderSide("left"); });
    body.append(row);
  }
  for (const side of ["left", "right"]) {
    const box = $(side);
    const keep = box.value;
    box.innerHTML = "";
    box.append(el("option", { value: "" }, "(none)"));
    for (const r of resultList) box.append(el("option", { value: r.run }, r.run));
    box.value = keep;
  }
}

async function renderSide(side) {
  const view = $(`${side}-view`);
  view.innerHTML = "";
  const run = $(side).value;
  if (!run) return;
  const data = await api(`/api/results/${encodeURIComponent(run)}`);
  const facts = data.metrics || data.summary || {};
  const table = el("table");
  for (const key of ["micro_auc", "macro_auc", "eer", "auc", "label_source", "selection", "checkpoint", "norm",
                     "frames", "flagged_frames", "events", "frames_per_second"]) {
    if (facts[key] === undefined || facts[key] === null) continue;
    const value = ["micro_auc", "macro_auc", "eer", "auc"].includes(key) ? pct(facts[key]) : String(facts[key]);
    const row = el("tr"); row.append(el("th", {}, key), el("td", {}, value)); table.append(row);
  }
  view.append(el("h3", {}, run), table);
  const curves = Object.entries(data.curves || {});
  if (curves.length) view.append(el("h4", {}, "training curves"));
  for (const [name, points] of curves) view.append(curveChart(name, points));
  for (const name of data.files.filter((f) => f.endsWith(".png"))) {
    view.append(el("img", { src: `/files/${encodeURIComponent(run)}/${name}`, alt: name }));
  }
}

function curveChart(name, points) {
  // one series against the training step, scaled to its own range, with its last value
  const box = el("div", { class: "curve", "data-curve": name });
  const steps = points.map((p) => p[0]), values = points.map((p) => p[1]);
  const [s0, s1] = [Math.min(...steps), Math.max(...steps)], [v0, v1] = [Math.min(...values), Math.max(...values)];
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", "0 0 300 70");
  const line = document.createElementNS(SVG_NS, "polyline");
  line.setAttribute("points", points.map(([s, v]) => `${(((s - s0) / ((s1 - s0) || 1)) * 296 + 2).toFixed(1)},${(66 - ((v - v0) / ((v1 - v0) || 1)) * 62).toFixed(1)}`).join(" "));
  svg.append(line);
  const last = values[values.length - 1];
  box.append(el("span", {}, `${name}: ${last.toPrecision(4)} at step ${steps[steps.length - 1]} (range ${v0.toPrecision(3)}-${v1.toPrecision(3)})`), svg);
  return box;
}

$("left").addEventListener("change", () => renderSide("left"));
$("right").addEventListener("change", () => renderSide("right"));

// --- start -----------------------------------------------------------------------------------------------------
(async () => {
  let running = null;
  try {
    await Promise.all([loadCheckpoints(), loadVideos()]);
    running = (await api("/api/jobs")).find((j) => j.state === "running");
  } catch (e) { showError("detect-error", e); }
  document.body.dataset.ready = "1";
  if (running && running.kind === "adapt") {  // a reload keeps following the running job
    document.querySelector('nav .tab[data-tab="adapt"]').click();
    followAdapt(running);
  } else if (running) {
    $("run").disabled = true;
    follow(running, { box: "detect-job", bar: "progress", text: "progress-text", stop: "stop", error: "detect-error" },
           (done) => showResult(done.outputs.run)).finally(() => { $("run").disabled = false; });
  }
})();
