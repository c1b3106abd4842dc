// esrgan serve: the page. Plain JavaScript, no build step. Server state arrives as JSON snapshots over
// server-sent events (/api/events); uploads are one multipart POST per file, so one bad file never stops the others.
"use strict";

const $ = (id) => document.getElementById(id);
const config = { models: [], max_upload_bytes: 0, max_pixels: 0 };
let pending = [];            // File objects picked but not started
const local = new Map();     // client-side cards: uploads in flight and rejected uploads (key -> {name, state, error})
let jobs = [];               // latest server snapshot
let selected = null;         // id of the job shown in the viewer
let localSeq = 0;
let receivedAt = performance.now();  // when the latest snapshot arrived: running jobs' elapsed time counts from it

// sizes in the server's units (MiB = 2^20 bytes); small files in kB or bytes, never "0.0 MB"
function mb(n) {
  if (n < 1024) return `${n} bytes`;
  if (n < 100 * 1024) return `${(n / 1024).toFixed(n < 10 * 1024 ? 1 : 0)} kB`;
  return (n / (1024 * 1024)).toFixed(n < 10 * 1024 * 1024 ? 1 : 0) + " MB";
}
function mpx(n) { return (n / 1e6).toFixed(1) + " MP"; }
function duration(s) {
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  if (s < 3600) return `${+(s / 60).toFixed(1)} min`;
  return `${+(s / 3600).toFixed(1)} h`;
}

// --- settings -------------------------------------------------------------------------------------------------------
// Called at start and again whenever the live connection comes back: a restarted server may have other models,
// limits or retention, and the page must not keep showing the old server's.
async function loadConfig() {
  const res = await fetch("/api/config");
  if (res.status === 401) { tokenNeeded(); throw new Error("token needed"); }
  needToken = false;
  Object.assign(config, await res.json());
  const model = $("model");
  const precision = $("precision");
  const keepModel = model.value;
  const keepPrecision = precision.value;
  model.replaceChildren();
  precision.replaceChildren();
  for (const m of config.models) {
    const opt = document.createElement("option");
    opt.value = m.name;
    opt.textContent = `${m.name} (x${m.scale})` + (m.available ? "" : " — not installed");
    opt.disabled = !m.available;
    opt.selected = m.available && m.name === (config.models.some((x) => x.available && x.name === keepModel)
      ? keepModel : config.default_model);
    model.append(opt);
  }
  for (const p of config.precisions) {
    const opt = document.createElement("option");
    opt.value = p;
    opt.textContent = p === "auto" ? "auto (fastest safe; fp32 for 16-bit)" : p;
    opt.selected = p === keepPrecision;
    precision.append(opt);
  }
  $("outscale").min = config.min_outscale;
  $("outscale").max = config.max_outscale;
  $("limits").textContent = `up to ${mb(config.max_upload_bytes)} and ${mpx(config.max_pixels)} per image`;
  $("keep").textContent = duration(config.keep_seconds);
  showModelNote();
}

function showModelNote() {
  const m = config.models.find((x) => x.name === $("model").value);
  $("model-note").textContent = m ? m.description + (m.hint ? ` (${m.hint})` : "") : "";
  $("outscale").placeholder = m ? `${m.scale} (model)` : "model";
}

// --- picking and uploading ------------------------------------------------------------------------------------------
function addFiles(files) {
  for (const f of files) {
    if (f.size > config.max_upload_bytes) {
      addLocal(f.name, "error", `file too large (${mb(f.size)}): the limit is ${mb(config.max_upload_bytes)}`);
    } else {
      pending.push(f);
    }
  }
  renderPending();
}

function renderPending() {
  const list = $("pending");
  list.replaceChildren();
  pending.forEach((f, i) => {
    const li = document.createElement("li");
    const label = document.createElement("span");
    label.textContent = `${f.name} · ${mb(f.size)}`;
    const remove = document.createElement("button");
    remove.textContent = "✕";
    remove.title = "remove";
    remove.onclick = () => { pending.splice(i, 1); renderPending(); };
    li.append(label, remove);
    list.append(li);
  });
  $("start").disabled = pending.length === 0;
  $("start").textContent = pending.length > 1 ? `Upscale ${pending.length} images` : "Upscale";
}

function addLocal(name, state, error) {
  const key = `local-${++localSeq}`;
  local.set(key, { id: key, name, state, error: error || "", local: true });
  render();
  return key;
}

async function start() {
  const files = pending;
  pending = [];
  renderPending();
  for (const file of files) {           // in order, so the queue keeps the order the files were picked
    const key = addLocal(file.name, "uploading");
    const form = new FormData();
    form.append("model", $("model").value);
    form.append("outscale", $("outscale").value);
    form.append("width", $("width").value);
    form.append("precision", $("precision").value);
    form.append("tile", $("tile").value);
    form.append("file", file, file.name);
    try {
      const res = await fetch("/api/jobs", { method: "POST", body: form });
      const body = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
      if (res.ok) {
        local.delete(key);
        mergeJob(body);
      } else {
        Object.assign(local.get(key), { state: "error", error: body.error || `HTTP ${res.status}` });
      }
    } catch (err) {
      Object.assign(local.get(key), { state: "error", error: `upload failed: ${err.message}` });
    }
    render();
  }
}

function mergeJob(job) {
  if (!jobs.some((j) => j.id === job.id)) jobs.push(job);
}

// --- live state -----------------------------------------------------------------------------------------------------
// The server asks for its token (a cookie the address it printed set); a server started again with another token
// refuses this page's cookie: say what to do rather than "reconnecting" for ever.
let needToken = false;
function tokenNeeded() {
  needToken = true;
  $("connection").textContent = "token needed: open the address esrgan serve printed";
  $("connection").className = "connection down";
}

function connect() {
  const conn = $("connection");
  const source = new EventSource("/api/events");
  let lost = false;
  source.onopen = () => {
    conn.textContent = "live";
    conn.className = "connection live";
    if (lost) { lost = false; loadConfig().catch(() => {}); }  // back: maybe a restarted server, other settings
  };
  source.onerror = () => {
    lost = true;
    if (!needToken) { conn.textContent = "reconnecting…"; conn.className = "connection down"; }
    if (source.readyState === EventSource.CLOSED) {  // refused (401): EventSource gives up; ask again in a while
      setTimeout(async () => { await loadConfig().catch(() => {}); connect(); }, 3000);
    }
  };
  source.onmessage = (ev) => {
    jobs = JSON.parse(ev.data).jobs;
    receivedAt = performance.now();
    render();
  };
}

// A running job's elapsed time keeps counting between snapshots (a one-tile job sends none while it computes).
function tick() {
  for (const li of $("jobs").children) {
    if (li.dataset.state !== "running") continue;
    const j = jobs.find((x) => x.id === li.dataset.id);
    const status = li.querySelector(".status");
    if (j && status) status.textContent = statusText(j);
  }
}

async function removeJob(id) {
  if (local.has(id)) { local.delete(id); render(); return; }
  await fetch(`/api/jobs/${encodeURIComponent(id)}`, { method: "DELETE" });
}

function statusText(j) {
  switch (j.state) {
    case "uploading": return "uploading…";
    case "queued": return j.position === 1 ? "waiting: next in line" : `waiting: place ${j.position} in line`;
    case "running": {
      const t = j.elapsed == null ? "" : ` · ${duration(j.elapsed + (performance.now() - receivedAt) / 1000)}`;
      const inp = j.precision ? ` in ${j.precision}` : "";
      if (j.phase === "loading") return `loading the model…${t}`;
      if (j.phase === "writing") return `writing the result…${t}`;
      if (j.frames > 1 && j.phase === "computing") {
        const total = j.tiles_total || j.frames;  // the frame being computed: one more than those done
        return `computing${inp}: frame ${Math.min(j.tiles_done + 1, total)} / ${total}${t}`;
      }
      if (j.tiles_total > 1) return `computing${inp}: tile ${j.tiles_done} / ${j.tiles_total}${t}`;
      if (j.phase === "computing") return `computing${inp} (one tile, no finer progress)…${t}`;
      return `starting…${t}`;
    }
    case "cancelling": return "stopping after the current tile…";
    case "done": {
      const at = (name) => (j.phases || []).find((p) => p.phase === name);
      const load = at("loading"), compute = at("computing");
      const model = load && compute ? ` (model loading ${duration(compute.at - load.at)})` : "";
      return `done in ${duration(j.seconds)}${model}`;
    }
    default: return "";
  }
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function card(j) {
  const li = el("li", `job ${j.state}` + (j.id === selected ? " selected" : ""));
  li.dataset.id = j.id;
  li.dataset.state = j.state;
  const top = el("div", "top");
  top.append(el("span", "name", j.name), el("span", `badge ${j.state}`, j.state));
  li.append(top);
  if (j.width) {
    const out = j.out_width ? ` → ${j.out_width}×${j.out_height}` : "";
    const used = j.precision ? ` · ${j.precision}` + (j.options.precision !== "auto" && j.options.precision !== j.precision
      ? ` (${j.options.precision} asked)` : "") : "";
    li.append(el("div", "meta", `${j.width}×${j.height} ${j.description}${out} · ${j.options.model}${used}`));
  }
  if (j.state === "running" || j.state === "uploading" || j.state === "cancelling") {
    const bar = el("div", "bar");
    const fill = el("div");
    if (j.state === "running" && j.phase === "computing" && j.tiles_total > 1) {
      fill.style.width = `${(100 * j.tiles_done) / j.tiles_total}%`;
    } else {
      bar.classList.add("indeterminate");
    }
    bar.append(fill);
    li.append(bar);
  }
  const status = statusText(j);
  if (status) li.append(el("div", "status", status));
  if (j.error) li.append(el("div", "message", j.error));
  const actions = el("div", "actions");
  if (j.state === "queued" || j.state === "running") {
    const b = el("button", "cancel", "Cancel");
    b.onclick = (ev) => { ev.stopPropagation(); removeJob(j.id); };
    actions.append(b);
  }
  if (j.state === "done") {
    const a = el("a", "button download", "Download");
    a.href = j.result_url;
    a.download = j.download_name;
    a.onclick = (ev) => ev.stopPropagation();
    actions.append(a);
  }
  if (j.state === "done" || j.state === "error") {
    const b = el("button", "remove", "Remove");
    b.onclick = (ev) => { ev.stopPropagation(); removeJob(j.id); };
    actions.append(b);
  }
  if (actions.children.length) li.append(actions);
  if (j.state === "done") li.onclick = () => select(j.id);
  return li;
}

function render() {
  const all = [...jobs, ...local.values()];
  $("jobs").replaceChildren(...all.map(card));
  $("empty").hidden = all.length > 0;
  $("zip").hidden = !jobs.some((j) => j.state === "done");
  const current = jobs.find((j) => j.id === selected && j.state === "done");
  if (!current) {
    const first = jobs.find((j) => j.state === "done");
    if (first) select(first.id); else { selected = null; showViewer(null); }
  }
}

// --- the comparison viewer ------------------------------------------------------------------------------------------
const view = { scale: 1, x: 0, y: 0, pos: 50, w: 0, h: 0 };

function select(id) {
  const j = jobs.find((x) => x.id === id);
  if (!j) return;
  const changed = selected !== id;
  selected = id;
  for (const li of $("jobs").children) li.classList.toggle("selected", li.dataset.id === id);
  if (changed) showViewer(j);
}

function showViewer(j) {
  $("compare").hidden = !j;
  $("placeholder").hidden = !!j;
  if (!j) return;
  $("viewer-title").textContent = `${j.name} · ${j.width}×${j.height} → ${j.out_width}×${j.out_height}`;
  $("after-tag").textContent = j.options.model;
  $("download").href = j.result_url;
  $("download").download = j.download_name;
  view.w = j.out_width;
  view.h = j.out_height;
  // an animation's "before" is its upload, which the browser plays at the result's size (a still's is the
  // bicubic preview, already that size)
  $("before-tag").textContent = j.frames > 1 ? "Original (browser-scaled)" : "Bicubic";
  for (const id of ["before", "after"]) {
    $(id).style.width = `${view.w}px`;
    $(id).style.height = `${view.h}px`;
  }
  $("before").src = j.before_url;
  $("after").src = j.after_url;
  fit();
}

function applyView() {
  const t = `translate(${view.x}px, ${view.y}px) scale(${view.scale})`;
  $("before").style.transform = t;
  $("after").style.transform = t;
  $("stage").classList.toggle("pixels", view.scale >= 2);
  $("zoom-level").textContent = `${Math.round(view.scale * 100)}%`;
  $("before-layer").style.clipPath = `inset(0 ${100 - view.pos}% 0 0)`;
  $("divider").style.left = `${view.pos}%`;
  $("slider").value = view.pos;
}

function fit() {
  const r = $("stage").getBoundingClientRect();
  if (!view.w || !r.width) return;
  view.scale = Math.min(r.width / view.w, r.height / view.h);
  view.x = (r.width - view.w * view.scale) / 2;
  view.y = (r.height - view.h * view.scale) / 2;
  applyView();
}

function zoomAt(scale, cx, cy) {
  const s = Math.min(Math.max(scale, 0.05), 32);
  view.x = cx - ((cx - view.x) * s) / view.scale;
  view.y = cy - ((cy - view.y) * s) / view.scale;
  view.scale = s;
  applyView();
}

function zoomCentre(scale) {
  const r = $("stage").getBoundingClientRect();
  zoomAt(scale, r.width / 2, r.height / 2);
}

function setupViewer() {
  const stage = $("stage");
  let drag = null;
  stage.addEventListener("pointerdown", (ev) => {
    const r = stage.getBoundingClientRect();
    const onDivider = ev.target.closest("#divider");
    drag = onDivider ? { kind: "divider" } : { kind: "pan", x: ev.clientX - view.x, y: ev.clientY - view.y };
    if (!onDivider) stage.classList.add("panning");
    stage.setPointerCapture(ev.pointerId);
    if (onDivider) { view.pos = Math.min(100, Math.max(0, (100 * (ev.clientX - r.left)) / r.width)); applyView(); }
  });
  stage.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    if (drag.kind === "divider") {
      const r = stage.getBoundingClientRect();
      view.pos = Math.min(100, Math.max(0, (100 * (ev.clientX - r.left)) / r.width));
    } else {
      view.x = ev.clientX - drag.x;
      view.y = ev.clientY - drag.y;
    }
    applyView();
  });
  const end = () => { drag = null; stage.classList.remove("panning"); };
  stage.addEventListener("pointerup", end);
  stage.addEventListener("pointercancel", end);
  stage.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const r = stage.getBoundingClientRect();
    zoomAt(view.scale * Math.exp(-ev.deltaY * 0.0015), ev.clientX - r.left, ev.clientY - r.top);
  }, { passive: false });
  $("slider").addEventListener("input", () => { view.pos = +$("slider").value; applyView(); });
  $("zoom-fit").onclick = fit;
  $("zoom-1").onclick = () => zoomCentre(1);
  $("zoom-2").onclick = () => zoomCentre(2);
  $("zoom-4").onclick = () => zoomCentre(4);
  window.addEventListener("resize", fit);
}

function setupDrop() {
  const drop = $("drop");
  $("files").addEventListener("change", (ev) => { addFiles(ev.target.files); ev.target.value = ""; });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (ev) => { ev.preventDefault(); addFiles(ev.dataTransfer.files); });
  window.addEventListener("dragover", (ev) => ev.preventDefault());  // a missed drop must not navigate away
  window.addEventListener("drop", (ev) => ev.preventDefault());
  $("start").onclick = start;
}

document.addEventListener("DOMContentLoaded", async () => {
  setupDrop();
  setupViewer();
  $("model").addEventListener("change", showModelNote);
  await loadConfig().catch(() => {});  // without the token: the header says so, and connect() asks again
  connect();
  setInterval(tick, 1000);
});
