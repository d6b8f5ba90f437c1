// The attention heatmap: a whole-head overview and a labelled window, drawn from uint8 colour indices.
// The same module draws in a notebook (anywidget) and in the standalone HTML page (export.js gives it a
// model of the same shape). Tokens are only ever written with textContent.
// LUT, MASKED, asU8 and h come from prelude.js, put in front of this file by the frontend loader.

/** Paint a rows × cols matrix of colour indices onto `canvas`, cells above the diagonal (key after query) grey.
 * rowStart/colStart place the matrix in the whole sequence, in cells.
 * @param {HTMLCanvasElement} canvas @param {Uint8Array} u8 @param {number} rows @param {number} cols
 * @param {number} [rowStart] @param {number} [colStart] @param {Uint32Array} [lut] the colours (DIVERGING for a
 * difference) */
export function paint(canvas, u8, rows, cols, rowStart = 0, colStart = 0, lut = LUT) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!rows || !cols || u8.length < rows * cols) return;
  const img = new ImageData(cols, rows);
  const out = new Uint32Array(img.data.buffer);
  for (let i = 0; i < rows; i++) {
    const q = rowStart + i;
    for (let j = 0; j < cols; j++) out[i * cols + j] = colStart + j > q ? MASKED : lut[u8[i * cols + j]];
  }
  blit(ctx, canvas, img);
}

/** A diverging scale for a difference (index 128 is 0): blue below, white at 0, red above; packed as LUT is.
 * @type {Uint32Array} */
const DIVERGING = (() => {
  const lut = new Uint32Array(256), blue = [33, 102, 172], white = [247, 247, 247], red = [178, 24, 43];
  for (let i = 0; i < 256; i++) {
    const [from, to, t] = i < 128 ? [blue, white, i / 128] : [white, red, (i - 128) / 127];
    const [r, g, b] = from.map((c, k) => Math.round(c + (to[k] - c) * t));
    lut[i] = (255 << 24) | (b << 16) | (g << 8) | r;
  }
  return lut;
})();

/** The colours of what the model draws: DIVERGING for a difference (`signed`), LUT otherwise.
 * @param {Model} model @returns {Uint32Array} */
const lutOf = (model) => (model.get("signed") ? DIVERGING : LUT);

/** A weight for reading: 3 significant digits, exponent notation below 1e-3.
 * @param {number} w @returns {string} */
export const fmt = (w) => (w === 0 ? "0" : Math.abs(w) < 1e-3 ? w.toExponential(2) : w.toPrecision(3));

/** A <select> of [value, label] options that calls `onChange` with the chosen value.
 * @param {Array<[string | number, string]>} options @param {(value: string) => void} onChange
 * @returns {HTMLSelectElement} */
function select(options, onChange) {
  const s = h("select", { marginRight: "10px" });
  for (const [value, label] of options) s.append(Object.assign(h("option", {}, label), { value: String(value) }));
  s.addEventListener("change", () => onChange(s.value));
  return s;
}

/** The legend: a vertical colour bar with tick values (linear or by decades), under `title`; `signed`: a
 * diverging bar from +scale (top) through 0 to −scale.
 * @param {HTMLElement} box @param {number} scale @param {boolean} log @param {number} decades @param {string} title
 * @param {boolean} [signed] */
function drawLegend(box, scale, log, decades, title, signed = false) {
  box.replaceChildren();
  const H = 200;
  const bar = h("canvas", { width: "14px", height: H + "px", display: "block" });
  bar.width = 1;
  bar.height = 256;
  const img = new ImageData(1, 256);
  const out = new Uint32Array(img.data.buffer);
  for (let i = 0; i < 256; i++) out[i] = (signed ? DIVERGING : LUT)[255 - i];
  bar.getContext("2d").putImageData(img, 0, 0);
  const ticks = h("div", { position: "relative", height: H + "px", width: "64px", font: "11px sans-serif" });
  const n = log ? Math.round(decades) : 2;
  const signedTicks = [[0, "+" + fmt(scale)], [0.5, "0"], [1, "−" + fmt(scale)]];
  if (log && signed) signedTicks.splice(1, 1, [0.5 - 0.5 / decades, `±${fmt(scale * 10 ** -decades)}`]);
  for (const [frac, label] of signed ? signedTicks : []) {
    ticks.append(h("div", { position: "absolute", left: "4px", top: `${frac * H - 7}px` }, label));
  }
  for (let d = 0; d <= (signed ? -1 : n); d++) {
    const frac = d / n; // 0 at the top
    const value = log ? scale * 10 ** -d : scale * (1 - frac);
    const label = (log && d === n ? "≤ " : "") + String(Number(value.toPrecision(2)));
    ticks.append(h("div", { position: "absolute", left: "4px", top: `${frac * H - 7}px` }, label));
  }
  const row = h("div", { display: "flex" });
  row.append(bar, ticks);
  box.append(h("div", { font: "11px sans-serif", marginBottom: "9px" }, log ? `${title} (log)` : title), row);
}

/** Room for the row labels (left), the column labels (above) and the overview's side, in CSS pixels. */
const LABEL_W = 110, LABEL_H = 84, OVERVIEW_PX = 240;

/** What each kind draws: the picker's label, the value's name (legend, tooltip), and a note under the pickers.
 * "norm" is offered only by traces with value norms (`kinds`; the standalone page sends them too). */
const KINDS = {
  raw: { label: "attention", value: "weight", note: "" },
  norm: { label: "value-weighted", value: "α·‖vW_O‖",
    note: "Value-weighted: each weight times the size of what its key writes, ‖v_j W_O‖ (Kobayashi et al. 2020). "
      + "Not probabilities: colours scale to this head's largest value." },
  no_position: { label: "position taken out", value: "weight without position",
    note: "Position taken out: this head's pattern with its positional term removed, exactly, from the stored queries "
      + "and keys (rotary undone with the layer's own cos/sin; ALiBi's distance bias dropped). What content alone "
      + "would make this head attend to. The tooltip shows both weights." },
  position_effect: { label: "position's effect (attention − taken out)", value: "attention − without position",
    note: "What position does to this head: attention minus the same head with its positional term taken out. Red: "
      + "position adds weight there; blue: it takes weight away. Colours scale to the largest change." },
  rollout: { label: "rollout (all layers)", value: "rollout",
    note: "Attention rollout (Abnar & Zuidema 2020): every layer's mean attention, with the residual stream, "
      + "multiplied through the model. One matrix for the whole model: the layer and head pickers do not apply." },
};
/** Why a kind is not offered (value-weighted; kinds of position are left out of the picker instead). */
const NO_NORMS = "This trace has no value norms, so no value-weighted attention: capture it again with this version "
  + "of attention-explorer (models whose attention it cannot read have none).";

/** The kind the model draws ("raw" when the model has no kind).
 * @param {Model} model @returns {string} */
const kindOf = (model) => model.get("kind") ?? "raw";
/** The pickers above the heatmap (kindSel null for a model with no kinds), and the note under them.
 * @typedef {{ box: HTMLDivElement, kindSel: HTMLSelectElement | null, layerSel: HTMLSelectElement,
 *   headSel: HTMLSelectElement, sizeSel: HTMLSelectElement, logBox: HTMLInputElement, slider: HTMLInputElement,
 *   note: HTMLDivElement }} Controls */

/** One heatmap view: its model, its elements and the little state its drawing and events share.
 * cell is the window's cell size in CSS pixels; labelKey says which labels are built; asked is the overview
 * block whose largest weight the tooltip waits for.
 * @typedef {{ model: Model, el: HTMLElement, T: number, controls: Controls, overview: HTMLCanvasElement,
 *   ovCaption: HTMLDivElement, grid: HTMLDivElement, canvas: HTMLCanvasElement, rowLabels: HTMLDivElement,
 *   colLabels: HTMLDivElement, legend: HTMLDivElement, readout: HTMLDivElement, tip: HTMLDivElement,
 *   draws: number, cell: number, labelKey: string, pending: boolean,
 *   asked: [number, number] | null }} HeatmapView */

/** Set the traits in `pairs` on the model and send them in one message.
 * @param {Model} model @param {Array<[string, any]>} pairs */
function save(model, pairs) {
  for (const [k, v] of pairs) model.set(k, v);
  model.save_changes();
}

/** Token `i` for reading: its position and its text.
 * @param {HeatmapView} v @param {number} i @returns {string} */
const token = (v, i) => `${i} “${v.model.get("tokens")[i]}”`;

/** The [query, key] where the window bytes start: Python sends window_at with them; the standalone page has
 * window_start/key_start.
 * @param {HeatmapView} v @returns {[number, number]} */
const origin = (v) => v.model.get("window_at") ?? [v.model.get("window_start"), v.model.get("key_start")];

/** The picker of what to draw: raw, value-weighted (greyed out, saying why, without value norms) or rollout;
 * null when the model offers no kinds.
 * @param {Model} model @returns {HTMLSelectElement | null} */
function buildKindPicker(model) {
  const kinds = model.get("kinds");
  if (!Array.isArray(kinds)) return null;
  const sel = select(Object.entries(KINDS).map(([k, d]) => [k, d.label]), (v) => save(model, [["kind", v]]));
  sel.title = "what the heatmap shows";
  for (const option of [...sel.options]) {
    if (kinds.includes(option.value)) continue;
    if (option.value !== "norm") { option.remove(); continue; } // no positional term of its own in any layer
    option.disabled = true;
    option.textContent += " (no norms)";
    option.title = NO_NORMS;
    sel.title += "\nvalue-weighted: " + NO_NORMS;
  }
  return sel;
}

/** The pickers: what to draw, layer, head, window size, log scale and the slider that moves the window.
 * @param {Model} model @param {number} T the number of tokens @returns {Controls} */
function buildControls(model, T) {
  const get = (k) => model.get(k);
  const box = h("div", { marginBottom: "6px", display: "flex", alignItems: "center", flexWrap: "wrap" });
  const kindSel = buildKindPicker(model);
  const layerSel = select([...Array(get("n_layers")).keys()].map((l) => [l, `layer ${l}`]),
    (v) => save(model, [["layer", +v]]));
  const headSel = select([[-1, "mean of heads"], ...[...Array(get("n_heads")).keys()].map((x) => [x, `head ${x}`])],
    (v) => save(model, [["head", +v < 0 ? null : +v]]));
  const sizes = [16, 32, 64, 128, 256].filter((s) => s < T).concat([Math.min(T, 256)]);
  if (!sizes.includes(get("window_size"))) sizes.push(get("window_size"));
  const sizeSel = select(sizes.sort((a, b) => a - b).map((s) => [s, `window ${s}`]),
    (v) => save(model, [["window_size", +v]]));
  const logBox = Object.assign(h("input"), { type: "checkbox" });
  logBox.addEventListener("change", () => save(model, [["log_scale", logBox.checked]]));
  const slider = Object.assign(h("input", { width: "220px" }), { type: "range", min: "0", step: "1" });
  slider.addEventListener("input", () => save(model, [["window_start", +slider.value], ["key_start", +slider.value]]));
  const logLabel = h("label", { marginRight: "10px" });
  logLabel.append(logBox, document.createTextNode(" log scale"));
  if (kindSel) box.append(kindSel);
  box.append(layerSel, headSel, sizeSel, logLabel, h("span", { marginRight: "4px" }, "move window"), slider);
  [kindSel, layerSel, headSel, sizeSel, logBox, slider].forEach((c, i) => c?.classList.add(
    ["ae-kind", "ae-layer", "ae-head", "ae-size", "ae-log", "ae-slider"][i]));
  const note = h("div", { font: "11px sans-serif", color: "#555", margin: "-2px 0 6px", maxWidth: "900px" });
  note.classList.add("ae-kind-note");
  return { box, kindSel, layerSel, headSel, sizeSel, logBox, slider, note };
}

/** The hover tooltip, placed by `placeTip`.
 * @returns {HTMLDivElement} */
function buildTip() {
  const tip = h("div", { position: "absolute", pointerEvents: "none", display: "none", zIndex: 10,
    background: "rgba(0,0,0,.82)", color: "#fff", font: "12px monospace", padding: "3px 6px",
    borderRadius: "3px", whiteSpace: "pre" });
  tip.classList.add("ae-tip");
  return tip;
}

/** Build the view's elements in `el`: the controls, then overview | window with labels | legend, the readout
 * and the tooltip.
 * @param {Model} model @param {HTMLElement} el @returns {HeatmapView} */
function build(model, el) {
  el.classList.add("ae-heatmap");
  Object.assign(el.style, { position: "relative", font: "12px sans-serif", color: "#222" });
  const T = model.get("tokens").length;
  const controls = buildControls(model, T);
  const body = h("div", { display: "flex", alignItems: "flex-start", gap: "14px", overflowX: "auto" });
  // nothing shrinks: on a narrow page the row scrolls instead of the legend being squeezed under the window
  const ovBox = h("div", { marginTop: LABEL_H + "px", flexShrink: 0 });
  const overview = h("canvas", { width: OVERVIEW_PX + "px", height: OVERVIEW_PX + "px", cursor: "pointer",
    imageRendering: "pixelated", display: "block", border: "1px solid #ccc" });
  overview.classList.add("ae-overview");
  const ovCaption = h("div", { font: "11px sans-serif", color: "#555", maxWidth: OVERVIEW_PX + "px" });
  ovBox.append(overview, ovCaption);
  const grid = h("div", { position: "relative", flexShrink: 0 });
  const canvas = h("canvas", { position: "absolute", left: LABEL_W + "px", top: LABEL_H + "px",
    imageRendering: "pixelated", cursor: "crosshair" });
  canvas.classList.add("ae-window");
  const rowLabels = h("div"), colLabels = h("div");
  // each row's share on a learned sink (GPT-OSS), one more column right of the window, apart
  const sink = h("canvas", { position: "absolute", top: LABEL_H + "px", imageRendering: "pixelated",
    cursor: "crosshair", display: "none", border: "1px solid #888" });
  sink.classList.add("ae-sink");
  const sinkLabel = h("div", { position: "absolute", top: LABEL_H - 16 + "px", font: "11px sans-serif",
    display: "none" }, "sink");
  grid.append(colLabels, rowLabels, canvas, sink, sinkLabel);
  const legend = h("div", { marginTop: LABEL_H + "px", flexShrink: 0 });
  body.append(ovBox, grid, legend);
  const readout = h("div", { marginTop: "6px", minHeight: "16px" });
  readout.classList.add("ae-readout");
  const profile = buildProfile();
  const tip = buildTip();
  el.append(controls.box, controls.note, body, readout, profile.box, tip);
  return { model, el, T, controls, overview, ovCaption, grid, canvas, sink, sinkLabel, rowLabels, colLabels, legend,
    readout, profile, tip, draws: 0, profileDraws: 0, cell: 10, labelKey: "", pending: false, asked: null };
}

/** The distance profile's size in CSS pixels, and its margins for the axes. */
const PROFILE_W = 520, PROFILE_H = 170, PROFILE_M = { left: 46, right: 12, top: 10, bottom: 30 };
/** The two lines of the distance profile: raw attention, and the head with its positional term taken out. */
const PROFILE_LINES = [{ name: "attention", colour: "#1f4e99", dash: [] },
  { name: "position taken out", colour: "#d9730d", dash: [5, 3] }];

/** The box under the heatmap for the selected head's attention by distance: a title, a canvas, a legend line.
 * @returns {{ box: HTMLDivElement, title: HTMLDivElement, canvas: HTMLCanvasElement, key: HTMLDivElement }} */
function buildProfile() {
  const box = h("div", { marginTop: "10px", width: PROFILE_W + "px" });
  box.classList.add("ae-profile");
  const title = h("div", { font: "12px sans-serif", marginBottom: "3px" });
  const canvas = h("canvas", { width: PROFILE_W + "px", height: PROFILE_H + "px", display: "block" });
  canvas.classList.add("ae-profile-chart");
  const key = h("div", { font: "11px sans-serif", color: "#444", marginTop: "2px" });
  key.classList.add("ae-profile-key");
  box.append(title, canvas, key);
  return { box, title, canvas, key };
}

/** The float32 values of a binary trait (little-endian), or an empty array.
 * @param {any} bytes @returns {Float32Array} */
function floats(bytes) {
  if (!bytes || !bytes.byteLength) return new Float32Array(0);
  const u8 = asU8(bytes), out = new Float32Array(u8.byteLength / 4), dv = new DataView(u8.buffer, u8.byteOffset, u8.byteLength);
  for (let i = 0; i < out.length; i++) out[i] = dv.getFloat32(i * 4, true);
  return out;
}

/** The selected head's mean weight by distance d = i − j (d = 0..D), raw and with position taken out, the first
 * position's share written apart; hidden for the rollout and where there is no profile (the mean of heads).
 * @param {HeatmapView} v */
function drawProfile(v) {
  const get = (k) => v.model.get(k), p = v.profile;
  const n = get("profile_n") ?? 0, of = get("profile_of") ?? "";
  if (!n || !of || kindOf(v.model) === "rollout") {
    p.box.style.display = get("profile_n") === undefined || kindOf(v.model) === "rollout" ? "none" : "";
    p.title.textContent = "attention by distance: pick one head (not the mean of heads) to see it";
    p.canvas.style.display = p.key.style.display = "none";
    return;
  }
  p.box.style.display = p.canvas.style.display = p.key.style.display = "";
  const values = floats(get("profile")), lines = [values.subarray(0, n), values.subarray(n, 2 * n)];
  const [layer, head] = of.split(" ");
  p.title.textContent = `layer ${layer} head ${head}: mean weight on the key d tokens back (d = i − j), `
    + "the first position apart";
  const dpr = window.devicePixelRatio || 1, c = p.canvas, ctx = c.getContext("2d");
  c.width = Math.round(PROFILE_W * dpr);
  c.height = Math.round(PROFILE_H * dpr);
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, PROFILE_W, PROFILE_H);
  const M = PROFILE_M, w = PROFILE_W - M.left - M.right, hgt = PROFILE_H - M.top - M.bottom;
  let top = 0;
  for (const line of lines) for (const x of line) if (Number.isFinite(x)) top = Math.max(top, x);
  top = top || 1;
  const X = (d) => M.left + (n > 1 ? (d / (n - 1)) * w : 0), Y = (y) => M.top + hgt * (1 - y / top);
  ctx.strokeStyle = "#999";
  ctx.lineWidth = 1;
  ctx.strokeRect(M.left, M.top, w, hgt);
  ctx.fillStyle = "#333";
  ctx.font = "10px sans-serif";
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  const step = n > 32 ? 16 : n > 8 ? 4 : 1;
  for (let d = 0; d < n; d += step) ctx.fillText(String(d), X(d), M.top + hgt + 3);
  ctx.fillText("distance d = i − j (tokens back)", M.left + w / 2, M.top + hgt + 16);
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const f of [0, 0.5, 1]) ctx.fillText(fmt(top * f), M.left - 4, Y(top * f));
  lines.forEach((line, k) => {
    const style = PROFILE_LINES[k];
    ctx.strokeStyle = style.colour;
    ctx.lineWidth = 1.6;
    ctx.setLineDash(style.dash);
    ctx.beginPath();
    let drawn = 0;
    line.forEach((y, d) => {
      if (!Number.isFinite(y)) return;
      if (drawn++) ctx.lineTo(X(d), Y(y)); else ctx.moveTo(X(d), Y(y));
    });
    ctx.stroke();
    ctx.setLineDash([]);
  });
  const first = get("profile_first") ?? [];
  const has = (k) => Number.isFinite(lines[k][0]);
  p.key.replaceChildren(...PROFILE_LINES.filter((_, k) => has(k)).map((style, k) => {
    const e = h("span", { marginRight: "14px", color: style.colour }, `${k ? "╌╌" : "──"} ${style.name}`
      + (first[k] == null ? "" : ` (on the first position: ${fmt(first[k])})`));
    e.classList.add("ae-profile-line");
    return e;
  }), ...(has(1) ? [] : [h("span", {}, "(this layer has no positional term of its own to take out)")]));
  v.profileDraws += 1;
  Object.assign(v.el.dataset, { profileDrawCount: v.profileDraws, profileOf: of });
}

/** The whole head, with the window outlined in red, and its caption.
 * @param {HeatmapView} v @param {number} r0 @param {number} c0 @param {number} dpr */
function drawOverview(v, r0, c0, dpr) {
  const get = (k) => v.model.get(k), { overview } = v;
  const f = get("overview_factor"), n = get("overview_n"), ws = get("window_size");
  overview.width = overview.height = Math.round(OVERVIEW_PX * dpr);
  paint(overview, asU8(get("overview")), n, n, 0, 0, lutOf(v.model));
  const ctx = overview.getContext("2d"), s = overview.width / n;
  ctx.strokeStyle = "#ff3b30";
  ctx.lineWidth = 2 * dpr;
  ctx.strokeRect((c0 / f) * s, (r0 / f) * s, Math.max(2, (ws / f) * s), Math.max(2, (ws / f) * s));
  const what = kindOf(v.model) === "rollout" ? "the whole rollout" : "whole head";
  v.ovCaption.textContent = `${what}, ${v.T} tokens` + (f > 1 ? `: each pixel is the max of ${f}×${f} values` : "")
    + "; click to move the window";
}

/** The window's cells, the selected token's row and column outlined in red; sets the cell size.
 * @param {HeatmapView} v @param {number} r0 @param {number} c0 @param {number} dpr */
function drawWindow(v, r0, c0, dpr) {
  const get = (k) => v.model.get(k), { canvas } = v;
  const rows = get("window_rows"), cols = get("window_cols");
  const cell = v.cell = Math.max(2, Math.min(18, Math.floor(640 / Math.max(rows, cols, 1))));
  canvas.style.width = cols * cell + "px";
  canvas.style.height = rows * cell + "px";
  canvas.width = cols * cell * dpr;
  canvas.height = rows * cell * dpr;
  paint(canvas, asU8(get("window")), rows, cols, r0, c0, lutOf(v.model));
  const sel = get("selected_token");
  const w = canvas.getContext("2d"), px = cell * dpr;
  w.strokeStyle = "#ff3b30";
  w.lineWidth = Math.max(1, dpr);
  if (sel !== null && sel >= r0 && sel < r0 + rows) w.strokeRect(0, (sel - r0) * px, canvas.width, px);
  if (sel !== null && sel >= c0 && sel < c0 + cols) w.strokeRect((sel - c0) * px, 0, px, canvas.height);
  const sinkBytes = get("window_sink"), hasSink = !!sinkBytes && sinkBytes.byteLength === rows;
  const gap = hasSink ? 8 : 0, sinkW = hasSink ? Math.max(cell, 12) : 0;
  for (const e of [v.sink, v.sinkLabel]) {
    e.style.display = hasSink ? "" : "none";
    e.style.left = LABEL_W + cols * cell + gap + "px";
  }
  if (hasSink) {
    v.sink.style.width = sinkW + "px";
    v.sink.style.height = rows * cell + "px";
    v.sink.width = Math.round(sinkW * dpr);
    v.sink.height = rows * cell * dpr;
    paint(v.sink, asU8(sinkBytes), rows, 1, Infinity, 0, lutOf(v.model)); // a sink is never masked
  }
  v.grid.style.width = LABEL_W + cols * cell + gap + sinkW + 2 + "px";
  v.grid.style.height = LABEL_H + rows * cell + "px";
}

/** One token label, a row's (left of the window) or a column's (above it, vertical); a click selects it.
 * @param {HeatmapView} v @param {number} pos the token's position @param {number} i its place in the window
 * @param {boolean} vertical @param {number} every one label for this many cells */
function tokenLabel(v, pos, i, vertical, every) {
  const np = v.model.get("n_prompt"), sel = v.model.get("selected_token"), cell = v.cell;
  const font = Math.min(12, Math.max(cell, 9) - 1);
  const e = h("div", { position: "absolute", overflow: "hidden", textOverflow: "ellipsis", whiteSpace: "nowrap",
    font: `${font}px sans-serif`, cursor: "pointer", color: pos >= np ? "#b35900" : "#222",
    fontWeight: pos === sel ? "bold" : "normal", background: pos === sel ? "#ffe58a" : "" },
  v.model.get("tokens")[pos]);
  e.title = `#${pos}${pos >= np ? " (generated)" : ""}`;
  e.dataset.pos = String(pos);
  e.className = vertical ? "ae-col-label" : "ae-row-label";
  if (vertical) Object.assign(e.style, { left: LABEL_W + i * cell + "px", top: "0px", width: cell * every + "px",
    height: LABEL_H - 2 + "px", writingMode: "vertical-rl", transform: "rotate(180deg)", lineHeight: cell + "px" });
  else Object.assign(e.style, { left: "0px", top: LABEL_H + i * cell + "px", width: LABEL_W - 4 + "px",
    height: cell * every + "px", lineHeight: cell + "px", textAlign: "right" });
  e.addEventListener("click", () => save(v.model, [["selected_token", pos]]));
  return e;
}

/** The row and column token labels of the window, rebuilt only when they change.
 * @param {HeatmapView} v @param {number} r0 @param {number} c0 */
function drawLabels(v, r0, c0) {
  const rows = v.model.get("window_rows"), cols = v.model.get("window_cols");
  const key = [r0, c0, rows, cols, v.cell, v.model.get("selected_token")].join();
  if (key === v.labelKey) return;
  v.labelKey = key;
  const every = Math.ceil(9 / v.cell);
  const pick = (n) => [...Array(n).keys()].filter((i) => i % every === 0);
  v.rowLabels.replaceChildren(...pick(rows).map((i) => tokenLabel(v, r0 + i, i, false, every)));
  v.colLabels.replaceChildren(...pick(cols).map((i) => tokenLabel(v, c0 + i, i, true, every)));
}

/** The line under the heatmap: the selected token, or how to select one.
 * @param {HeatmapView} v */
function drawReadout(v) {
  const sel = v.model.get("selected_token");
  v.readout.textContent = sel === null ? "click a token label or a cell to select a token"
    : `selected token ${token(v, sel)}${sel >= v.model.get("n_prompt") ? " (generated)" : ""}`;
}

/** The note under the pickers: what the kind drawn means, and what Python is computing, while it is.
 * @param {HeatmapView} v */
function drawNote(v) {
  const busy = v.model.get("busy") ?? "", note = KINDS[kindOf(v.model)]?.note ?? "";
  const problem = v.model.get("problem") ?? "";
  const text = busy || (problem ? `${problem}. Still showing what was drawn before.` : note);
  v.controls.note.textContent = text;
  v.controls.note.style.display = text ? "" : "none";
  v.controls.note.style.color = busy ? "#b35900" : problem ? "#b00020" : "#555";
  v.controls.note.classList.toggle("ae-problem", !busy && !!problem);
}

/** The pickers show the model's values, wherever they were changed.
 * @param {HeatmapView} v */
function syncControls(v) {
  const get = (k) => v.model.get(k), c = v.controls;
  const ws = get("window_size");
  const rollout = kindOf(v.model) === "rollout";
  if (c.kindSel) c.kindSel.value = kindOf(v.model);
  c.layerSel.value = String(get("layer"));
  c.headSel.value = String(get("head") ?? -1);
  for (const s of [c.layerSel, c.headSel]) {
    s.disabled = rollout;
    s.title = rollout ? "the rollout combines all layers and heads" : "";
  }
  c.sizeSel.value = String(ws);
  c.logBox.checked = get("log_scale");
  c.slider.max = String(Math.max(0, v.T - ws));
  c.slider.value = String(get("window_start"));
}

/** Draw everything from the model's current state, and note the draw in el's data-* attributes.
 * @param {HeatmapView} v */
function draw(v) {
  const t0 = performance.now(), get = (k) => v.model.get(k);
  const dpr = window.devicePixelRatio || 1;
  const [r0, c0] = origin(v);
  drawOverview(v, r0, c0, dpr);
  drawWindow(v, r0, c0, dpr);
  drawLabels(v, r0, c0);
  const [layer, head, kind] = get("shows") === "rollout" ? ["", "", "rollout"] : get("shows").split(" ");
  drawLegend(v.legend, get("scale"), get("log_scale"), get("log_decades"), KINDS[kind ?? "raw"]?.value ?? "weight",
    !!get("signed"));
  syncControls(v);
  drawNote(v);
  drawReadout(v);
  drawProfile(v);
  v.draws += 1;
  Object.assign(v.el.dataset, { drawCount: v.draws, drawnAt: performance.now(), drawMs: (performance.now() - t0).toFixed(1),
    layer, head, kind: kind ?? "raw", windowStart: r0, keyStart: c0 });
}

/** Draw once for all the traits one message changes.
 * @param {HeatmapView} v */
function schedule(v) {
  if (v.pending) return;
  v.pending = true;
  queueMicrotask(() => { v.pending = false; draw(v); });
}

/** Show the tooltip next to the pointer.
 * @param {HeatmapView} v @param {MouseEvent} ev */
function placeTip(v, ev) {
  const r = v.el.getBoundingClientRect();
  v.tip.style.left = ev.clientX - r.left + 14 + "px";
  v.tip.style.top = ev.clientY - r.top + 14 + "px";
  v.tip.style.display = "block";
}

/** The [row, column] of the window cell under the pointer, or null.
 * @param {HeatmapView} v @param {MouseEvent} ev @returns {[number, number] | null} */
function windowCell(v, ev) {
  const r = v.canvas.getBoundingClientRect();
  const i = Math.floor((ev.clientY - r.top) / v.cell), j = Math.floor((ev.clientX - r.left) / v.cell);
  return i >= 0 && j >= 0 && i < v.model.get("window_rows") && j < v.model.get("window_cols") ? [i, j] : null;
}

/** The [row, column] of the overview block under the pointer, or null.
 * @param {HeatmapView} v @param {MouseEvent} ev @returns {[number, number] | null} */
function overviewCell(v, ev) {
  const r = v.overview.getBoundingClientRect(), n = v.model.get("overview_n");
  const row = Math.floor(((ev.clientY - r.top) / r.height) * n), col = Math.floor(((ev.clientX - r.left) / r.width) * n);
  return row >= 0 && col >= 0 && row < n && col < n ? [row, col] : null;
}

/** The tooltip over a window cell: its query, its key and the exact weight (or why it is masked).
 * @param {HeatmapView} v @param {MouseEvent} ev */
function showCellTip(v, ev) {
  const c = windowCell(v, ev);
  if (!c) { v.tip.style.display = "none"; return; }
  const [i, j] = c, q = origin(v)[0] + i, k = origin(v)[1] + j;
  const exact = v.model.get("window_exact"), cols = v.model.get("window_cols"), raw = v.model.get("window_raw");
  const at = (bytes) => new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getFloat32((i * cols + j) * 4, true);
  const shown = (v.model.get("shows") ?? "").split(" ")[2] ?? kindOf(v.model);
  let text = `query ${token(v, q)}\nkey   ${token(v, k)}\n`;
  if (k > q) text += "masked: a token cannot attend to later tokens";
  else if (raw && raw.byteLength === exact.byteLength && (shown === "no_position" || shown === "position_effect")) {
    const a = at(raw), e = at(exact), free = shown === "no_position" ? e : a - e;
    text += `weight               ${fmt(a)}\nwithout position     ${fmt(free)}\n`
      + `position's effect    ${a - free >= 0 ? "+" : ""}${fmt(a - free)}`;
  } else text += (KINDS[shown]?.value ?? "weight") + " " + fmt(at(exact));
  v.tip.textContent = text;
  placeTip(v, ev);
}

/** The tooltip over the sink column: the row's query and its share on the learned sink.
 * @param {HeatmapView} v @param {MouseEvent} ev */
function showSinkTip(v, ev) {
  const r = v.sink.getBoundingClientRect(), i = Math.floor((ev.clientY - r.top) / v.cell);
  const exact = v.model.get("window_sink_exact");
  if (!exact || i < 0 || i * 4 >= exact.byteLength) { v.tip.style.display = "none"; return; }
  const share = new DataView(exact.buffer, exact.byteOffset, exact.byteLength).getFloat32(i * 4, true);
  const what = { no_position: " (position taken out)", position_effect: " (position's effect)" }[kindOf(v.model)] ?? "";
  v.tip.textContent = `query ${token(v, origin(v)[0] + i)}\nshare on the learned sink${what} ${fmt(share)}\n`
    + "(one more logit in the softmax, over no key:\n the row's weights sum to 1 − this)";
  placeTip(v, ev);
}

/** The tooltip over an overview block: its spans of queries and keys; asks Python for its largest weight.
 * @param {HeatmapView} v @param {MouseEvent} ev */
function showBlockTip(v, ev) {
  const c = overviewCell(v, ev);
  if (!c) { v.tip.style.display = "none"; return; }
  const f = v.model.get("overview_factor"), last = v.T - 1, [row, col] = c;
  const span = (a) => (f === 1 ? `${a * f}` : `${a * f}–${Math.min(last, a * f + f - 1)}`);
  placeTip(v, ev);
  if (col > row) { v.tip.textContent = `queries ${span(row)}, keys ${span(col)}: masked`; v.asked = null; return; }
  if (v.asked && v.asked[0] === row && v.asked[1] === col) return;
  v.asked = [row, col];
  v.tip.textContent = `queries ${span(row)}, keys ${span(col)}\nlargest ${KINDS[kindOf(v.model)].value}: …`;
  v.model.send({ kind: "block", row, col });
}

/** Python's answer to `showBlockTip`: the block's largest weight and where it is, if still asked for.
 * @param {HeatmapView} v @param {any} msg */
function showBlockWeight(v, msg) {
  const { asked } = v;
  if (!msg || msg.kind !== "block" || !asked || msg.row !== asked[0] || msg.col !== asked[1]) return;
  const kind = kindOf(v.model);
  if ((msg.of ?? "raw") !== kind) return;
  if (kind !== "rollout" && (msg.layer !== v.model.get("layer") || msg.head !== v.model.get("head"))) return;
  v.tip.textContent = v.tip.textContent.replace("…",
    `${fmt(msg.weight)}\n  query ${token(v, msg.query)}\n  key   ${token(v, msg.key)}`);
}

/** A click on the overview: centre the window on the block clicked.
 * @param {HeatmapView} v @param {MouseEvent} ev */
function moveWindowTo(v, ev) {
  const c = overviewCell(v, ev);
  if (!c) return;
  const f = v.model.get("overview_factor"), ws = v.model.get("window_size"), top = Math.max(0, v.T - ws);
  const at = (x) => Math.max(0, Math.min(top, Math.round(x * f + f / 2 - ws / 2)));
  save(v.model, [["window_start", at(c[0])], ["key_start", at(c[1])]]);
}

/** Hover and click on the window and the overview.
 * @param {HeatmapView} v */
function listen(v) {
  v.canvas.addEventListener("mousemove", (ev) => showCellTip(v, ev));
  v.canvas.addEventListener("click", (ev) => {
    const c = windowCell(v, ev);
    if (c) save(v.model, [["selected_token", origin(v)[0] + c[0]]]);
  });
  v.overview.addEventListener("mousemove", (ev) => showBlockTip(v, ev));
  v.sink.addEventListener("mousemove", (ev) => showSinkTip(v, ev));
  v.sink.addEventListener("mouseleave", () => { v.tip.style.display = "none"; });
  v.overview.addEventListener("click", (ev) => moveWindowTo(v, ev));
  for (const e of [v.canvas, v.overview]) e.addEventListener("mouseleave", () => { v.tip.style.display = "none"; v.asked = null; });
}

/** Redraw on the model's changes and take Python's messages; returns the cleanup.
 * @param {HeatmapView} v @returns {() => void} */
function connect(v) {
  const { model } = v;
  const onMsg = (msg) => showBlockWeight(v, msg);
  const redraw = () => schedule(v), sync = () => syncControls(v);
  model.on("msg:custom", onMsg);
  const events = ["overview", "window", "window_at", "selected_token", "window_size", "log_scale", "shows"]
    .map((k) => "change:" + k);
  for (const e of events) model.on(e, redraw);
  const picks = ["layer", "head", "kind"].map((k) => "change:" + k);
  const note = () => drawNote(v);
  const profile = () => drawProfile(v);
  model.on("change:busy", note);
  model.on("change:problem", note);
  model.on("change:profile_of", profile);
  model.on("change:profile", profile);
  for (const e of picks) model.on(e, sync);
  return () => {
    for (const e of events) model.off(e, redraw);
    for (const e of picks) model.off(e, sync);
    model.off("change:busy", note);
    model.off("change:problem", note);
    model.off("change:profile_of", profile);
    model.off("change:profile", profile);
    model.off("msg:custom", onMsg);
  };
}

export default { render: viewRenderer(build, listen, connect, draw) };
