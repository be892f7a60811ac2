// captionkit page: pick images, caption them with one or more models side by side. No libraries, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], files: [] };

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function loadModels() {
  const response = await fetch("/v1/models");
  const body = await response.json();
  state.models = body.models;
  const list = $("model-list");
  list.replaceChildren();
  body.models.forEach((model, index) => {
    const box = element("input", { type: "checkbox", value: model.name, name: "model" });
    box.checked = index < 2; // two models side by side by default (baseline vs fine-tuned)
    box.addEventListener("change", refreshControls);
    const note = `${model.family}, ${(model.parameters / 1e6).toFixed(2)}M params, ${model.device}`;
    list.append(element("label", { class: "model" }, box, ` ${model.name} `, element("small", {}, note)));
  });
  refreshControls();
}

function selectedModels() {
  const names = [...document.querySelectorAll("#model-list input:checked")].map((box) => box.value);
  return state.models.filter((model) => names.includes(model.name));
}

function refreshControls() {
  const models = selectedModels();
  // Styles every selected model knows; attention only when every selected model reports it.
  const styles = models.length ? models.map((m) => m.styles).reduce((a, b) => a.filter((s) => b.includes(s))) : ["neutral"];
  const styleSelect = $("style");
  const current = styleSelect.value;
  styleSelect.replaceChildren(...styles.map((s) => element("option", { value: s }, s)));
  if (styles.includes(current)) styleSelect.value = current;
  const attention = models.length > 0 && models.every((m) => m.attention);
  $("attention-toggle").hidden = !attention;
  if (!attention) $("attention").checked = false;
  const strategy = $("strategy").value;
  document.querySelectorAll(".beam-only").forEach((n) => (n.hidden = strategy !== "beam"));
  document.querySelectorAll(".sample-only").forEach((n) => (n.hidden = strategy !== "sample"));
  $("run").disabled = !(models.length && state.files.length);
}

function setFiles(files) {
  state.files = [...files].filter((file) => file.size > 0);
  $("drop").querySelector("strong").textContent = state.files.length
    ? `${state.files.length} image(s): ${state.files.map((f) => f.name).join(", ")}`
    : "Drop images here";
  refreshControls();
}

function parameters(model) {
  const strategy = $("strategy").value;
  const params = { model: model.name, max_length: $("max_length").value, n_best: $("n_best").value, style: $("style").value };
  if (strategy === "beam") params.num_beams = $("num_beams").value;
  if (strategy === "greedy") Object.assign(params, { num_beams: "1", n_best: "1" });
  if (strategy === "sample") {
    Object.assign(params, { do_sample: "true", temperature: $("temperature").value, top_k: $("top_k").value, top_p: $("top_p").value });
    if ($("seed").value !== "") params.seed = $("seed").value;
  }
  if ($("attention").checked) params.attention = "true";
  return params;
}

async function captionWith(model) {
  const form = new FormData();
  for (const file of state.files) form.append("image", file, file.name);
  for (const [key, value] of Object.entries(parameters(model))) form.append(key, value);
  const started = performance.now();
  const response = await fetch("/v1/captions", { method: "POST", body: form });
  const body = await response.json().catch(() => ({ detail: `HTTP ${response.status}` }));
  return { model, ok: response.ok, status: response.status, body, roundTrip: performance.now() - started };
}

function captionList(result) {
  const list = element("ol", { class: "nbest" });
  for (const caption of result.captions) {
    list.append(element("li", {}, element("span", { class: "text" }, caption.caption || "(empty)"),
      element("span", { class: "score", title: "mean log-probability per token" }, caption.score.toFixed(3))));
  }
  return list;
}

// Attention heatmaps: the same colour map as captionkit.attention (dark purple -> red -> orange -> pale yellow),
// scaled to each token's strongest weight and more opaque where the weight is high.
const COLOURS = [[0, 0, 4], [66, 10, 104], [147, 38, 103], [221, 81, 58], [252, 165, 10], [252, 255, 164]];
const MAP_WIDTH = 96;

function colour(value) {
  const position = Math.min(Math.max(value, 0), 1) * (COLOURS.length - 1);
  const low = Math.min(Math.floor(position), COLOURS.length - 2);
  const fraction = position - low;
  return COLOURS[low].map((c, i) => Math.round(c * (1 - fraction) + COLOURS[low + 1][i] * fraction));
}

function drawHeatmap(canvas, bitmap, grid) {
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  const rows = grid.length, cols = grid[0].length;
  const weights = grid.flat();
  const peak = Math.max(...weights) || 1;
  const small = element("canvas", { width: cols, height: rows });
  const pixels = small.getContext("2d").createImageData(cols, rows);
  weights.forEach((weight, i) => {
    const value = weight / peak;
    pixels.data.set([...colour(value), Math.round((0.15 + 0.6 * value) * 255)], i * 4);
  });
  small.getContext("2d").putImageData(pixels, 0, 0);
  context.imageSmoothingEnabled = true; // bilinear upsampling of the grid to the image
  context.imageSmoothingQuality = "high";
  context.drawImage(small, 0, 0, canvas.width, canvas.height);
}

function attentionStrip(file, attention) {
  const strip = element("div", { class: "attention", "aria-label": "attention per token" });
  const figures = attention.map(({ token }) => {
    const canvas = element("canvas", { class: "attention-map", width: MAP_WIDTH, height: MAP_WIDTH });
    const figure = element("figure", { title: token }, canvas, element("figcaption", {}, token || "·"));
    strip.append(figure);
    return canvas;
  });
  createImageBitmap(file).then((bitmap) => {
    const height = Math.max(1, Math.round((MAP_WIDTH * bitmap.height) / bitmap.width));
    figures.forEach((canvas, i) => {
      canvas.height = height;
      drawHeatmap(canvas, bitmap, attention[i].grid);
      canvas.dataset.drawn = "true";
    });
  });
  return strip;
}

// A refused request captions none of its images: each row says why for its own image, where the server's
// per-image errors name it, and that another image was refused where they do not.
function refusalOf(outcome, file) {
  const errors = outcome.body.errors || [];
  const own = errors.find((error) => error.image === file.name);
  if (own) return `${outcome.status}: ${own.error}`;
  if (errors.some((error) => "image" in error)) return `not captioned: another image of the request was refused (${outcome.status})`;
  return `${outcome.status}: ${outcome.body.detail}`;
}

function render(outcomes) {
  const results = $("results");
  results.replaceChildren();
  state.files.forEach((file, index) => {
    const thumb = element("img", { src: URL.createObjectURL(file), alt: file.name });
    const row = element("article", { class: "row" }, element("figure", {}, thumb, element("figcaption", {}, file.name)));
    const columns = element("div", { class: "columns" });
    for (const outcome of outcomes) {
      const card = element("div", { class: "card", "data-model": outcome.model.name }, element("h2", {}, outcome.model.name));
      if (outcome.ok) {
        const result = outcome.body.results[index];
        card.append(captionList(result));
        if (result.captions[0].attention) card.append(attentionStrip(file, result.captions[0].attention));
        card.append(element("p", { class: "latency" }, `${outcome.body.latency_ms.toFixed(0)} ms server, ${outcome.roundTrip.toFixed(0)} ms round trip`));
      } else {
        card.classList.add("error");
        card.append(element("p", {}, refusalOf(outcome, file)));
      }
      columns.append(card);
    }
    row.append(columns);
    results.append(row);
  });
}

async function run() {
  const models = selectedModels();
  $("run").disabled = true;
  $("status").textContent = `captioning with ${models.map((m) => m.name).join(", ")}…`;
  try {
    const outcomes = await Promise.all(models.map(captionWith));
    render(outcomes);
    const failed = outcomes.filter((o) => !o.ok).length;
    $("status").textContent = failed ? `${failed} model(s) refused the request` : "done";
  } catch (error) {
    $("status").textContent = `request failed: ${error}`;
  } finally {
    refreshControls();
  }
}

function wireDropZone() {
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    setFiles(event.dataTransfer.files);
  });
  drop.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") $("files").click(); });
  $("files").addEventListener("change", (event) => setFiles(event.target.files));
}

wireDropZone();
$("strategy").addEventListener("change", refreshControls);
$("run").addEventListener("click", run);
loadModels().catch((error) => { $("model-list").textContent = `cannot list models: ${error}`; });
