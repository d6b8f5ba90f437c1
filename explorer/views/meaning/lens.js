// The logit lens as a grid of layers × positions, layer 0 at the bottom. Only the columns in view (and a few beside
// them) are in the page: a 2,048-position lens scrolls sideways with a few hundred cells drawn. Hover asks Python
// for a cell's top-k; a click asks Python to select it, and the highlight follows the selection Python sends back.
// LUT, cssColour, asU8, visible and h come from prelude.js, put in front of this file by the frontend loader.

/** Room for the layer labels (left), the height of a label row (above and under the grid), a layer's height and
 * the columns drawn beyond each side of the view, in CSS pixels and columns. */
const LEFT = 44, LABEL = 20, ROW = 18, OVERSCAN = 4;
/** The colour code of a cell with no next token (lens_view.NO_NEXT). */
const NO_NEXT = 255;

/** A probability for reading: 3 significant digits, or an exponent below 0.001.
 * @param {number | null} p @returns {string} */
const fmt = (p) => (p === null ? "–" : p >= 1e-3 || p === 0 ? p.toPrecision(3) : p.toExponential(2));

/** A token for the tooltip: whitespace made visible, in quotes, cut at `n` characters.
 * @param {string} t @param {number} [n] @returns {string} */
function quoted(t, n = 40) {
  const s = visible(t);
  return "“" + (s.length > n ? s.slice(0, n - 1) + "…" : s) + "”";
}

/** The lens's arrays, decoded once from the model's bytes.
 * @typedef {{ top1: Uint16Array | Uint32Array, words: string[], next: Uint8Array, top: Uint8Array,
 *   nextIndex: Int32Array, columnLabels: string[], targetLabels: string[] }} LensData */

/** One lens view: its model and elements, the decoded data, the columns now in the page and the tooltip's state.
 * @typedef {{ model: Model, el: HTMLElement, L: number, P: number, cw: number, data: LensData,
 *   colourSel: HTMLSelectElement, ramp: HTMLSpanElement, caption: HTMLSpanElement, overview: HTMLCanvasElement,
 *   scroller: HTMLDivElement, content: HTMLDivElement, gutter: HTMLDivElement, band: HTMLDivElement,
 *   tip: HTMLDivElement, columns: Map<number, HTMLDivElement>, details: Map<string, any>, asked: string,
 *   shownColumn: number, draws: number, pending: boolean, overviewImage: HTMLCanvasElement | null }} LensView */

/** A copy of bytes as typed array `T` (a copy, so it is aligned).
 * @param {any} bytes @param {any} T */
function typed(bytes, T) {
  const u8 = asU8(bytes);
  return new T(u8.slice().buffer, 0, Math.floor(u8.length / T.BYTES_PER_ELEMENT));
}

/** @param {Model} model @returns {LensData} */
function decode(model) {
  return {
    top1: typed(model.get("top1"), model.get("top1_width") === 4 ? Uint32Array : Uint16Array),
    words: model.get("words"), next: asU8(model.get("next_code")), top: asU8(model.get("top1_code")),
    nextIndex: typed(model.get("next_index"), Int32Array),
    columnLabels: model.get("column_labels"), targetLabels: model.get("target_labels"),
  };
}

/** The top of layer `l`'s row: the last layer at the top, as in the model.
 * @param {LensView} v @param {number} l */
const rowTop = (v, l) => LABEL + (v.L - 1 - l) * ROW;

/** The colour bar's gradient and the caption, for the model's colour_by.
 * @param {LensView} v */
function drawLegend(v) {
  const stops = [0, 64, 128, 192, 255].map((i) => `${cssColour(i)} ${(i / 2.55).toFixed(0)}%`);
  v.ramp.style.background = `linear-gradient(to right, ${stops.join(",")})`;
  const by = v.model.get("colour_by") === "top" ? "the top-1 token's probability" : "the probability of the token that came next";
  v.caption.textContent = `${v.L} layers × ${v.P} ${v.model.get("mode") === "steps" ? "steps" : "positions"}; ` +
    `each cell: the token block l ranks first (bold: it is the one that came next); colour: ${by}`;
}

/** The controls: what colours the cells, with its legend and the caption.
 * @param {LensView} v @returns {HTMLDivElement} */
function buildBar(v) {
  const bar = h("div");
  bar.classList.add("ae-lens-bar");
  v.colourSel = h("select");
  v.colourSel.classList.add("ae-lens-colour-by");
  for (const [value, label] of [["next", "colour: p(token that came next)"], ["top", "colour: p(top-1 token)"]])
    v.colourSel.append(Object.assign(h("option", {}, label), { value }));
  v.colourSel.addEventListener("change", () => { v.model.set("colour_by", v.colourSel.value); v.model.save_changes(); });
  const legend = h("span");
  legend.classList.add("ae-lens-legend");
  v.ramp = h("span");
  v.ramp.classList.add("ae-lens-ramp");
  const swatch = h("span");
  swatch.classList.add("ae-lens-swatch");
  legend.append(document.createTextNode("0"), v.ramp, document.createTextNode("1"), swatch,
    document.createTextNode("no next token"));
  v.caption = h("span");
  v.caption.classList.add("ae-lens-caption");
  bar.append(v.colourSel, legend, v.caption);
  return bar;
}

/** The gutter that stays on the left while the grid scrolls: a label per layer, and what the label rows are.
 * @param {LensView} v @param {number} height */
function buildGutter(v, height) {
  const g = h("div", { width: LEFT + "px", height: height + "px" });
  g.classList.add("ae-lens-gutter");
  for (let l = 0; l < v.L; l++) {
    const label = h("div", { top: rowTop(v, l) + 4 + "px" }, `L${l}`);
    label.classList.add("ae-lens-layer-label");
    label.dataset.layer = String(l);
    g.append(label);
  }
  const axis = (top, text) => { const a = h("div", { top: top + "px" }, text); a.classList.add("ae-lens-axis"); g.append(a); };
  axis(5, "next");
  axis(LABEL + v.L * ROW + 5, v.model.get("mode") === "steps" ? "step" : "token");
  return g;
}

/** Build the view's elements in `el`: controls, overview, the scrolling grid's frame, the tooltip.
 * @param {Model} model @param {HTMLElement} el @returns {LensView} */
function build(model, el) {
  const L = model.get("n_layers"), P = model.get("n_columns"), cw = model.get("cell_width");
  /** @type {LensView} */
  const v = { model, el, L, P, cw, data: decode(model), columns: new Map(), details: new Map(), asked: "",
    shownColumn: -2, draws: 0, pending: false, overviewImage: null };
  const bar = buildBar(v);
  v.overview = h("canvas");
  v.overview.classList.add("ae-lens-overview");
  v.scroller = h("div");
  v.scroller.classList.add("ae-lens-scroller");
  const height = 2 * LABEL + L * ROW;
  v.content = h("div", { width: LEFT + P * cw + "px", height: height + "px" });
  v.content.classList.add("ae-lens-content");
  v.gutter = buildGutter(v, height);
  v.band = h("div", { width: LEFT + P * cw + "px", height: ROW + 1 + "px" });
  v.band.classList.add("ae-lens-band");
  v.content.append(v.gutter, v.band);
  v.scroller.append(v.content);
  v.tip = h("div");
  v.tip.classList.add("ae-lens-tip");
  el.append(bar, v.overview, v.scroller, v.tip);
  return v;
}

/** Colour and mark cell (l, c): by the model's colour_by, neutral at the trace's end, bold when it is right.
 * @param {LensView} v @param {HTMLDivElement} cell @param {number} l @param {number} c */
function paintCell(v, cell, l, c) {
  const i = l * v.P + c, d = v.data, end = d.next[i] === NO_NEXT;
  const code = v.model.get("colour_by") === "top" ? d.top[i] : d.next[i];
  const lut = Math.round((code * 255) / 254);
  cell.classList.toggle("end", end && v.model.get("colour_by") !== "top");
  cell.classList.toggle("light", lut > 160);
  cell.classList.toggle("hit", d.nextIndex[c] === d.top1[i]);
  cell.style.background = cell.classList.contains("end") ? "" : cssColour(lut);
}

/** A label above or under column c.
 * @param {string} cls @param {number} top @param {number} cw @param {string} text */
function columnLabel(cls, top, cw, text) {
  const e = h("div", { top: top + "px", width: cw + "px", height: LABEL + "px", lineHeight: LABEL + "px" }, text);
  e.classList.add(cls);
  return e;
}

/** Column c: the token that came next above, a cell per layer, its step (or token) under.
 * @param {LensView} v @param {number} c @returns {HTMLDivElement} */
function makeColumn(v, c) {
  const { cw, data: d } = v;
  const col = h("div", { left: LEFT + c * cw + "px", width: cw + "px" });
  col.classList.add("ae-lens-col");
  col.dataset.column = String(c);
  const target = d.targetLabels[c];
  col.append(columnLabel("ae-lens-target", 0, cw, target === "" && d.next[c] === NO_NEXT ? "(end)" : visible(target)));
  for (let l = v.L - 1; l >= 0; l--) {
    const cell = h("div", { top: rowTop(v, l) + "px", width: cw + "px", height: ROW + "px", lineHeight: ROW + "px" },
      visible(d.words[d.top1[l * v.P + c]] ?? ""));
    cell.classList.add("ae-lens-cell");
    cell.dataset.layer = String(l);
    cell.dataset.column = String(c);
    paintCell(v, cell, l, c);
    col.append(cell);
  }
  const label = v.model.get("mode") === "steps" ? d.columnLabels[c] : visible(d.columnLabels[c]);
  col.append(columnLabel("ae-lens-label", LABEL + v.L * ROW, cw, label));
  return col;
}

/** The columns in view, with OVERSCAN more on each side: [first, last].
 * @param {LensView} v @returns {[number, number]} */
function visibleRange(v) {
  const x = v.scroller.scrollLeft, w = v.scroller.clientWidth || 800;
  const first = Math.max(0, Math.floor(x / v.cw) - OVERSCAN);
  const last = Math.min(v.P - 1, Math.ceil((x + w - LEFT) / v.cw) + OVERSCAN);
  return [first, last];
}

/** Put the columns in view in the page and take the others out.
 * @param {LensView} v */
function renderColumns(v) {
  const [first, last] = visibleRange(v);
  for (const [c, col] of v.columns) if (c < first || c > last) { col.remove(); v.columns.delete(c); }
  const fragment = document.createDocumentFragment();
  for (let c = first; c <= last; c++) if (!v.columns.has(c)) {
    const col = makeColumn(v, c);
    v.columns.set(c, col);
    fragment.append(col);
  }
  v.content.insertBefore(fragment, v.band);
  highlight(v);
  Object.assign(v.el.dataset, { firstColumn: first, lastColumn: last });
}

/** Mark the selection: its layer's row and label, its column's labels, their cell.
 * @param {LensView} v */
function highlight(v) {
  const layer = v.model.get("layer"), column = v.model.get("column");
  v.band.style.top = rowTop(v, layer) - 1 + "px";
  for (const label of v.gutter.querySelectorAll(".ae-lens-layer-label"))
    label.classList.toggle("selected", +label.dataset.layer === layer);
  for (const el of v.content.querySelectorAll(".ae-lens-col.selected, .ae-lens-cell.selected")) el.classList.remove("selected");
  const col = v.columns.get(column);
  if (col) {
    col.classList.add("selected");
    col.querySelector(`.ae-lens-cell[data-layer="${layer}"]`)?.classList.add("selected");
  }
  Object.assign(v.el.dataset, { layer, column });
}

/** Scroll column c to the middle of the view when the selection moved to it and it is out of view.
 * @param {LensView} v */
function bringIntoView(v) {
  const c = v.model.get("column"), s = v.scroller;
  if (c === v.shownColumn || !s.clientWidth) return; // not laid out yet: the next draw will
  v.shownColumn = c;
  if (c < 0) return;
  const x = LEFT + c * v.cw;
  if (x < s.scrollLeft + LEFT || x + v.cw > s.scrollLeft + s.clientWidth)
    s.scrollLeft = Math.max(0, x - (s.clientWidth + LEFT) / 2);
}

/** The whole lens as one pixel a cell (P × L, last layer on top), coloured as the cells are.
 * @param {LensView} v @returns {HTMLCanvasElement} */
function overviewImage(v) {
  const off = document.createElement("canvas");
  off.width = v.P;
  off.height = v.L;
  const img = new ImageData(v.P, v.L), out = new Uint32Array(img.data.buffer);
  const codes = v.model.get("colour_by") === "top" ? v.data.top : v.data.next;
  const grey = (255 << 24) | (230 << 16) | (230 << 8) | 230;
  for (let l = 0; l < v.L; l++) for (let c = 0; c < v.P; c++) {
    const code = codes[l * v.P + c];
    out[(v.L - 1 - l) * v.P + c] = code === NO_NEXT ? grey : LUT[Math.round((code * 255) / 254)];
  }
  off.getContext("2d").putImageData(img, 0, 0);
  return off;
}

/** The overview above the grid, when the grid is wider than its box: the whole lens, the part in view outlined.
 * @param {LensView} v */
function drawOverview(v) {
  const w = v.scroller.clientWidth, full = v.P * v.cw;
  if (!w || full <= w - LEFT) { v.overview.style.display = "none"; return; }
  const hgt = Math.max(20, Math.min(60, 2 * v.L)), dpr = window.devicePixelRatio || 1;
  Object.assign(v.overview.style, { display: "block", width: w + "px", height: hgt + "px" });
  if (v.overview.width !== Math.round(w * dpr) || v.overview.height !== Math.round(hgt * dpr)) {
    v.overview.width = Math.round(w * dpr);
    v.overview.height = Math.round(hgt * dpr);
  }
  const ctx = v.overview.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, w, hgt);
  v.overviewImage ??= overviewImage(v);
  ctx.imageSmoothingEnabled = v.P > w - LEFT; // averaged when shrunk, crisp cells when stretched
  ctx.drawImage(v.overviewImage, LEFT, 0, w - LEFT, hgt);
  ctx.fillStyle = "#555";
  ctx.font = "10px sans-serif";
  ctx.fillText("all", 4, hgt / 2 + 3);
  const scale = (w - LEFT) / full;
  ctx.strokeStyle = "#ff3b30";
  ctx.lineWidth = 2;
  ctx.strokeRect(LEFT + v.scroller.scrollLeft * scale + 1, 1, Math.max(4, (w - LEFT) * scale - 2), hgt - 2);
}

/** Draw what is in view from the model's current state, and note it in el's data-* attributes for tests.
 * @param {LensView} v */
function draw(v) {
  const t0 = performance.now();
  v.colourSel.value = v.model.get("colour_by");
  drawLegend(v);
  bringIntoView(v);
  renderColumns(v);
  drawOverview(v);
  v.draws += 1;
  Object.assign(v.el.dataset, { drawCount: v.draws, drawMs: (performance.now() - t0).toFixed(1),
    mode: v.model.get("mode"), colourBy: v.model.get("colour_by"),
    geometry: JSON.stringify({ left: LEFT, label: LABEL, row: ROW, cw: v.cw, layers: v.L, columns: v.P }) });
}

/** Recolour every cell in the page (the colour scale changed).
 * @param {LensView} v */
function repaint(v) {
  for (const cell of v.content.querySelectorAll(".ae-lens-cell")) paintCell(v, cell, +cell.dataset.layer, +cell.dataset.column);
  v.overviewImage = null;
  draw(v);
}

/** The tooltip's text for cell (l, c): what Python sent about it, or what is known here while waiting.
 * @param {LensView} v @param {number} l @param {number} c @returns {string} */
function tipText(v, l, c) {
  const m = v.details.get(`${l},${c}`), d = v.data;
  if (!m) return `layer ${l}\ntop-1 ${quoted(d.words[d.top1[l * v.P + c]] ?? "")}\n…`;
  const lines = [`layer ${l} · position ${m.position}` + (m.step === null ? "" : ` · step ${m.step}`),
    `reads ${quoted(m.token)}` + (m.next === null ? ", the trace's last token" : `, next came ${quoted(m.next)}`),
    `top-${m.top.length} after block ${l}:`];
  const width = Math.max(...m.top.map(([t]) => quoted(t).length));
  m.top.forEach(([t, p], i) => lines.push(`${String(i + 1).padStart(2)}. ${quoted(t).padEnd(width)}  ${fmt(p)}`));
  lines.push(m.next === null ? "no next token: the trace ends here"
    : `next token ${quoted(m.next)}: p ${fmt(m.next_prob)}, rank ${m.next_rank}`);
  return lines.join("\n");
}

/** Place the tooltip by the pointer, inside the window. It is `position: fixed` so that no scrolling box around the
 * view cuts it off; an ancestor with `contain` (JupyterLab has some) moves the origin it is fixed to, so that
 * origin is measured first.
 * @param {LensView} v @param {MouseEvent} ev */
function placeTip(v, ev) {
  const { tip } = v;
  Object.assign(tip.style, { display: "block", left: "0px", top: "0px" });
  const origin = tip.getBoundingClientRect(), w = tip.offsetWidth, hgt = tip.offsetHeight;
  let x = ev.clientX + 14, y = ev.clientY + 14;
  if (x + w > window.innerWidth) x = Math.max(0, ev.clientX - 14 - w);
  if (y + hgt > window.innerHeight) y = Math.max(0, ev.clientY - 14 - hgt);
  Object.assign(tip.style, { left: x - origin.left + "px", top: y - origin.top + "px" });
}

/** The tooltip of the cell under the pointer; asks Python for its top-k the first time.
 * @param {LensView} v @param {MouseEvent} ev */
function showTip(v, ev) {
  const cell = /** @type {HTMLElement} */ (ev.target).closest?.(".ae-lens-cell");
  if (!cell) { v.tip.style.display = "none"; v.asked = ""; return; }
  const l = +cell.dataset.layer, c = +cell.dataset.column, key = `${l},${c}`;
  if (key !== v.asked) {
    v.asked = key;
    v.tip.textContent = tipText(v, l, c);
    Object.assign(v.tip.dataset, { cell: key, ready: v.details.has(key) ? "1" : "" });
    if (!v.details.has(key)) v.model.send({ kind: "cell", layer: l, column: c });
  }
  placeTip(v, ev);
}

/** Python's answer about a cell: kept, and shown if the pointer is still on it.
 * @param {LensView} v @param {any} msg */
function takeDetails(v, msg) {
  if (!msg || msg.kind !== "cell") return;
  const key = `${msg.layer},${msg.column}`;
  v.details.set(key, msg);
  if (key !== v.asked) return;
  v.tip.textContent = tipText(v, msg.layer, msg.column);
  v.tip.dataset.ready = "1";
}

/** Ask Python to select layer l at column c (it sets the shared selection; the highlight follows it).
 * @param {LensView} v @param {number} l @param {number} c */
const pick = (v, l, c) => v.model.send({ kind: "pick", layer: l, column: c });

/** Scroll so that the overview's column under the pointer is in the middle of the view.
 * @param {LensView} v @param {MouseEvent} ev */
function scrollToOverview(v, ev) {
  const r = v.overview.getBoundingClientRect(), w = r.width - LEFT;
  const f = (ev.clientX - r.left - LEFT) / w;
  v.scroller.scrollLeft = Math.max(0, f * v.P * v.cw - (v.scroller.clientWidth - LEFT) / 2);
}

/** Draw at most once a frame, whatever asked for it.
 * @param {LensView} v */
function schedule(v) {
  if (v.pending) return;
  v.pending = true;
  requestAnimationFrame(() => { v.pending = false; draw(v); });
}

/** Hover, click, scroll and resize.
 * @param {LensView} v @returns {() => void} the cleanup */
function listen(v) {
  v.content.addEventListener("mousemove", (ev) => showTip(v, ev));
  v.content.addEventListener("mouseleave", () => { v.tip.style.display = "none"; v.asked = ""; });
  v.content.addEventListener("click", (ev) => {
    const t = /** @type {HTMLElement} */ (ev.target);
    const cell = t.closest(".ae-lens-cell"), col = t.closest(".ae-lens-col");
    if (cell) pick(v, +cell.dataset.layer, +cell.dataset.column);
    else if (col) pick(v, v.model.get("layer"), +col.dataset.column); // a label: this column, the same layer
  });
  v.scroller.addEventListener("scroll", () => { v.tip.style.display = "none"; schedule(v); });
  v.overview.addEventListener("mousedown", (ev) => scrollToOverview(v, ev));
  v.overview.addEventListener("mousemove", (ev) => { if (ev.buttons & 1) scrollToOverview(v, ev); });
  const resized = new ResizeObserver(() => schedule(v));
  resized.observe(v.el);
  return () => resized.disconnect();
}

/** Follow the model: the colour scale, the selection, Python's answers; returns the cleanup.
 * @param {LensView} v @returns {() => void} */
function connect(v) {
  const { model } = v;
  const onMsg = (msg) => takeDetails(v, msg), recolour = () => repaint(v), moved = () => schedule(v);
  model.on("msg:custom", onMsg);
  model.on("change:colour_by", recolour);
  model.on("change:layer", moved);
  model.on("change:column", moved);
  return () => {
    model.off("msg:custom", onMsg);
    model.off("change:colour_by", recolour);
    model.off("change:layer", moved);
    model.off("change:column", moved);
  };
}

/** Draw the lens into `el` (or the model's message when there is no lens); returns the cleanup.
 * @param {{ model: Model, el: HTMLElement }} ctx @returns {() => void} */
function render({ model, el }) {
  el.classList.add("ae-lens");
  if (model.get("message")) {
    el.append(h("div", {}, model.get("message")));
    el.lastChild.classList.add("ae-lens-message");
    el.dataset.drawCount = "1";
    return () => {};
  }
  const view = build(model, el);
  const stop = listen(view), disconnect = connect(view);
  draw(view);
  return () => { stop(); disconnect(); };
}

export default { render };
