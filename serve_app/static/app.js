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
  input.addEventListener("change", () => onFiles([...input.files]));
}

// ------------------------------------------------------------------ single image
let singleFile = null;
let runId = 0;

dropZone($("drop-single"), $("file-single"), (files) => {
  if (!files.length) return;
  singleFile = files[0];
  $("input-img").src = URL.createObjectURL(singleFile);
  runSingle();
});

function clearResult() {
  // An old result must not stay on screen (or downloadable) beside a new error.
  const link = $("download");
  if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
  link.removeAttribute("href");
  link.classList.add("disabled");
  $("result-img").removeAttribute("src");
  $("result-notice").hidden = true;
}

async function runSingle() {
  if (!singleFile) return;
  const id = ++runId;
  const info = $("result-info");
  info.dataset.state = "loading";
  info.textContent = "Working…";
  const form = new FormData();
  form.append("file", singleFile, singleFile.name);
  try {
    const res = await api("/v1/matte?" + queryString(), { method: "POST", body: form });
    const blob = await res.blob();
    if (id !== runId) return; // a newer request is on its way
    const url = URL.createObjectURL(blob);
    $("result-img").src = url;
    const h = res.headers;
    const fmt = $("p-format").value;
    const prior = h.get("X-Matting-Prior") === "true" ? " · subject found by the ImageNet prior" : "";
    info.textContent = `model ${h.get("X-Matting-Model")} · brightness ${Number(h.get("X-Matting-Brightness")).toFixed(3)}` +
      ` · refine ${h.get("X-Matting-Refine") || "?"}${prior}` +
      ` · ${h.get("X-Matting-Cache") === "hit" ? "cached" : h.get("X-Matting-Ms") + " ms"} · ${fmt.toUpperCase()}`;
    info.dataset.refine = h.get("X-Matting-Refine") || "";
    $("result-img").onload = () => { // the result is the input's full size: say so
      if (id === runId) info.dataset.size = `${$("result-img").naturalWidth}x${$("result-img").naturalHeight}`;
    };
    const empty = h.get("X-Matting-Empty") === "true";
    $("result-notice").textContent = empty ? EMPTY_TEXT : "";
    $("result-notice").hidden = !empty;
    info.dataset.empty = empty ? "true" : "false";
    info.dataset.state = "done";
    info.dataset.format = fmt;
    const link = $("download");
    if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
    link.href = url;
    link.download = `${stem(singleFile.name)}-matte.${EXT[fmt]}`;
    link.classList.remove("disabled");
  } catch (e) {
    if (id !== runId) return;
    clearResult();
    info.dataset.state = "error";
    info.textContent = e.message;
  }
}

$("full-size").addEventListener("change", () => {
  for (const f of document.querySelectorAll("#tab-single .frame")) f.classList.toggle("full", $("full-size").checked);
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
