// The imrec web page: draw or drop an image, see the model's top labels (or boxes) and Grad-CAM.
// Plain JavaScript, no build step and no outside assets: the page works without internet.
"use strict";

const $ = (id) => document.getElementById(id);
const pad = $("pad");
const ctx = pad.getContext("2d");
const THROTTLE_MS = 150; // at most one prediction per 150 ms while drawing
const HAN = /^\p{Script=Han}$/u; // one Chinese character

const state = {
  task: "classify",
  writer: false, // handwriting-pad mode: many classes or CJK labels, candidates to pick from
  topK: 5,
  strokes: [], // the strokes drawn on the pad (lists of points), for undo
  ink: "#fff", // stroke colour; the background is the other one
  paper: "#000",
  inked: false, // nothing to predict on a blank pad
  drawing: false,
  last: null, // the previous pointer position while drawing
  lastSent: 0,
  timer: null,
  sent: 0, // request counter: an older answer never replaces a newer one
  shown: 0,
  camSent: 0,
};

// ---- the token -----------------------------------------------------------------------------
// A service started with a token (imrec serve --token-file, or beyond loopback) answers 401
// without it: the page asks once and keeps the token for this tab only (sessionStorage), and
// sends it in the Authorization header, never in a URL.

const TOKEN_KEY = "imrec-token";
let tokenWaiters = [];

function withToken(options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { ...(options.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  return { ...options, headers };
}

function askToken(refused) {
  $("auth").classList.remove("hidden");
  $("auth-status").textContent = refused ? "That token was refused; try again." : "";
  $("token").focus();
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

$("auth-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  $("auth").classList.add("hidden");
  const waiting = tokenWaiters;
  tokenWaiters = [];
  waiting.forEach((resolve) => resolve());
});

async function call(url, options) {
  for (;;) {
    const res = await fetch(url, withToken(options));
    if (res.status !== 401) return res;
    const refused = sessionStorage.getItem(TOKEN_KEY) !== null;
    sessionStorage.removeItem(TOKEN_KEY);
    await askToken(refused);
  }
}

// ---- the model -----------------------------------------------------------------------------

async function loadModel() {
  const res = await call("/v1/model");
  const m = await res.json();
  const labels = m.labels || m.classes || [];
  state.task = m.task || "classify";
  // Draw the way the training images look: light ink on dark (MNIST) or dark ink on light.
  const ink = m.ink || (m.input && m.input.ink) || {};
  if (ink.background === "light") [state.ink, state.paper] = ["#000", "#fff"];
  const name = m.name || (m.model && m.model.name) || "model";
  $("model-name").textContent = `${name} · ${state.task} · ${labels.length} labels`;
  $("model-labels").textContent = `Labels: ${labels.slice(0, 40).join(", ")}${labels.length > 40 ? ", …" : ""}`;
  if (state.task === "detect") $("cam-panel").classList.add("hidden");
  // A vocabulary of characters (or just many classes) is written, not guessed one at a time:
  // show the top 10 as candidates to pick into a text.
  state.writer = state.task === "classify" && (labels.length > 50 || (labels.length > 0 && labels.every((l) => HAN.test(l))));
  if (state.writer) {
    state.topK = 10;
    $("writer").classList.remove("hidden");
    $("bars").classList.add("hidden");
    $("pad-title").textContent = "Write a character";
  }
  clearPad();
}

// ---- drawing -------------------------------------------------------------------------------

function clearPad() {
  ctx.fillStyle = state.paper;
  ctx.fillRect(0, 0, pad.width, pad.height);
  state.inked = false;
  state.strokes = [];
  state.sent += 1; // drop answers still on their way for the old drawing
  state.shown = state.sent;
  state.camSent += 1;
  $("top-label").textContent = "";
  $("top-prob").textContent = "";
  $("bars").replaceChildren();
  $("candidates").replaceChildren();
  $("cam").classList.add("hidden");
  $("cam").removeAttribute("src");
  $("status").textContent = "";
}

function point(e) {
  const r = pad.getBoundingClientRect(); // the canvas may be shown smaller than its pixels
  return [((e.clientX - r.left) * pad.width) / r.width, ((e.clientY - r.top) * pad.height) / r.height];
}

function line(from, to) {
  ctx.strokeStyle = state.ink;
  // Thick, like a pen digit scaled to 28 px; thinner for characters of many strokes.
  ctx.lineWidth = pad.width / (state.writer ? 28 : 14);
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(...from);
  ctx.lineTo(...to);
  ctx.stroke();
}

function strokeTo(p) {
  line(state.last || p, p);
  state.strokes[state.strokes.length - 1].push(p);
  state.last = p;
  state.inked = true;
}

function undoStroke() {
  const kept = state.strokes.slice(0, -1);
  clearPad();
  if (!kept.length) return;
  for (const stroke of kept) stroke.forEach((p, i) => line(stroke[Math.max(0, i - 1)], p));
  state.strokes = kept;
  state.inked = true;
  predictPad();
  explain(pad.toDataURL("image/png"));
}

pad.addEventListener("pointerdown", (e) => {
  e.preventDefault();
  pad.setPointerCapture(e.pointerId);
  state.drawing = true;
  state.last = null;
  state.strokes.push([]);
  strokeTo(point(e));
});

pad.addEventListener("pointermove", (e) => {
  if (!state.drawing) return;
  strokeTo(point(e));
  schedulePredict();
});

function endStroke() {
  if (!state.drawing) return;
  state.drawing = false;
  clearTimeout(state.timer);
  state.timer = null;
  predictPad();
  explain(pad.toDataURL("image/png"));
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function schedulePredict() {
  const wait = THROTTLE_MS - (performance.now() - state.lastSent);
  if (wait <= 0) predictPad();
  else if (!state.timer) state.timer = setTimeout(() => { state.timer = null; predictPad(); }, wait);
}

$("clear").addEventListener("click", clearPad);
$("undo").addEventListener("click", undoStroke);

// ---- handwriting-pad mode: pick a candidate into the text ----------------------------------

function pick(label) {
  const text = $("text");
  text.value += label;
  text.dataset.picked = String(Number(text.dataset.picked || 0) + 1);
  clearPad();
}

async function copyText() {
  const text = $("text");
  try {
    await navigator.clipboard.writeText(text.value);
    $("status").textContent = "";
  } catch {
    text.select(); // no clipboard permission (plain http on another host): select it instead
    document.execCommand("copy");
  }
}
$("copy").addEventListener("click", copyText);

function candidate({ label, probability }) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.title = `${(100 * probability).toFixed(1)}%`;
  b.setAttribute("aria-label", `${label}: ${(100 * probability).toFixed(1)} percent`);
  b.addEventListener("click", () => pick(label));
  return b;
}

// ---- asking the service --------------------------------------------------------------------

async function postJSON(url, body) {
  const res = await call(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const data = await res.json();
  if (!res.ok) throw new Error(data.error ? data.error.message : `HTTP ${res.status}`);
  return data;
}

async function predictPad() {
  if (!state.inked) return;
  state.lastSent = performance.now();
  const image = pad.toDataURL("image/png");
  await predict(() => postJSON("/v1/predict", { images: [image], top_k: state.topK }), "draw", image);
}

async function predict(send, source, image) {
  const seq = ++state.sent;
  try {
    const data = await send();
    if (seq < state.shown) return; // a newer answer is already on screen
    state.shown = seq;
    showResult(data.results[0], source, image);
    $("status").textContent = "";
  } catch (err) {
    $("status").textContent = `Could not predict: ${err.message}`;
  }
}

function showResult(result, source, image) {
  const box = $("predictions");
  box.dataset.source = source;
  box.dataset.seq = String(state.shown);
  if (result.boxes) return showBoxes(result, image);
  const top = result.top;
  box.dataset.unknown = String(Boolean(result.unknown));
  if (result.blank) {
    $("top-label").textContent = "nothing drawn";
    $("top-prob").textContent = "";
  } else if (result.unknown) {
    // Not one of the model's classes, as far as it can tell: say so, and show the candidates.
    $("top-label").textContent = "not sure";
    $("top-prob").textContent = `maybe ${top.slice(0, 3).map((t) => t.label).join(", ")}`;
  } else {
    $("top-label").textContent = top[0].label;
    $("top-prob").textContent = `${(100 * top[0].probability).toFixed(1)}%`;
  }
  $("bars").replaceChildren(...top.map(bar));
  if (state.writer) $("candidates").replaceChildren(...top.map(candidate));
}

function bar({ label, probability }) {
  const pct = (100 * probability).toFixed(1);
  const li = document.createElement("li");
  li.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="pct"></span>';
  li.querySelector(".name").textContent = label;
  li.querySelector(".fill").style.width = `${pct}%`;
  li.querySelector(".fill").style.display = "block";
  li.querySelector(".pct").textContent = `${pct}%`;
  li.setAttribute("aria-label", `${label}: ${pct} percent`);
  return li;
}

async function explain(image) {
  if (state.task !== "classify" || !state.inked) return;
  const seq = ++state.camSent;
  try {
    const data = await postJSON("/v1/explain", { image });
    if (seq !== state.camSent) return;
    $("cam").src = data.overlay;
    $("cam").classList.remove("hidden");
    $("cam-caption").textContent = `${data.method === "gradcam" ? "Grad-CAM" : "Saliency"} for “${data.target}” (${(100 * data.target_probability).toFixed(1)}%)`;
  } catch (err) {
    $("cam-caption").textContent = `No explanation: ${err.message}`;
  }
}

// ---- detectors: the image with its boxes ----------------------------------------------------

function showBoxes(result, image) {
  const img = new Image();
  img.onload = () => {
    const c = $("boxes");
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    const g = c.getContext("2d");
    g.drawImage(img, 0, 0);
    g.lineWidth = Math.max(2, c.width / 200);
    g.font = `${Math.max(12, c.width / 40)}px sans-serif`;
    for (const { box, label, score } of result.boxes) {
      const [x1, y1, x2, y2] = box;
      g.strokeStyle = g.fillStyle = "#ff3b30";
      g.strokeRect(x1, y1, x2 - x1, y2 - y1);
      g.fillText(`${label} ${score.toFixed(2)}`, x1 + 2, Math.max(12, y1 - 4));
    }
    c.classList.remove("hidden");
  };
  img.src = image;
  const best = result.boxes[0];
  $("top-label").textContent = best ? best.label : "nothing found";
  $("top-prob").textContent = `${result.boxes.length} box(es)`;
  $("bars").replaceChildren(...result.boxes.slice(0, state.topK).map((b) => bar({ label: b.label, probability: b.score })));
}

// ---- files: the upload button and drag-and-drop --------------------------------------------

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function useFile(file) {
  if (!file) return;
  const image = await readAsDataURL(file);
  showOnPad(image);
  const form = new FormData();
  form.append("files", file, file.name);
  form.append("top_k", String(state.topK));
  const send = async () => {
    const res = await call("/v1/predict", { method: "POST", body: form });
    const data = await res.json();
    if (!res.ok) throw new Error(data.error ? data.error.message : `HTTP ${res.status}`);
    return data;
  };
  await predict(send, "file", image);
  state.inked = true;
  explain(image);
}

function showOnPad(src) {
  const img = new Image();
  img.onload = () => {
    ctx.fillStyle = state.paper;
    ctx.fillRect(0, 0, pad.width, pad.height);
    state.strokes = []; // an image, not strokes: undo clears it
    const s = Math.min(pad.width / img.naturalWidth, pad.height / img.naturalHeight);
    const w = img.naturalWidth * s;
    const h = img.naturalHeight * s;
    ctx.imageSmoothingEnabled = s < 1; // keep small images' pixels crisp when enlarged
    ctx.drawImage(img, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
  };
  img.src = src;
}

$("file").addEventListener("change", (e) => useFile(e.target.files[0]));

const drop = $("drop");
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const type of ["dragleave", "drop"]) {
  drop.addEventListener(type, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  useFile(e.dataTransfer.files[0]);
});

loadModel().catch((err) => {
  $("status").textContent = `Could not load the model: ${err.message}`;
});
