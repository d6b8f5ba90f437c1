// Compare: A's and B's attention over their matched positions side by side, A − B in a blue–white–red scale
// symmetric around 0, and below the probability of every step of both traces, the steps where they chose
// differently marked. Sized to its box: the panels shrink their cells to fit and wrap rather than being cut off.
// Tokens are only ever written with textContent. LUT, MASKED, asFloat32 and h come from prelude.js.

const SVG = "http://www.w3.org/2000/svg";
/** Room for the row labels (left of a panel), the column labels (above), a legend, the gaps, in CSS pixels. */
const LABEL_W = 66, LABEL_H = 62, LEGEND_W = 96, GAP = 14, CHART_H = 210;
const COLOUR_A = "#1f77b4", COLOUR_B = "#ff7f0e", DIFFERS = "#d62728", GRID = "#e5e5e5";
/** The ends of the difference's scale: B higher (blue), equal (white), A higher (red); RdBu's ends. */
const BLUE = [33, 102, 172], WHITE = [255, 255, 255], RED = [178, 24, 43];

/** A value for reading: 3 significant digits, exponent notation below 1e-3 (as the heatmap's tooltip).
 * @param {number} w @returns {string} */
const fmt = (w) => (w === 0 ? "0" : Math.abs(w) < 1e-3 ? w.toExponential(2) : w.toPrecision(3));

/** An RGB triple as a pixel packed like LUT's (0xAABBGGRR). @param {number[]} c @returns {number} */
const pixel = (c) => ((255 << 24) | (c[2] << 16) | (c[1] << 8) | c[0]) >>> 0;

/** The colour of a difference d on the scale ±s: blue below 0, white at 0, red above, linear in |d|/s.
 * @param {number} d @param {number} s @returns {number[]} */
function diverging(d, s) {
  const t = Math.max(-1, Math.min(1, d / (s || 1))), end = t < 0 ? BLUE : RED, a = Math.abs(t);
  return WHITE.map((w, k) => Math.round(w + (end[k] - w) * a));
}

/** How many decades below the largest weight the log scale spans. */
const DECADES = 3;

/** The colour of a weight w on the scale 0..s (viridis), linear or over the DECADES decades below s.
 * @param {number} w @param {number} s @param {boolean} log @returns {number} */
function viridisPixel(w, s, log) {
  const t = log ? (w > 0 ? 1 + Math.log10(w / (s || 1)) / DECADES : 0) : w / (s || 1);
  return LUT[Math.max(0, Math.min(255, Math.round(255 * t)))];
}

/** Round tick values from 0 to `top`. @param {number} top @param {number} [count] @returns {number[]} */
function ticks(top, count = 4) {
  const raw = top / count, power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((x) => x >= raw * (1 - 1e-9));
  const out = [];
  for (let x = 0; x <= top * (1 + 1e-9); x += step) out.push(+x.toPrecision(12));
  return out;
}

/** An SVG element with attributes and, if given, its text (set as textContent).
 * @param {string} name @param {Record<string, string | number>} attrs @param {string} [text] @returns {SVGElement} */
function node(name, attrs, text) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

/** One heatmap: which matrix of the window it draws (0 A, 1 B, 2 A − B), its elements.
 * @typedef {{ which: number, box: HTMLDivElement, grid: HTMLDivElement, canvas: HTMLCanvasElement,
 *   rowLabels: HTMLDivElement, colLabels: HTMLDivElement }} Panel */

/** One compare view: its model, its elements and the little state its drawing and events share.
 * @typedef {{ model: Model, el: HTMLElement, controls: Record<string, any>, panels: Panel[], legendAB: HTMLDivElement,
 *   legendD: HTMLDivElement, caption: HTMLDivElement, chart: HTMLDivElement, tip: HTMLDivElement, cell: number,
 *   values: Float32Array, log: boolean, draws: number, pending: boolean, width: number }} CompareView */

/** Set the traits in `pairs` on the model and send them in one message.
 * @param {Model} model @param {Array<[string, any]>} pairs */
function save(model, pairs) {
  for (const [k, v] of pairs) model.set(k, v);
  model.save_changes();
}

/** A <select> of [value, label] options that calls `onChange` with the chosen value.
 * @param {Array<[string | number, string]>} options @param {(value: string) => void} onChange @param {string} cls */
function select(options, onChange, cls) {
  const s = h("select", { marginRight: "10px" });
  s.classList.add(cls);
  for (const [value, label] of options) s.append(Object.assign(h("option", {}, label), { value: String(value) }));
  s.addEventListener("change", () => onChange(s.value));
  return s;
}

/** A range input under a label, sending `trait` as it moves.
 * @param {Model} model @param {string} trait @param {string} label @param {string} cls */
function slider(model, trait, label, cls) {
  const input = Object.assign(h("input", { width: "200px", verticalAlign: "middle" }),
    { type: "range", min: "0", step: "1" });
  input.classList.add(cls);
  input.addEventListener("input", () => save(model, [[trait, +input.value]]));
  const box = h("label", { marginRight: "14px", whiteSpace: "nowrap" });
  box.append(document.createTextNode(label + " "), input);
  return { box, input };
}

/** The header: what is compared (A and B), how the positions were aligned, and the layers' note.
 * @param {Model} model @returns {HTMLDivElement} */
function buildHeader(model) {
  const box = h("div", { marginBottom: "6px" });
  box.classList.add("ae-cmp-header");
  for (const [key, colour] of [["title_a", COLOUR_A], ["title_b", COLOUR_B]]) {
    const line = h("div", { display: "flex", alignItems: "baseline", gap: "6px", margin: "1px 0" });
    const swatch = h("span", { display: "inline-block", width: "10px", height: "10px", background: colour,
      flexShrink: 0 });
    line.append(swatch, h("span", { overflowWrap: "anywhere" }, model.get(key)));
    box.append(line);
  }
  const method = h("div", { margin: "4px 0 2px", color: model.get("method") === "text" ? "#b35900" : "#333",
    fontWeight: model.get("method") === "text" ? "bold" : "normal", overflowWrap: "anywhere" }, model.get("sentence"));
  method.classList.add("ae-cmp-method");
  method.dataset.method = model.get("method");
  const note = h("div", { color: "#b35900", overflowWrap: "anywhere" });
  note.classList.add("ae-cmp-note");
  box.append(method, note);
  return box;
}

/** The pickers: layer, head (the mean, or one head when the models have the same shape), window size and the
 * sliders that move the window over the matched positions.
 * @param {Model} model */
function buildControls(model) {
  const box = h("div", { display: "flex", alignItems: "center", flexWrap: "wrap", gap: "4px", margin: "4px 0 6px" });
  const L = model.get("n_layers"), H = model.get("n_heads");
  const layerSel = select([...Array(L).keys()].map((l) => [l, `layer ${l}`]), (v) => save(model, [["layer", +v]]),
    "ae-cmp-layer");
  const headSel = select([[-1, "mean of heads"], ...[...Array(H).keys()].map((x) => [x, `head ${x}`])],
    (v) => save(model, [["head", +v < 0 ? null : +v]]), "ae-cmp-head");
  if (!model.get("heads_apply")) {
    headSel.disabled = true;
    headSel.title = "the models differ in shape: the mean of each layer's heads is compared";
  }
  const logBox = Object.assign(h("input"), { type: "checkbox" });
  logBox.classList.add("ae-cmp-log");
  const logLabel = h("label", { marginRight: "10px", whiteSpace: "nowrap" });
  logLabel.title = `A and B coloured over the ${DECADES} decades below their largest weight`;
  logLabel.append(logBox, document.createTextNode(" log scale (A, B)"));
  const sizeSel = select([32, 64, 96, 128, 192, 256].map((n) => [n, `${n} positions`]),
    (v) => save(model, [["window_size", +v]]), "ae-cmp-size");
  sizeSel.title = "how many matched positions the heatmaps show, a side";
  const rows = slider(model, "window_start", "queries", "ae-cmp-rows");
  const keys = slider(model, "key_start", "keys", "ae-cmp-keys");
  box.append(layerSel, headSel, logLabel, sizeSel, rows.box, keys.box);
  return { box, layerSel, headSel, logBox, sizeSel, rows, keys };
}

/** One heatmap panel: a title, column labels above, row labels left, the canvas.
 * @param {number} which @param {string} title @returns {Panel} */
function buildPanel(which, title) {
  const box = h("div", { flexShrink: 0 });
  box.classList.add("ae-cmp-panel");
  box.append(h("div", { font: "bold 12px sans-serif", marginLeft: LABEL_W + "px", marginBottom: "2px" }, title));
  const grid = h("div", { position: "relative" });
  const canvas = h("canvas", { position: "absolute", left: LABEL_W + "px", top: LABEL_H + "px",
    imageRendering: "pixelated", cursor: "crosshair", outline: "1px solid #ccc" });
  canvas.classList.add(["ae-cmp-a", "ae-cmp-b", "ae-cmp-diff"][which]);
  const rowLabels = h("div"), colLabels = h("div");
  grid.append(colLabels, rowLabels, canvas);
  box.append(grid);
  return { which, box, grid, canvas, rowLabels, colLabels };
}

/** Build the view's elements in `el`. @param {Model} model @param {HTMLElement} el @returns {CompareView} */
function build(model, el) {
  el.classList.add("ae-compare");
  Object.assign(el.style, { position: "relative", font: "12px sans-serif", color: "#222", maxWidth: "100%" });
  const header = buildHeader(model), controls = buildControls(model);
  const panels = [buildPanel(0, "A"), buildPanel(1, "B"), buildPanel(2, "A − B")];
  const legendAB = h("div", { marginTop: LABEL_H + 16 + "px", flexShrink: 0, width: LEGEND_W + "px" });
  const legendD = h("div", { marginTop: LABEL_H + 16 + "px", flexShrink: 0, width: LEGEND_W + "px" });
  legendAB.classList.add("ae-cmp-legend");
  legendD.classList.add("ae-cmp-legend", "ae-cmp-legend-diff");
  const row = h("div", { display: "flex", flexWrap: "wrap", alignItems: "flex-start", gap: GAP + "px" });
  row.append(panels[0].box, panels[1].box, legendAB, panels[2].box, legendD);
  const caption = h("div", { color: "#555", margin: "6px 0", overflowWrap: "anywhere" });
  caption.classList.add("ae-cmp-caption");
  const chart = h("div", { marginTop: "6px" });
  chart.classList.add("ae-cmp-steps");
  const tip = h("div", { position: "absolute", pointerEvents: "none", display: "none", zIndex: 10,
    background: "rgba(0,0,0,.82)", color: "#fff", font: "12px monospace", padding: "3px 6px", borderRadius: "3px",
    whiteSpace: "pre" });
  tip.classList.add("ae-tip");
  el.append(header, controls.box, row, caption, chart, tip);
  return { model, el, controls, panels, legendAB, legendD, caption, chart, tip, cell: 10,
    values: new Float32Array(0), log: false, draws: 0, pending: false, width: 0 };
}

/** The window: [first row pair, first column pair, rows, columns]. @param {CompareView} v @returns {number[]} */
const windowAt = (v) => v.model.get("window_at");

/** The width there is to draw in (the element's, or a usual notebook's before it is laid out).
 * @param {CompareView} v @returns {number} */
const available = (v) => v.el.clientWidth || 1000;

/** The cell size that fits three panels and two legends side by side in the available width (at least one
 * pixel; below that, the panels wrap one under another).
 * @param {CompareView} v @param {number} n cells a side @returns {number} */
function cellSize(v, n) {
  const room = available(v) - 3 * LABEL_W - 2 * LEGEND_W - 4 * GAP - 8;
  const fit = room / (3 * Math.max(n, 1));
  const cell = Math.min(18, fit >= 6 ? Math.floor(fit) : Math.floor(fit * 4) / 4 || fit);
  return Math.max(cell, Math.min(1, (available(v) - LABEL_W - 8) / Math.max(n, 1)));
}

/** Paint matrix `which` of the window onto its panel's canvas; cells whose key comes after the query are grey.
 * @param {CompareView} v @param {Panel} p */
function paintPanel(v, p) {
  const [r0, c0, rows, cols] = windowAt(v), { canvas } = p, dpr = window.devicePixelRatio || 1, cell = v.cell;
  canvas.style.width = cols * cell + "px";
  canvas.style.height = rows * cell + "px";
  canvas.width = Math.max(1, Math.round(cols * cell * dpr));
  canvas.height = Math.max(1, Math.round(rows * cell * dpr));
  p.grid.style.width = LABEL_W + cols * cell + "px";
  p.grid.style.height = LABEL_H + rows * cell + "px";
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!rows || !cols || v.values.length < 3 * rows * cols) return;
  const img = new ImageData(cols, rows), out = new Uint32Array(img.data.buffer);
  const base = p.which * rows * cols, s = v.model.get("scale"), ds = v.model.get("dscale");
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) {
    const x = v.values[base + i * cols + j];
    out[i * cols + j] = c0 + j > r0 + i ? MASKED : p.which === 2 ? pixel(diverging(x, ds)) : viridisPixel(x, s, v.log);
  }
  blit(ctx, canvas, img);
}

/** The text of matched pair `k` in panel `which`: A's token, B's, or both ("a|b") for the difference when
 * they read differently. @param {CompareView} v @param {number} which @param {number} k @returns {string} */
function pairLabel(v, which, k) {
  const a = v.model.get("tokens_a")[v.model.get("pos_a")[k]], b = v.model.get("tokens_b")[v.model.get("pos_b")[k]];
  return which === 0 ? a : which === 1 ? b : a === b ? a : `${a}|${b}`;
}

/** The position of matched pair `k` in A and in B, for a label's title. @param {CompareView} v @param {number} k */
const pairTitle = (v, k) => `A #${v.model.get("pos_a")[k]}, B #${v.model.get("pos_b")[k]}`;

/** The row and column labels of a panel, one every few cells when cells are small.
 * @param {CompareView} v @param {Panel} p */
function drawLabels(v, p) {
  const [r0, c0, rows, cols] = windowAt(v), cell = v.cell, every = Math.ceil(9 / cell);
  const font = Math.min(12, Math.max(cell, 9) - 1);
  const label = (k, i, vertical) => {
    const e = h("div", { position: "absolute", overflow: "hidden", textOverflow: "ellipsis", whiteSpace: "nowrap",
      font: `${font}px sans-serif` }, pairLabel(v, p.which, k));
    e.title = pairTitle(v, k);
    e.className = vertical ? "ae-cmp-col-label" : "ae-cmp-row-label";
    e.dataset.pair = String(k);
    if (vertical) Object.assign(e.style, { left: LABEL_W + i * cell + "px", top: "0px", width: cell * every + "px",
      height: LABEL_H - 2 + "px", writingMode: "vertical-rl", transform: "rotate(180deg)", lineHeight: cell + "px" });
    else Object.assign(e.style, { left: "0px", top: LABEL_H + i * cell + "px", width: LABEL_W - 4 + "px",
      height: cell * every + "px", lineHeight: cell + "px", textAlign: "right" });
    return e;
  };
  const pick = (n) => [...Array(n).keys()].filter((i) => i % every === 0);
  p.rowLabels.replaceChildren(...pick(rows).map((i) => label(r0 + i, i, false)));
  p.colLabels.replaceChildren(...pick(cols).map((i) => label(c0 + i, i, true)));
}

/** A vertical colour bar from `colours(t)` (t from 1 at the top to 0 at the bottom) with labelled ticks.
 * @param {HTMLDivElement} box @param {string} title @param {(t: number) => number} colours
 * @param {Array<[number, string]>} ticks [t, label] @param {string} [foot] */
function drawBar(box, title, colours, ticks, foot) {
  const H = 160, bar = h("canvas", { width: "14px", height: H + "px", display: "block", outline: "1px solid #ccc" });
  bar.width = 1;
  bar.height = 256;
  const img = new ImageData(1, 256), out = new Uint32Array(img.data.buffer);
  for (let i = 0; i < 256; i++) out[i] = colours(1 - i / 255);
  bar.getContext("2d").putImageData(img, 0, 0);
  const marks = h("div", { position: "relative", height: H + "px", width: LEGEND_W - 18 + "px",
    font: "11px sans-serif" });
  for (const [t, text] of ticks)
    marks.append(h("div", { position: "absolute", left: "4px", top: `${(1 - t) * H - 7}px` }, text));
  const row = h("div", { display: "flex" });
  row.append(bar, marks);
  box.replaceChildren(h("div", { font: "11px sans-serif", marginBottom: "9px" }, title), row);
  if (foot) box.append(h("div", { font: "11px sans-serif", color: "#555", marginTop: "8px" }, foot));
}

/** The two legends: weights of A and B on one viridis scale; A − B from −s (blue) through 0 (white) to +s (red).
 * @param {CompareView} v */
function drawLegends(v) {
  const s = v.model.get("scale"), ds = v.model.get("dscale"), num = (x) => String(Number(x.toPrecision(2)));
  if (v.log) drawBar(v.legendAB, "weight (A and B, log)", (t) => viridisPixel(s * 10 ** ((t - 1) * DECADES), s, true),
    [...Array(DECADES + 1).keys()].map((d) => [1 - d / DECADES, (d === DECADES ? "≤ " : "") + num(s * 10 ** -d)]));
  else drawBar(v.legendAB, "weight (A and B)", (t) => viridisPixel(t * s, s, false),
    [[1, num(s)], [0.5, num(s / 2)], [0, "0"]]);
  drawBar(v.legendD, "A − B", (t) => pixel(diverging((2 * t - 1) * ds, ds)),
    [[1, "+" + num(ds)], [0.5, "0"], [0, "−" + num(ds)]], "red: A higher\nblue: B higher");
  v.legendD.lastChild.style.whiteSpace = "pre";
}

/** The tokens of `tokens` not in `matched`, for the caption: at most 24, then how many more.
 * @param {string[]} tokens @param {number[]} matched @returns {string} */
function unmatchedText(tokens, matched) {
  const have = new Set(matched), out = [];
  tokens.forEach((t, i) => { if (!have.has(i)) out.push(`${i} “${t}”`); });
  if (!out.length) return "none";
  return out.slice(0, 24).join(" ") + (out.length > 24 ? ` … (${out.length} in all)` : "");
}

/** The caption under the heatmaps: which matched pairs the window shows, and the tokens left out.
 * @param {CompareView} v */
function drawCaption(v) {
  const [r0, c0, rows, cols] = windowAt(v), get = (k) => v.model.get(k), m = get("pos_a").length;
  const span = (s, n) => (n ? `${s}–${s + n - 1}` : "none");
  v.caption.textContent = !m ? "No positions in common: nothing to set side by side."
    : `Matched pairs ${span(r0, rows)} (rows, queries) × ${span(c0, cols)} (columns, keys) of ${m}. `
      + "Only matched positions are drawn; weights on unmatched keys are left out. "
      + `Unmatched in A: ${unmatchedText(get("tokens_a"), get("pos_a"))}. `
      + `Unmatched in B: ${unmatchedText(get("tokens_b"), get("pos_b"))}.`;
}

/** The pickers and sliders show the model's values. @param {CompareView} v */
function syncControls(v) {
  const get = (k) => v.model.get(k), c = v.controls, m = get("pos_a").length, ws = get("window_size");
  c.layerSel.value = String(get("layer"));
  c.headSel.value = String(get("head") ?? -1);
  c.sizeSel.value = String(ws);
  c.sizeSel.style.display = m > 32 ? "" : "none";
  for (const [s, trait] of [[c.rows, "window_start"], [c.keys, "key_start"]]) {
    s.box.style.display = m > ws ? "" : "none";
    s.input.max = String(Math.max(0, m - ws));
    s.input.value = String(get(trait));
  }
  v.el.querySelector(".ae-cmp-note").textContent = get("note");
}

/** Draw the heatmaps, labels, legends and caption from the model's state; note the draw in el's data-*.
 * @param {CompareView} v */
function drawHeatmaps(v) {
  const [, , rows, cols] = windowAt(v);
  v.values = asFloat32(v.model.get("window"));
  v.cell = cellSize(v, Math.max(rows, cols));
  for (const p of v.panels) { paintPanel(v, p); drawLabels(v, p); }
  drawLegends(v);
  drawCaption(v);
}

/** Draw everything. @param {CompareView} v */
function draw(v) {
  const t0 = performance.now();
  v.width = available(v);
  drawHeatmaps(v);
  drawSteps(v);
  syncControls(v);
  v.draws += 1;
  Object.assign(v.el.dataset, { drawCount: v.draws, drawMs: (performance.now() - t0).toFixed(1),
    shows: v.model.get("shows"), windowAt: windowAt(v).join(" "), cell: v.cell });
}

/** Draw once for all the traits one message changes. @param {CompareView} v */
function schedule(v) {
  if (v.pending) return;
  v.pending = true;
  queueMicrotask(() => { v.pending = false; draw(v); });
}

// --- the steps' probabilities

/** The probability of every step of A and of B as two lines, the steps where they chose differently ringed red.
 * @param {CompareView} v */
function drawSteps(v) {
  const steps = v.model.get("steps"), n = steps.length;
  if (!n) {
    v.chart.replaceChildren(h("div", { color: "#555" }, "Neither trace generated tokens: no steps to compare."));
    return;
  }
  const width = Math.max(320, available(v) - 4), box = { x: 58, y: 28, w: width - 78, h: CHART_H - 70 };
  const svg = node("svg", { width, height: CHART_H, viewBox: `0 0 ${width} ${CHART_H}` });
  const highest = Math.max(1e-6, ...steps.flatMap((s) => [s.pa ?? 0, s.pb ?? 0]));
  const marks = ticks(Math.min(1, highest * 1.1)), top = Math.max(marks.at(-1), Math.min(1, highest * 1.1));
  const x = (i) => box.x + (n > 1 ? (i / (n - 1)) * box.w : box.w / 2), y = (p) => box.y + box.h - (p / top) * box.h;
  for (const p of marks) {
    svg.append(node("line", { x1: box.x, x2: box.x + box.w, y1: y(p), y2: y(p), stroke: GRID }));
    svg.append(node("text", { class: "tick", x: box.x - 6, y: y(p) + 4, "text-anchor": "end" }, String(p)));
  }
  const every = Math.max(1, Math.ceil(n / Math.max(1, Math.floor(box.w / 40))));
  for (let i = 0; i < n; i += every)
    svg.append(node("text", { class: "tick", x: x(i), y: box.y + box.h + 15, "text-anchor": "middle" }, String(i)));
  svg.append(node("text", { class: "axis-title", x: box.x + box.w / 2, y: box.y + box.h + 32, "text-anchor": "middle" },
    "step"));
  svg.append(node("text", { class: "axis-title", transform: `translate(12,${box.y + box.h / 2}) rotate(-90)`,
    "text-anchor": "middle" }, "p(chosen)"));
  const cursor = node("line", { class: "ae-cmp-cursor", y1: box.y, y2: box.y + box.h, stroke: "#999",
    visibility: "hidden" });
  svg.append(cursor);
  for (const [key, colour] of [["pa", COLOUR_A], ["pb", COLOUR_B]]) {
    let points = [];
    const flush = () => { if (points.length) svg.append(node("polyline", { class: `ae-cmp-line-${key}`, fill: "none",
      stroke: colour, "stroke-width": 1.5, points: points.join(" ") })); points = []; };
    steps.forEach((s, i) => { if (s[key] === null) flush(); else points.push(`${x(i)},${y(s[key])}`); });
    flush();
    if (n <= 150) steps.forEach((s, i) => { if (s[key] !== null)
      svg.append(node("circle", { cx: x(i), cy: y(s[key]), r: 2.2, fill: colour })); });
  }
  let differing = 0;
  steps.forEach((s, i) => {
    if (!s.differs) return;
    differing += 1;
    const g = node("g", { class: "ae-cmp-differs", "data-step": i });
    g.append(node("line", { x1: x(i), x2: x(i), y1: y(s.pa), y2: y(s.pb), stroke: DIFFERS,
      "stroke-dasharray": "2 2" }));
    for (const p of [s.pa, s.pb]) g.append(node("circle", { cx: x(i), cy: y(p), r: n > 60 ? 3 : 4, fill: DIFFERS }));
    g.append(node("title", {}, stepText(s, i)));
    svg.append(g);
  });
  const keyY = 14;
  [["A", COLOUR_A], ["B", COLOUR_B]].forEach(([name, colour], i) => {
    svg.append(node("rect", { x: box.x + i * 40, y: keyY - 9, width: 10, height: 10, fill: colour }));
    svg.append(node("text", { class: "tick", x: box.x + i * 40 + 14, y: keyY }, name));
  });
  svg.append(node("circle", { cx: box.x + 90, cy: keyY - 4, r: 4, fill: DIFFERS }));
  svg.append(node("text", { class: "tick", x: box.x + 98, y: keyY },
    `chose differently (${differing} of ${steps.filter((s) => s.pa !== null && s.pb !== null).length} steps)`));
  svg.append(node("text", { class: "title", x: box.x + box.w, y: keyY, "text-anchor": "end" },
    "probability of the token each trace chose, step by step"));
  listenSteps(v, svg, cursor, x, box);
  v.chart.replaceChildren(svg);
  v.chart.dataset.differing = String(differing);
}

/** A step of both traces for reading. @param {any} s @param {number} i @returns {string} */
function stepText(s, i) {
  const side = (name, t, p) => (t === null ? `${name}  (no step ${i})` : `${name}  “${t}”  p = ${p.toFixed(3)}`);
  const lines = [`step ${i}`, side("A", s.a, s.pa), side("B", s.b, s.pb)];
  return [...lines, ...(s.differs ? ["chose differently"] : [])].join("\n");
}

/** Hover on the chart: the nearest step's tokens and probabilities.
 * @param {CompareView} v @param {SVGElement} svg @param {SVGElement} cursor @param {(i: number) => number} x
 * @param {{ x: number, w: number }} box */
function listenSteps(v, svg, cursor, x, box) {
  const steps = v.model.get("steps"), n = steps.length;
  svg.addEventListener("mousemove", (ev) => {
    const r = svg.getBoundingClientRect(), px = ev.clientX - r.left;
    const i = Math.max(0, Math.min(n - 1, Math.round(n > 1 ? ((px - box.x) / box.w) * (n - 1) : 0)));
    cursor.setAttribute("x1", String(x(i)));
    cursor.setAttribute("x2", String(x(i)));
    cursor.setAttribute("visibility", "visible");
    v.tip.textContent = stepText(steps[i], i);
    placeTip(v, ev);
  });
  svg.addEventListener("mouseleave", () => {
    cursor.setAttribute("visibility", "hidden");
    v.tip.style.display = "none";
  });
}

// --- hover on the heatmaps

/** Show the tooltip next to the pointer, kept inside the view. @param {CompareView} v @param {MouseEvent} ev */
function placeTip(v, ev) {
  const r = v.el.getBoundingClientRect();
  v.tip.style.display = "block";
  const left = Math.min(ev.clientX - r.left + 14, Math.max(0, r.width - v.tip.offsetWidth - 4));
  v.tip.style.left = left + "px";
  v.tip.style.top = ev.clientY - r.top + 14 + "px";
}

/** The tooltip over a cell of any panel: the query and key in A and B, and the values of A, B and A − B.
 * @param {CompareView} v @param {Panel} p @param {MouseEvent} ev */
function showCellTip(v, p, ev) {
  const [r0, c0, rows, cols] = windowAt(v), r = p.canvas.getBoundingClientRect();
  const i = Math.floor(((ev.clientY - r.top) / r.height) * rows);
  const j = Math.floor(((ev.clientX - r.left) / r.width) * cols);
  if (i < 0 || j < 0 || i >= rows || j >= cols) { v.tip.style.display = "none"; return; }
  const q = r0 + i, k = c0 + j, get = (key) => v.model.get(key);
  const tok = (side, pair) => {
    const at = get("pos_" + side.toLowerCase())[pair];
    return `${side} ${at} “${get("tokens_" + side.toLowerCase())[at]}”`;
  };
  let text = `query  ${tok("A", q)}   ${tok("B", q)}\nkey    ${tok("A", k)}   ${tok("B", k)}\n`;
  if (k > q) text += "masked: a token cannot attend to later tokens";
  else {
    const at = (w) => v.values[w * rows * cols + i * cols + j];
    text += `A ${fmt(at(0))}   B ${fmt(at(1))}   A−B ${fmt(at(2))}`;
  }
  v.tip.textContent = text;
  placeTip(v, ev);
}

/** Hover on the panels. @param {CompareView} v */
function listen(v) {
  v.controls.logBox.addEventListener("change", () => { v.log = v.controls.logBox.checked; schedule(v); });
  for (const p of v.panels) {
    p.canvas.addEventListener("mousemove", (ev) => showCellTip(v, p, ev));
    p.canvas.addEventListener("mouseleave", () => { v.tip.style.display = "none"; });
  }
}

/** Redraw on the model's changes and on a new width; returns the cleanup.
 * @param {CompareView} v @returns {() => void} */
function connect(v) {
  const redraw = () => schedule(v);
  const events = ["window", "window_at", "scale", "dscale", "note", "shows", "layer", "head", "window_size"]
    .map((k) => "change:" + k);
  for (const e of events) v.model.on(e, redraw);
  const resize = new ResizeObserver(() => { if (Math.abs(available(v) - v.width) > 4) schedule(v); });
  resize.observe(v.el);
  return () => {
    for (const e of events) v.model.off(e, redraw);
    resize.disconnect();
  };
}

export default { render: viewRenderer(build, listen, connect, draw) };
