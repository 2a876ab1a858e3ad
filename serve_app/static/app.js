// Universal matting web UI: plain JavaScript against the /v1 API (no build step).
"use strict";

const $ = (id) => document.getElementById(id);
const PARAMS = ["model", "output", "background", "format", "threshold", "erosion", "feather", "decontaminate", "quality", "max_side", "refine"];
const EXT = { png: "png", jpeg: "jpg", webp: "webp" };

// ------------------------------------------------------------------ API access
function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!res.ok) {
    let detail = res.statusText;
    try { detail = (await res.json()).detail || detail; } catch (_) { /* not JSON */ }
    if (res.status === 401) notice("This server needs an API key: enter it at the top right.");
    throw new Error(`${res.status}: ${detail}`);
  }
  return res;
}

function notice(text) { $("notice").textContent = text || ""; }

function queryString(extra = {}) {
  const q = new URLSearchParams();
  for (const name of PARAMS) {
    const el = $("p-" + name);
    if (name === "decontaminate") q.set(name, el.checked ? "true" : "false");
    else if (el.value !== "") q.set(name, el.value);
  }
  for (const [k, v] of Object.entries(extra)) q.set(k, v);
  return q.toString();
}

const stem = (name) => name.replace(/\.[^.]*$/, "") || "image";

// ------------------------------------------------------------------ tabs and settings
for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
    for (const name of ["single", "batch", "history"]) $("tab-" + name).hidden = name !== tab.dataset.tab;
    if (tab.dataset.tab === "history") loadHistory(true);
  });
}

$("api-key").value = localStorage.getItem("matting-api-key") || "";
$("api-key").addEventListener("change", () => {
  localStorage.setItem("matting-api-key", $("api-key").value.trim());
  notice("");
  loadModels();
});

async function loadModels() {
  try {
    const body = await (await api("/v1/models")).json();
    const select = $("p-model");
    select.length = 1;
    for (const m of body.models) select.add(new Option(`${m.name} (${m.role})`, m.name));
    if (body.limits) { // the server's one max_side limit (serve_app.params.MAX_SIDE)
      $("p-max_side").max = body.limits.max_side;
      $("p-max_side").placeholder = `server default (${body.limits.default_max_side})`;
    }
  } catch (e) { console.warn(e); }
}

// What to tell a person when the model found no subject (X-Matting-Empty: true).
const EMPTY_TEXT = "No subject found: the result is (almost) fully transparent. " +
  "Try the other model, a larger max side, or a photo where the subject stands out.";

let timer = null;
for (const name of PARAMS) {
  $("p-" + name).addEventListener("input", () => {
    $("o-threshold").textContent = Number($("p-threshold").value).toFixed(2);
    clearTimeout(timer);
    timer = setTimeout(runSingle, 250);
  });
}

function dropZone(zone, input, onFiles) {
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    onFiles([...e.dataTransfer.files]);
  });
  input.addEventListener("change", () => {
    const files = [...input.files];
    input.value = ""; // choosing the same file again is a change too (a fresh start)
    onFiles(files);
  });
}

// ------------------------------------------------------------------ single image
// One /v1/matte request at a time: a change (a stroke, a box, a setting) made while one is on its
// way waits, and only the latest state is sent next, so quick strokes never pile up requests.
let singleFile = null;
let inFlight = null; // the AbortController of the request on its way
let pending = false; // something changed since that request was sent
let shown = null; // the result on screen: {file, query, hints, w, h, url, model, historyId, applied}
let before = null; // the same settings without hints, for Before/After: {file, query, url}
let outcome = "empty"; // how the latest request ended: "done" or "error"

const editor = new HintEditor({
  panes: [["input-img", "overlay-input"], ["result-img", "overlay-result"]].map(([img, canvas]) => ({ frame: $(img).parentElement, img: $(img), canvas: $(canvas) })),
  cursor: $("brush-cursor"),
  onChange: () => { showView("after"); runSingle(); },
});

// The settings' query string plus the box (the strokes travel as the `hints` file).
function matteQuery(query, hints, extra = {}) {
  const q = new URLSearchParams(query);
  if (hints.box) q.set("box", hints.box.join(","));
  for (const [k, v] of Object.entries(extra)) q.set(k, v);
  return q.toString();
}

async function matteForm(file, hints, w, h) {
  const form = new FormData();
  form.append("file", file, file.name);
  const png = await hints.png(w, h);
  if (png) form.append("hints", png, "hints.png");
  return form;
}

// Blob URLs die when nothing on the page can show them any more.
function release(url) {
  if (url && url !== shown?.url && url !== before?.url) URL.revokeObjectURL(url);
}

dropZone($("drop-single"), $("file-single"), (files) => {
  if (!files.length) return;
  if (inFlight) inFlight.abort(); // its answer is for the old image
  singleFile = files[0];
  clearResult();
  const old = before;
  before = null;
  release(old?.url);
  editor.setImage(0, 0); // the size comes with the input's load (or the first result's)
  staleCorrection();
  URL.revokeObjectURL($("input-img").src);
  $("input-img").src = URL.createObjectURL(singleFile);
  updateControls();
  runSingle();
});

// The image's pixel size: from the input as the browser shows it (EXIF orientation applied, like
// the server), or from the first result where the browser cannot show the input (TIFF).
for (const id of ["input-img", "result-img"]) {
  $(id).addEventListener("load", () => {
    const img = $(id);
    if (!editor.ready && singleFile && img.naturalWidth > 0) { editor.setImage(img.naturalWidth, img.naturalHeight); updateControls(); }
  });
}

function clearResult() {
  // An old result must not stay on screen (or downloadable) beside a new error.
  const link = $("download");
  link.removeAttribute("href");
  link.classList.add("disabled");
  $("result-img").removeAttribute("src");
  $("result-notice").hidden = true;
  const old = shown;
  shown = null;
  release(old?.url);
  showView("after");
  editor.place();
  updateControls();
}

function runSingle() {
  if (!singleFile) return;
  pending = true;
  staleCorrection(); // the matte on screen is about to change
  if (!inFlight) pump();
  else progress();
}

async function pump() {
  while (pending && singleFile) {
    pending = false;
    const controller = new AbortController();
    inFlight = controller;
    progress();
    try { await requestMatte(controller.signal); } finally { inFlight = null; }
  }
  progress();
}

// The progress bar while a request is on its way; the caption's state: "loading" until the
// latest state's answer is on screen, then "done" or "error".
function progress() {
  const info = $("result-info");
  $("single-progress").hidden = !inFlight;
  info.dataset.state = inFlight || pending ? "loading" : outcome;
  info.dataset.queued = pending ? "true" : "false";
  updateControls();
}

async function requestMatte(signal) {
  const file = singleFile, hints = editor.hints, query = queryString(), w = editor.w, h = editor.h;
  const info = $("result-info");
  if (!shown) info.textContent = "Working…";
  try {
    const form = await matteForm(file, hints, w, h);
    const res = await api("/v1/matte?" + matteQuery(query, hints), { method: "POST", body: form, signal });
    const blob = await res.blob();
    if (file !== singleFile) return; // an answer for the image before
    showResult(res.headers, blob, { file, query, hints, w, h });
    outcome = "done";
  } catch (e) {
    if (file !== singleFile || e.name === "AbortError") return;
    clearResult();
    info.textContent = e.message;
    info.dataset.hints = "none"; // nothing on screen, nothing applied
    outcome = "error";
  }
}

function showResult(h, blob, request) {
  const info = $("result-info");
  const url = URL.createObjectURL(blob);
  const old = shown;
  shown = { ...request, url, model: h.get("X-Matting-Model") || "", historyId: h.get("X-Matting-History-Id") || "",
    applied: h.get("X-Matting-Hints") || "none" };
  if (request.hints.empty) { // this is also what Before shows for these settings
    const oldBefore = before;
    before = { file: request.file, query: request.query, url };
    release(oldBefore?.url);
  }
  release(old?.url);
  showView("after");
  const fmt = new URLSearchParams(request.query).get("format") || "png";
  const prior = h.get("X-Matting-Prior") === "true" ? " · subject found by the ImageNet prior" : "";
  const hinted = shown.applied !== "none" ? ` · corrected (${shown.applied.replace("+", " + ")})` : "";
  info.textContent = `model ${h.get("X-Matting-Model")} · brightness ${Number(h.get("X-Matting-Brightness")).toFixed(3)}` +
    ` · refine ${h.get("X-Matting-Refine") || "?"}${prior}${hinted}` +
    ` · ${h.get("X-Matting-Cache") === "hit" ? "cached" : h.get("X-Matting-Ms") + " ms"} · ${fmt.toUpperCase()}`;
  info.dataset.refine = h.get("X-Matting-Refine") || "";
  // What the server applied (X-Matting-Hints), and what was sent: the box and the number of strokes.
  info.dataset.hints = shown.applied;
  info.dataset.box = request.hints.box ? request.hints.box.join(",") : "";
  info.dataset.strokes = String(request.hints.strokes.length);
  info.dataset.historyId = shown.historyId;
  $("result-img").onload = () => { // the result is the input's full size: say so
    if (shown && shown.url === url) info.dataset.size = `${$("result-img").naturalWidth}x${$("result-img").naturalHeight}`;
  };
  const empty = h.get("X-Matting-Empty") === "true";
  $("result-notice").textContent = empty ? EMPTY_TEXT : "";
  $("result-notice").hidden = !empty;
  info.dataset.empty = empty ? "true" : "false";
  info.dataset.format = fmt;
  const link = $("download");
  link.href = url;
  link.download = `${stem(request.file.name)}-matte.${EXT[fmt]}`;
  link.classList.remove("disabled");
}

$("full-size").addEventListener("change", () => {
  for (const f of document.querySelectorAll("#tab-single .frame")) f.classList.toggle("full", $("full-size").checked);
  editor.place();
});

// ------------------------------------------------------------------ corrections: tools, undo, before/after, save
function updateControls() {
  const ready = editor.ready;
  for (const id of ["tool-box", "tool-keep", "tool-remove"]) $(id).disabled = !ready;
  $("undo").disabled = $("reset").disabled = editor.hints.empty;
  $("before-after").disabled = !shown || shown.hints.empty;
  $("save-correction").disabled = !shown || Boolean(inFlight) || pending || $("correction-info").dataset.state === "saving";
}

function setTool(tool) {
  editor.setTool(tool);
  $("tools").dataset.tool = tool;
  $("panes").dataset.tool = tool;
  for (const b of document.querySelectorAll("#tools [data-tool]")) {
    if (b.id) b.setAttribute("aria-pressed", String(b.dataset.tool === tool));
  }
}

for (const id of ["tool-box", "tool-keep", "tool-remove"]) {
  $(id).addEventListener("click", () => setTool($("tools").dataset.tool === $(id).dataset.tool ? "" : $(id).dataset.tool));
}

$("brush-size").addEventListener("input", () => {
  editor.brush = Number($("brush-size").value);
  $("o-brush-size").textContent = $("brush-size").value;
});
editor.brush = Number($("brush-size").value);

$("undo").addEventListener("click", () => editor.undo());
$("reset").addEventListener("click", () => editor.reset());
document.addEventListener("keydown", (e) => {
  if ((e.ctrlKey || e.metaKey) && !e.shiftKey && e.key.toLowerCase() === "z" && !$("tab-single").hidden &&
      !e.target.matches("input[type=text], input[type=number], input[type=password], textarea")) { // their own undo
    e.preventDefault();
    editor.undo();
  }
});

// Before = the same settings without any box or stroke (history=false; usually from the
// server's cache, as the first result of this image was one); After = the current result.
function showView(view) {
  const button = $("before-after");
  button.dataset.view = view;
  button.setAttribute("aria-pressed", String(view === "before"));
  $("panes").dataset.view = view;
  const url = view === "before" ? before?.url : shown?.url;
  if (url && $("result-img").getAttribute("src") !== url) $("result-img").src = url;
}

$("before-after").addEventListener("click", async () => {
  if ($("before-after").dataset.view === "before") return showView("after");
  const s = shown;
  if (!s) return;
  if (!before || before.file !== s.file || before.query !== s.query) {
    try {
      const form = await matteForm(s.file, new Hints(), s.w, s.h);
      const res = await api("/v1/matte?" + matteQuery(s.query, new Hints(), { history: "false" }), { method: "POST", body: form });
      const blob = await res.blob();
      if (s.file !== singleFile) return;
      const old = before;
      before = { file: s.file, query: s.query, url: URL.createObjectURL(blob) };
      release(old?.url);
    } catch (e) {
      notice("Could not get the result without corrections: " + e.message);
      return;
    }
  }
  if (shown === s) showView("before");
});

// A saved correction is for the matte on screen when it was saved: any edit makes the note stale.
function staleCorrection() {
  const out = $("correction-info");
  out.dataset.state = "";
  delete out.dataset.id;
  out.textContent = "";
  updateControls();
}

$("save-correction").addEventListener("click", async () => {
  const s = shown;
  if (!s) return;
  const out = $("correction-info");
  out.dataset.state = "saving";
  delete out.dataset.id;
  out.textContent = "Saving…";
  updateControls();
  try {
    // The corrected matte sent as `alpha` is the server's own 8-bit matte, asked once more as
    // output=alpha&format=png with the same settings, box and strokes (history=false; usually a
    // cache hit), rather than read back from the shown image, which may be a lossy JPEG/WebP, a
    // composite without alpha, or have gone through the browser's colour management.
    const form = await matteForm(s.file, s.hints, s.w, s.h);
    const query = matteQuery(s.query, s.hints, { output: "alpha", format: "png", history: "false" });
    const alpha = await (await api("/v1/matte?" + query, { method: "POST", body: form })).blob();
    const body = new FormData();
    body.append("file", s.file, s.file.name);
    body.append("alpha", alpha, `${stem(s.file.name)}-alpha.png`);
    if (s.historyId) body.append("history_id", s.historyId);
    if (s.model) body.append("model", s.model);
    if (s.hints.box) body.append("box", s.hints.box.join(","));
    const saved = await (await api("/v1/corrections", { method: "POST", body })).json();
    if (out.dataset.state !== "saving") return; // edited meanwhile
    out.dataset.state = "saved";
    out.dataset.id = saved.id;
    out.dataset.count = String(saved.count);
    out.textContent = `Saved as training data (id ${saved.id}); ${saved.count} correction${saved.count === 1 ? "" : "s"} stored` +
      (saved.tenant ? ` for ${saved.tenant}.` : ".");
  } catch (e) {
    if (out.dataset.state !== "saving") return;
    out.dataset.state = "error";
    out.textContent = "Not saved: " + e.message;
  }
  updateControls();
});

// ------------------------------------------------------------------ batch
let batchFiles = [];

dropZone($("drop-batch"), $("file-batch"), (files) => {
  batchFiles = files;
  const body = $("batch-table").tBodies[0];
  body.innerHTML = "";
  for (const f of files) {
    const row = body.insertRow();
    row.innerHTML = "<td></td><td></td><td>waiting</td><td></td><td></td><td></td>";
    row.cells[1].textContent = f.name;
  }
  $("batch-run").disabled = !files.length;
  $("batch-zip").classList.add("disabled");
  $("batch-progress").value = 0;
  $("batch-count").textContent = `${files.length} file(s)`;
  delete $("batch-count").dataset.state;
});

$("batch-run").addEventListener("click", async () => {
  const rows = $("batch-table").tBodies[0].rows;
  const images = batchFiles.filter((f) => !/\.zip$/i.test(f.name));
  let done = 0;
  $("batch-run").disabled = true;
  $("batch-progress").max = batchFiles.length + 1;
  const step = () => { $("batch-progress").value = ++done; $("batch-count").textContent = `${done} / ${batchFiles.length + 1}`; };
  // Each image alone first (progress and previews), two at a time; the ZIP request then
  // finds them in the server's cache.
  const queue = batchFiles.map((f, i) => [f, rows[i]]);
  const worker = async () => {
    for (let item = queue.shift(); item; item = queue.shift()) {
      const [file, row] = item;
      if (!images.includes(file)) { row.cells[2].textContent = "zip: its images are listed when the ZIP is done"; step(); continue; }
      row.cells[2].textContent = "working";
      const form = new FormData();
      form.append("file", file, file.name);
      try {
        const res = await api("/v1/matte?" + queryString({ history: "false" }), { method: "POST", body: form });
        const img = new Image();
        img.src = URL.createObjectURL(await res.blob());
        row.cells[0].replaceChildren(img);
        const empty = res.headers.get("X-Matting-Empty") === "true";
        row.cells[2].textContent = empty ? "ok: no subject found" : "ok";
        row.cells[2].className = empty ? "warning" : "";
        row.cells[3].textContent = res.headers.get("X-Matting-Model");
        row.cells[4].textContent = Number(res.headers.get("X-Matting-Brightness")).toFixed(3);
        row.cells[5].textContent = res.headers.get("X-Matting-Ms");
      } catch (e) {
        row.cells[2].textContent = e.message;
        row.cells[2].className = "error";
      }
      step();
    }
  };
  await Promise.all([worker(), worker()]);
  const form = new FormData();
  for (const f of batchFiles) form.append("files", f, f.name);
  try {
    const res = await api("/v1/batch?" + queryString(), { method: "POST", body: form });
    const blob = await res.blob();
    step(); // the ZIP is the last step; the summary below replaces the "N / M" count
    $("batch-zip").href = URL.createObjectURL(blob);
    $("batch-zip").classList.remove("disabled");
    try { await showBatchLog(blob); } catch (e) { notice("Could not read the ZIP's log: " + e.message); }
    const h = res.headers;
    const empty = Number(h.get("X-Matting-Empty") || 0);
    $("batch-count").textContent = `${h.get("X-Matting-Files")} file(s), ${h.get("X-Matting-Failed")} failed` +
      (empty ? `, ${empty} with no subject found` : "");
    $("batch-count").dataset.state = "done";
  } catch (e) {
    step();
    notice("ZIP failed: " + e.message);
    $("batch-count").dataset.state = "error";
  }
  $("batch-run").disabled = false;
});

// The table from the ZIP's log.json (batchlog.js): one row per image the server processed, so
// every image inside a dropped .zip gets its own row, with its status and a preview of its result.
async function showBatchLog(blob) {
  const entries = zipEntries(await blob.arrayBuffer());
  const log = await readBatchLog(entries);
  const rows = [];
  for (const entry of log) {
    const row = document.createElement("tr");
    for (let i = 0; i < 6; i++) row.insertCell();
    row.dataset.status = entry.status;
    row.cells[1].textContent = entry.file;
    const status = logStatus(entry);
    row.cells[2].textContent = status.text;
    row.cells[2].className = status.className;
    row.cells[3].textContent = entry.model || "";
    row.cells[4].textContent = typeof entry.brightness === "number" ? entry.brightness.toFixed(3) : "";
    row.cells[5].textContent = entry.ms ?? "";
    const result = entry.status === "ok" && entries.get(entry.output);
    if (result) {
      const img = new Image();
      img.src = URL.createObjectURL(new Blob([await result()], { type: mediaType(entry.output) }));
      row.cells[0].append(img);
    }
    rows.push(row);
  }
  $("batch-table").tBodies[0].replaceChildren(...rows);
}

// ------------------------------------------------------------------ history
let historyOffset = 0;

async function blobUrl(path) {
  return URL.createObjectURL(await (await api(path)).blob());
}

async function loadHistory(reset) {
  if (reset) { historyOffset = 0; $("history-grid").innerHTML = ""; }
  let page;
  try { page = await (await api(`/v1/history?limit=24&offset=${historyOffset}`)).json(); }
  catch (e) { notice(e.message); return; }
  for (const entry of page.items) {
    const card = document.createElement("div");
    card.className = "card";
    card.innerHTML = `<div class="thumb checker"></div><b></b><span></span><br><button class="button">Download</button>`;
    card.querySelector("b").textContent = entry.name;
    card.querySelector("span").textContent = `${entry.model || "-"} · ${entry.created.replace("T", " ").replace("Z", "")}`;
    blobUrl(entry.links.thumbnail).then((url) => {
      const img = new Image();
      img.src = url;
      card.querySelector(".thumb").append(img);
    }).catch(() => {});
    card.querySelector("button").addEventListener("click", async () => {
      const a = document.createElement("a");
      a.href = await blobUrl(entry.links.result);
      a.download = entry.kind === "batch" ? `mattes-${entry.id.slice(0, 8)}.zip` : `${stem(entry.name)}-matte.${entry.media_type.split("/")[1].replace("jpeg", "jpg")}`;
      document.body.append(a);
      a.click();
      a.remove();
    });
    $("history-grid").append(card);
  }
  historyOffset += page.items.length;
  $("history-more").hidden = page.next_offset === null;
}

$("history-more").addEventListener("click", () => loadHistory(false));

loadModels();
