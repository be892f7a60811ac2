// captionkit page: pick images, caption them with one or more models side by side. No libraries, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], files: [], limits: null, thumbnails: [] };

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// A number control's value lowered to its maximum (an empty one stays empty: the server's default applies).
function withinMax(id) {
  const input = $(id);
  if (input.value !== "" && input.max !== "" && Number(input.value) > Number(input.max)) input.value = input.max;
}

async function loadModels() {
  const response = await fetch("v1/models");
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(`${response.status}: ${body.detail || response.statusText}`);
  state.models = body.models;
  state.limits = body.limits;
  $("num_beams").max = body.limits.max_beams;
  $("n_best").max = body.limits.max_n_best;
  ["num_beams", "n_best"].forEach(withinMax); // a server started with --max-beams 2 lowers the default of 4
  const list = $("model-list");
  list.replaceChildren();
  body.models.forEach((model, index) => {
    const box = element("input", { type: "checkbox", value: model.name, name: "model" });
    box.checked = index < 2; // two models side by side by default (baseline vs fine-tuned)
    box.addEventListener("change", refreshControls);
    list.append(element("label", { class: "model" }, box, ` ${model.name} `, element("small", {}, modelNote(model))));
  });
  refreshControls();
}

// A model trained with styles (one trained on positive and negative alone lists no neutral).
function isStyled(model) {
  return model.styles.some((style) => style !== "neutral");
}

// What a model is and which of the optional controls it takes, next to its checkbox.
function modelNote(model) {
  const takes = [];
  if (isStyled(model)) takes.push(`styles: ${model.styles.filter((s) => s !== "neutral").join(", ")}`);
  if (model.prompt) takes.push("prompt");
  if (model.attention) takes.push("attention");
  const size = `${(model.parameters / 1e6).toFixed(2)}M params`;
  return [model.family, size, model.device, ...takes].join(" · ");
}

function selectedModels() {
  const names = [...document.querySelectorAll("#model-list input:checked")].map((box) => box.value);
  return state.models.filter((model) => names.includes(model.name));
}

function refreshControls() {
  const models = selectedModels();
  refreshStyles(models);
  explain("prompt", models, (m) => m.prompt, "a prompt");
  explain("attention", models, (m) => m.attention, "attention maps");
  // The longest caption every selected model takes (a model with few positions takes fewer tokens).
  const lengths = models.map((m) => m.max_length);
  if (lengths.length) $("max_length").max = Math.min(...lengths);
  withinMax("max_length");
  const strategy = $("strategy").value;
  document.querySelectorAll(".beam-only").forEach((n) => (n.hidden = strategy !== "beam"));
  document.querySelectorAll(".sample-only").forEach((n) => (n.hidden = strategy !== "sample"));
  document.querySelectorAll(".not-greedy").forEach((n) => (n.hidden = strategy === "greedy")); // greedy: 1 caption
  $("run").disabled = !(models.length && state.files.length);
}

// Styles any selected model knows; each model is sent the style only if it knows it (the others caption neutral).
function refreshStyles(models) {
  const styles = [...new Set(["neutral", ...models.flatMap((m) => m.styles)])];
  const select = $("style");
  const current = select.value;
  select.replaceChildren(...styles.map((s) => element("option", { value: s }, s)));
  if (styles.includes(current)) select.value = current;
  select.disabled = styles.length === 1;
  const styled = models.filter(isStyled).map((m) => m.name);
  // A model trained without neutral refuses neutral captions: say so before the server does.
  const noNeutral = models.filter((m) => !m.styles.includes("neutral")).map((m) => m.name);
  if (select.value === "neutral" && noNeutral.length) {
    $("style-note").textContent = `${noNeutral.join(", ")}: no neutral captions (trained on styles alone); pick a style`;
    return;
  }
  $("style-note").textContent = select.disabled
    ? "no selected model was trained with styles"
    : styled.length < models.length ? `styles apply to ${styled.join(", ")}; the others caption neutral` : "";
}

// A control only some models take: disabled when no selected model takes it, and a note naming who does.
function explain(id, models, takes, what) {
  const takers = models.filter(takes).map((m) => m.name);
  const control = $(id);
  control.disabled = takers.length === 0;
  if (control.disabled && control.type === "checkbox") control.checked = false;
  let note = "";
  if (!takers.length) note = `no selected model takes ${what}`;
  else if (takers.length < models.length) note = `${what}: sent to ${takers.join(", ")} only`;
  $(`${id}-note`).textContent = note;
}

function setFiles(files) {
  state.files = [...files];
  $("drop").querySelector("strong").textContent = state.files.length
    ? `${state.files.length} image(s): ${state.files.map((f) => f.name).join(", ")}`
    : "Drop images here";
  refreshControls();
}

// The number inputs each strategy uses; an empty one is left out, so that the server's default applies.
const NUMBERS = { beam: ["num_beams", "length_penalty"], greedy: [], sample: ["temperature", "top_k", "top_p", "seed"] };

function numberInputs() {
  return ["max_length", "n_best", ...NUMBERS[$("strategy").value]].map($);
}

// A number field the browser could not read (its value is then ""): said, rather than sent as the default.
function unreadableNumber() {
  const bad = numberInputs().find((input) => input.validity.badInput);
  return bad ? `${bad.parentElement.textContent.trim()}: not a number` : null;
}

function parameters(model) {
  const params = { model: model.name };
  for (const input of numberInputs()) if (input.value.trim() !== "") params[input.id] = input.value.trim();
  const strategy = $("strategy").value;
  if (strategy === "greedy") Object.assign(params, { num_beams: "1", n_best: "1" });
  if (strategy === "sample") params.do_sample = "true";
  const style = $("style").value;
  if (style !== "neutral" && model.styles.includes(style)) params.style = style;
  const prompt = $("prompt").value.trim();
  if (prompt && model.prompt) params.prompt = prompt;
  if ($("attention").checked && model.attention) params.attention = "true";
  return params;
}

// Room a multipart part takes beyond the file's bytes (boundary, headers), and the parameters' part of a body.
const PART_BYTES = 1024;
const FORM_BYTES = 16 * 1024;

// The files' indices in groups the server takes in one request: at most max_images, within max_upload_bytes.
// A file over the limit on its own goes alone, and the server's 413 names it.
function requestGroups(files) {
  const room = state.limits.max_upload_bytes - FORM_BYTES;
  const groups = [];
  let group = [], size = 0;
  files.forEach((file, index) => {
    const bytes = file.size + PART_BYTES;
    if (group.length && (group.length === state.limits.max_images || size + bytes > room)) {
      groups.push(group);
      group = [];
      size = 0;
    }
    group.push(index);
    size += bytes;
  });
  if (group.length) groups.push(group);
  return groups;
}

// Seeded sampling: the server samples image j of a request from seed + j. So that a file's captions do not depend
// on how the files were split into requests, a request holds consecutive files and carries seed + its first
// file's index: file k samples from seed + k, as in one request of all the files. (A seed that is no integer goes
// as typed, for the server to refuse.)
function seedFor(params, first) {
  if (params.do_sample !== "true" || !/^-?\d+$/.test(params.seed ?? "")) return params;
  return { ...params, seed: String(BigInt(params.seed) + BigInt(first)) };
}

function consecutiveRuns(indices) {
  const runs = [];
  for (const index of indices) {
    const run = runs.at(-1);
    if (run && run.at(-1) === index - 1) run.push(index);
    else runs.push([index]);
  }
  return runs;
}

async function post(model, indices) {
  const form = new FormData();
  for (const index of indices) form.append("image", state.files[index], state.files[index].name);
  for (const [key, value] of Object.entries(seedFor(parameters(model), indices[0]))) form.append(key, value);
  const started = performance.now();
  let response;
  try {
    response = await fetch("v1/captions", { method: "POST", body: form });
  } catch (error) {
    return { ok: false, status: 0, body: { detail: `request failed: ${error.message}` } };
  }
  const body = await response.json().catch(() => ({ detail: `HTTP ${response.status} ${response.statusText}` }));
  const retryAfter = response.headers.get("retry-after");
  return { ok: response.ok, status: response.status, body, retryAfter, roundTrip: performance.now() - started };
}

// A refusal in one line: every bad parameter when there are several, and when to retry a busy server.
function describe(outcome) {
  const fields = (outcome.body.errors || []).filter((error) => "field" in error);
  const reason = fields.length > 1 ? fields.map((e) => `${e.field}: ${e.error}`).join("; ") : outcome.body.detail;
  const retry = outcome.retryAfter ? ` (server busy: retry in ${outcome.retryAfter} s)` : "";
  return outcome.status ? `${outcome.status}: ${reason}${retry}` : reason;
}

// One model's answers for the files at `indices`: file index -> {result, latency} or {error}. A request the
// server refuses for some of its images names them (by position); the others are sent again without them, as
// the API asks of its clients. A body too large for a proxy in front of the server (nginx takes 1 MiB by default,
// whatever --max-upload-mb says) is sent again in halves, down to one file, which is then refused on its own.
async function captionFiles(model, indices) {
  const outcome = await post(model, indices);
  const answers = new Map();
  if (outcome.status === 413 && indices.length > 1) {
    const half = Math.ceil(indices.length / 2); // consecutive halves: a seeded file k keeps seed + k
    for (const group of [indices.slice(0, half), indices.slice(half)]) {
      for (const [index, answer] of await captionFiles(model, group)) answers.set(index, answer);
    }
    return answers;
  }
  if (outcome.ok) {
    const latency = `${outcome.body.latency_ms.toFixed(0)} ms server, ${outcome.roundTrip.toFixed(0)} ms round trip`;
    outcome.body.results.forEach((result, i) => answers.set(indices[i], { result, latency }));
    return answers;
  }
  const refused = (outcome.body.errors || []).filter((error) => Number.isInteger(error.index));
  if (!refused.length) {
    const error = describe(outcome);
    for (const index of indices) answers.set(index, { error });
    return answers;
  }
  for (const bad of refused) answers.set(indices[bad.index], { error: `${outcome.status}: ${bad.error}` });
  const rest = indices.filter((index) => !answers.has(index));
  const resent = parameters(model).seed === undefined ? [rest] : consecutiveRuns(rest);
  for (const group of resent.filter((run) => run.length)) {
    for (const [index, answer] of await captionFiles(model, group)) answers.set(index, answer);
  }
  return answers;
}

// Every file with one model, a request per group in turn (not all at once: the server's queue is bounded).
async function captionAll(model, groups) {
  const answers = new Map();
  for (const group of groups) for (const [index, answer] of await captionFiles(model, group)) answers.set(index, answer);
  return { model, answers };
}

function captionList(result) {
  const list = element("ol", { class: "nbest" });
  for (const caption of result.captions) {
    const text = element("span", { class: "text" }, caption.caption || "(empty)");
    const score = element("span", { class: "score", title: "log-probability / length ** length penalty (1: per token)" });
    score.textContent = caption.score.toFixed(3);
    list.append(element("li", {}, element("div", { class: "line" }, text, score)));
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

// The grid covers `box` ([left, top, right, bottom] fractions: the crop the model saw); the rest of the image,
// which the model never saw, gets weight 0 (as the overlays `captionkit caption --attention-maps` writes).
function drawHeatmap(canvas, bitmap, grid, box) {
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
  const [left, top, right, bottom] = box.map((f, i) => Math.round(f * (i % 2 ? canvas.height : canvas.width)));
  const width = Math.max(right - left, 1), height = Math.max(bottom - top, 1);
  context.fillStyle = `rgba(${colour(0).join(", ")}, 0.15)`; // weight 0's tint, around the box only
  context.beginPath();
  context.rect(0, 0, canvas.width, canvas.height);
  context.rect(left, top, width, height);
  context.fill("evenodd");
  context.imageSmoothingEnabled = true; // bilinear upsampling of the grid to the box
  context.imageSmoothingQuality = "high";
  context.drawImage(small, left, top, width, height);
}

function attentionStrip(file, attention, box) {
  const strip = element("div", { class: "attention", "aria-label": "attention per token" });
  const figures = attention.map(({ token }) => {
    const canvas = element("canvas", { class: "attention-map", width: MAP_WIDTH, height: MAP_WIDTH, role: "img" });
    canvas.setAttribute("aria-label", `attention of the token ${JSON.stringify(token)}`);
    const figure = element("figure", { title: token }, canvas, element("figcaption", {}, token || "·"));
    strip.append(figure);
    return canvas;
  });
  createImageBitmap(file, { imageOrientation: "from-image" }).then((bitmap) => {
    const height = Math.max(1, Math.round((MAP_WIDTH * bitmap.height) / bitmap.width));
    figures.forEach((canvas, i) => {
      canvas.height = height;
      drawHeatmap(canvas, bitmap, attention[i].grid, box);
      canvas.dataset.drawn = "true";
    });
  });
  return strip;
}

// What a model was not sent of what the user asked (a style it lacks, a prompt it does not take).
function notSent(model) {
  const notes = [];
  const style = $("style").value;
  if (style !== "neutral" && !model.styles.includes(style)) notes.push(`no ${style} style: neutral caption`);
  if ($("prompt").value.trim() && !model.prompt) notes.push("takes no prompt");
  if ($("attention").checked && !model.attention) notes.push("no attention maps");
  return notes;
}

function card(model, file, answer) {
  const box = element("div", { class: "card", "data-model": model.name }, element("h2", {}, model.name));
  const notes = notSent(model);
  if (notes.length) box.append(element("p", { class: "note" }, notes.join("; ")));
  if (answer.error !== undefined) {
    box.classList.add("error");
    box.append(element("p", { class: "refusal" }, answer.error));
    return box;
  }
  box.append(captionList(answer.result));
  const attention = answer.result.captions[0].attention;
  if (attention) box.append(attentionStrip(file, attention, answer.result.attention_box ?? [0, 0, 1, 1]));
  box.append(element("p", { class: "latency" }, answer.latency));
  return box;
}

function render(outcomes) {
  const results = $("results");
  results.replaceChildren();
  state.thumbnails.forEach((url) => URL.revokeObjectURL(url)); // the last run's, or every run keeps its images
  state.thumbnails = state.files.map((file) => URL.createObjectURL(file));
  state.files.forEach((file, index) => {
    const thumb = element("img", { src: state.thumbnails[index], alt: file.name });
    const row = element("article", { class: "row" }, element("figure", {}, thumb, element("figcaption", {}, file.name)));
    const columns = element("div", { class: "columns" });
    for (const { model, answers } of outcomes) columns.append(card(model, file, answers.get(index)));
    row.append(columns);
    results.append(row);
  });
}

async function run() {
  const unreadable = unreadableNumber();
  if (unreadable) {
    $("status").textContent = unreadable;
    return;
  }
  const models = selectedModels();
  const groups = requestGroups(state.files);
  $("run").disabled = true;
  $("status").textContent = `captioning ${state.files.length} image(s) with ${models.map((m) => m.name).join(", ")}…`;
  try {
    const outcomes = await Promise.all(models.map((model) => captionAll(model, groups)));
    render(outcomes);
    const answers = outcomes.flatMap(({ answers }) => [...answers.values()]);
    const refused = answers.filter((answer) => answer.error !== undefined).length;
    $("status").textContent = refused ? `done; ${refused} of ${answers.length} refused (in red)` : "done";
  } catch (error) {
    $("status").textContent = `request failed: ${error.message}`;
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
  drop.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" && event.key !== " ") return;
    event.preventDefault(); // Space would scroll the page too
    $("files").click();
  });
  $("files").addEventListener("change", (event) => setFiles(event.target.files));
}

wireDropZone();
$("strategy").addEventListener("change", refreshControls);
$("style").addEventListener("change", refreshControls);
$("run").addEventListener("click", run);
loadModels().catch((error) => { $("model-list").textContent = `cannot list models: ${error.message}`; });
