// The try-it page: send an image to POST /v1/segment, draw the COCO RLE answer over it, and
// explain every error the API can return. Everything is served by this server; nothing loads
// from anywhere else (the Content-Security-Policy says so too).
import { ApiError, KEY_STORAGE, api, explain } from "./api.js";
import { colour, labelPoints, overlayPixels, paintSegments } from "./rle.js";

const $ = (id) => document.getElementById(id);
const state = {
  model: null,
  file: null,
  bitmap: null,
  answer: null, // the parsed JSON
  text: "", // the JSON as received, for the download
  map: null, // segment number (index + 1) per pixel, row-major
  centres: [], // where each segment's label goes
  visible: new Set(),
  pinned: null,
  busy: false,
};

let retryTimer = null;

function showError(error) {
  const box = $("message");
  clearInterval(retryTimer);
  box.hidden = false;
  box.className = "error";
  box.dataset.status = String(error.status);
  box.dataset.type = error.type;
  box.textContent = explain(error, state.file ? state.file.size : 0);
  if (error.status === 401) $("auth").open = true;
  if (Number.isFinite(error.retryAfter) && error.retryAfter >= 0 && state.file) {
    let left = Math.ceil(error.retryAfter);
    const note = document.createElement("span");
    note.className = "retry";
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "retry now";
    button.addEventListener("click", () => segment());
    const tick = () => {
      note.textContent = left > 0 ? ` Retrying in ${left} s. ` : " ";
      if (left <= 0) {
        clearInterval(retryTimer);
        segment();
      }
      left -= 1;
    };
    box.append(note, button);
    tick();
    retryTimer = setInterval(tick, 1000);
  }
}

function showNote(text) {
  const box = $("message");
  clearInterval(retryTimer);
  box.hidden = !text;
  box.className = "note";
  box.dataset.status = "";
  box.dataset.type = "";
  box.textContent = text || "";
}

// --- the model card -----------------------------------------------------------------------

async function loadModel() {
  try {
    const { text } = await api("/v1/model");
    state.model = JSON.parse(text);
  } catch (error) {
    $("model-name").textContent = "not connected";
    showError(error);
    if (error.status === 503 || error.status === 0) setTimeout(loadModel, 2000);
    document.body.dataset.state = "error";
    return;
  }
  const m = state.model;
  $("model-name").textContent = `${m.name} on ${m.backend} / ${m.provider}`;
  const card = $("model-card");
  card.replaceChildren();
  const labels = m.labels.map((l) => `${l.name} (${l.isthing ? "thing" : "stuff"})`).join(", ");
  const rows = [
    ["bundle", m.name], ["backend", m.backend], ["provider", m.provider], ["precision", m.precision],
    ["tasks", m.tasks.join(", ")], ["canvases", m.canvases.join(", ")], ["max batch", m.max_batch_size],
    ["panoptic rule", m.panoptic_rule], ["checkpoint", m.source.checkpoint], ["labels", labels],
  ];
  for (const [name, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = String(value);
    card.append(dt, dd);
  }
  const task = $("task");
  task.replaceChildren(...m.tasks.map((t) => new Option(t, t, t === m.default_task, t === m.default_task)));
  const defaults = { threshold: m.thresholds.score, mask_threshold: m.thresholds.mask, overlap_threshold: m.thresholds.overlap };
  for (const [id, value] of Object.entries(defaults)) {
    $(id).value = String(value);
    $(id).dispatchEvent(new Event("input"));
  }
  const filter = $("label-filter");
  filter.querySelectorAll("label").forEach((node) => node.remove());
  for (const label of m.labels) {
    const item = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = true;
    box.value = String(label.id);
    item.append(box, ` ${label.name}`);
    filter.append(item);
  }
  $("run").disabled = !state.file;
  showNote("");
  document.body.dataset.state = "ready";
}

// --- segmenting ---------------------------------------------------------------------------

function query() {
  const params = new URLSearchParams({ task: $("task").value });
  for (const id of ["threshold", "mask_threshold", "overlap_threshold"]) params.set(id, $(id).value);
  const minArea = Number($("min_area").value);
  if (minArea > 0) params.set("min_area", String(Math.floor(minArea)));
  const boxes = [...$("label-filter").querySelectorAll("input")];
  const chosen = boxes.filter((b) => b.checked).map((b) => b.value);
  if (chosen.length > 0 && chosen.length < boxes.length) params.set("label_ids", chosen.join(","));
  return { params, none: boxes.length > 0 && chosen.length === 0 };
}

async function setFile(file) {
  if (!file) return;
  state.file = file;
  $("file-name").textContent = `${file.name || "pasted image"} (${(file.size / 1024).toFixed(0)} KiB)`;
  if (state.bitmap) state.bitmap.close();
  try {
    state.bitmap = await createImageBitmap(file);
  } catch (_) {
    state.bitmap = null; // e.g. TIFF: the server reads it, this browser does not
  }
  $("run").disabled = !state.model;
  if (state.model) await segment();
}

async function segment() {
  if (!state.file || state.busy) return;
  const { params, none } = query();
  if (none) {
    showNote("Choose at least one label to return.");
    return;
  }
  state.busy = true;
  $("run").disabled = true;
  document.body.dataset.state = "busy";
  showNote("Segmenting...");
  const form = new FormData();
  form.append("image", state.file, state.file.name || "image");
  const started = performance.now();
  try {
    const { text } = await api(`/v1/segment?${params}`, { method: "POST", body: form });
    const received = performance.now();
    state.text = text;
    state.answer = JSON.parse(text);
    const { width, height } = state.answer.image;
    state.map = paintSegments(state.answer.segments, height, width);
    state.centres = labelPoints(state.map, height, width, state.answer.segments.length);
    const decoded = performance.now();
    state.visible = new Set(state.answer.segments.map((s) => s.id));
    state.pinned = null;
    drawPicture();
    drawOverlay();
    const drawn = performance.now();
    showLegend();
    showTimings({ "round trip (browser)": received - started, "RLE decode (browser)": decoded - received, "draw (browser)": drawn - decoded });
    showNote(state.bitmap ? "" : "This browser cannot display this image format: the masks are drawn on grey.");
    document.body.dataset.state = "done";
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    showError(error);
    document.body.dataset.state = "error";
  } finally {
    state.busy = false;
    $("run").disabled = false;
  }
}

// --- drawing ------------------------------------------------------------------------------

function drawPicture() {
  const { width, height } = state.answer.image;
  const canvas = $("picture");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  if (state.bitmap) {
    context.drawImage(state.bitmap, 0, 0, width, height);
  } else {
    context.fillStyle = "#777";
    context.fillRect(0, 0, width, height);
  }
  $("stage").hidden = false;
  $("view-controls").hidden = false;
  fitStage();
}

// Small pictures are shown at a whole multiple of their size (pixel for pixel), large ones
// scaled down to the column.
function fitStage() {
  if (!state.answer) return;
  const { width } = state.answer.image;
  const room = $("view").clientWidth;
  const scale = width <= room ? Math.max(1, Math.min(3, Math.floor(room / width))) : room / width;
  $("stage").style.width = `${Math.floor(width * scale)}px`;
  $("stage").classList.toggle("pixelated", scale > 1);
}

function drawOverlay() {
  const { width, height } = state.answer.image;
  const canvas = $("overlay");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  overlayPixels(state.map, height, width, state.answer.segments, state.visible, Number($("opacity").value), image.data);
  context.putImageData(image, 0, 0);
  if ($("show-labels").checked) drawLabels(context, width, height);
}

function drawLabels(context, width, height) {
  const size = Math.max(11, Math.round(Math.min(width, height) / 40));
  const pad = Math.max(1, Math.floor(size / 6));
  context.font = `${size}px sans-serif`;
  context.textBaseline = "top";
  state.answer.segments.forEach((segment, index) => {
    const centre = state.centres[index];
    if (!state.visible.has(segment.id) || !centre) return;
    const text = segment.score === null ? segment.label : `${segment.label} ${segment.score.toFixed(2)}`;
    const boxW = Math.ceil(context.measureText(text).width) + 2 * pad;
    const boxH = size + 2 * pad;
    const x = Math.min(Math.max(0, Math.round(centre.x - boxW / 2)), Math.max(0, width - boxW));
    const y = Math.min(Math.max(0, Math.round(centre.y - boxH / 2)), Math.max(0, height - boxH));
    const [r, g, b] = colour(segment.id);
    context.fillStyle = `rgb(${r},${g},${b})`;
    context.fillRect(x, y, boxW, boxH);
    context.fillStyle = 0.299 * r + 0.587 * g + 0.114 * b > 140 ? "#000" : "#fff";
    context.fillText(text, x + pad, y + pad);
  });
}

function showLegend() {
  const body = $("legend").tBodies[0];
  body.replaceChildren();
  for (const segment of state.answer.segments) {
    const row = body.insertRow();
    row.dataset.segmentId = String(segment.id);
    row.dataset.label = segment.label;
    const toggle = document.createElement("input");
    toggle.type = "checkbox";
    toggle.checked = state.visible.has(segment.id);
    toggle.title = "show or hide this segment";
    toggle.addEventListener("change", () => {
      if (toggle.checked) state.visible.add(segment.id);
      else state.visible.delete(segment.id);
      drawOverlay();
    });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${colour(segment.id).join(",")})`;
    row.insertCell().append(toggle, swatch);
    row.insertCell().textContent = segment.label;
    row.insertCell().textContent = segment.score === null ? "-" : segment.score.toFixed(3);
    row.insertCell().textContent = segment.area.toLocaleString("en");
  }
}

function showTimings(browser) {
  const body = $("timings").tBodies[0];
  body.replaceChildren();
  const rows = [...Object.entries(state.answer.timing).map(([k, v]) => [`${k} (server)`, v * 1000]), ...Object.entries(browser)];
  for (const [name, ms] of rows) {
    const row = body.insertRow();
    row.insertCell().textContent = name;
    row.insertCell().textContent = ms.toFixed(1);
  }
}

// --- hover and tap ------------------------------------------------------------------------

function segmentAt(event) {
  if (!state.answer) return null;
  const canvas = $("overlay");
  const rect = canvas.getBoundingClientRect();
  const { width, height } = state.answer.image;
  const x = Math.floor(((event.clientX - rect.left) / rect.width) * width);
  const y = Math.floor(((event.clientY - rect.top) / rect.height) * height);
  if (x < 0 || y < 0 || x >= width || y >= height) return null;
  const number = state.map[y * width + x];
  const segment = number ? state.answer.segments[number - 1] : null;
  return segment && state.visible.has(segment.id) ? segment : null;
}

function showTooltip(segment, event) {
  const tip = $("tooltip");
  document.querySelectorAll("#legend tr.hover").forEach((row) => row.classList.remove("hover"));
  if (!segment) {
    tip.hidden = true;
    return;
  }
  const score = segment.score === null ? "" : ` · score ${segment.score.toFixed(3)}`;
  tip.textContent = `${segment.label}${score} · ${segment.area.toLocaleString("en")} px`;
  const stage = $("stage").getBoundingClientRect();
  tip.style.left = `${event.clientX - stage.left + 12}px`;
  tip.style.top = `${event.clientY - stage.top + 12}px`;
  tip.hidden = false;
  const row = document.querySelector(`#legend tr[data-segment-id="${segment.id}"]`);
  if (row) row.classList.add("hover");
}

// --- downloads ----------------------------------------------------------------------------

function stem() {
  const name = (state.file && state.file.name) || "image";
  return name.replace(/\.[^.]*$/, "") || "image";
}

function save(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

function downloadOverlay() {
  const { width, height } = state.answer.image;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  context.drawImage($("picture"), 0, 0);
  context.drawImage($("overlay"), 0, 0);
  canvas.toBlob((blob) => save(blob, `${stem()}.overlay.png`), "image/png");
}

// --- wiring -------------------------------------------------------------------------------

function wire() {
  $("file").addEventListener("change", (event) => setFile(event.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("click", (event) => {
    if (event.target === drop) $("file").click();
  });
  for (const name of ["dragenter", "dragover"]) {
    document.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  document.addEventListener("dragleave", () => drop.classList.remove("over"));
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = [...event.dataTransfer.files].find((f) => f.type.startsWith("image/")) || event.dataTransfer.files[0];
    setFile(file);
  });
  window.addEventListener("paste", (event) => {
    const file = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
    if (file) setFile(file);
  });
  for (const id of ["threshold", "mask_threshold", "overlap_threshold"]) {
    $(id).addEventListener("input", () => {
      document.querySelector(`output[for="${id}"]`).textContent = Number($(id).value).toFixed(2);
    });
  }
  $("run").addEventListener("click", () => segment());
  $("opacity").addEventListener("input", () => state.answer && drawOverlay());
  $("show-labels").addEventListener("change", () => state.answer && drawOverlay());
  const setAll = (on) => {
    if (!state.answer) return;
    state.visible = new Set(on ? state.answer.segments.map((s) => s.id) : []);
    document.querySelectorAll("#legend input[type=checkbox]").forEach((box) => (box.checked = on));
    drawOverlay();
  };
  $("show-all").addEventListener("click", () => setAll(true));
  $("hide-all").addEventListener("click", () => setAll(false));
  $("download-json").addEventListener("click", () => save(new Blob([state.text], { type: "application/json" }), `${stem()}.json`));
  $("download-png").addEventListener("click", downloadOverlay);
  const stage = $("stage");
  stage.addEventListener("mousemove", (event) => {
    if (state.pinned === null) showTooltip(segmentAt(event), event);
  });
  stage.addEventListener("mouseleave", () => state.pinned === null && showTooltip(null));
  stage.addEventListener("click", (event) => {
    const segment = segmentAt(event);
    state.pinned = segment && state.pinned !== segment.id ? segment.id : null;
    showTooltip(segment, event);
  });
  window.addEventListener("resize", fitStage);
  $("auth-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    $("api-key").value = "";
    $("auth").open = false;
    loadModel();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    loadModel();
  });
  if (sessionStorage.getItem(KEY_STORAGE)) $("api-key").placeholder = "a key is set for this tab";
}

wire();
loadModel();
