// All heads on one canvas: a row of thumbnails per layer, a strip under each coloured by a statistic,
// hover for the numbers, click to select; below, the statistics as a table sortable by any column.
// LUT, MASKED, cssColour, asU8 and h come from prelude.js, put in front of this file by the frontend loader.

/** A statistic for reading: 3 significant digits, "–" when there is none.
 * @param {number | null | undefined} v @returns {string} */
const fmt = (v) => (v === null || v === undefined ? "–" : v.toPrecision(3));

/** The thumbnails' margins: room for the layer labels (left) and the head labels (top), the gap between
 * thumbnails and the height of a colour strip, in CSS pixels. */
const LEFT = 34, TOP = 18, GAP = 6, STRIP = 5;

/** One heads map view: its model, its elements and the little state its drawing and events share.
 * L and H are the numbers of layers and heads; names the statistics' names; sortKey and sortDir the table's
 * order; scrolledTo the head whose table row was last scrolled into view.
 * @typedef {{ model: Model, el: HTMLElement, L: number, H: number, names: string[],
 *   colourSel: HTMLSelectElement, logBox: HTMLInputElement, canvas: HTMLCanvasElement, caption: HTMLDivElement,
 *   tableBox: HTMLDivElement, table: HTMLTableElement, tip: HTMLDivElement, draws: number, sortKey: string,
 *   sortDir: number, pending: boolean, scrolledTo: string }} HeadsView */

/** Where the thumbnails are: a thumbnail's side, the column and row pitches and the strip's height.
 * @typedef {{ px: number, cw: number, ch: number, strip: number }} Geometry */

/** Select head `head` of layer `layer` (null: the mean of its heads).
 * @param {Model} model @param {number} layer @param {number | null} head */
function pick(model, layer, head) {
  model.set("layer", layer);
  model.set("head", head);
  model.save_changes();
}

/** Statistic `name` of head `hd` in layer `l` (null when there is none).
 * @param {HeadsView} v @param {string} name @param {number} l @param {number} hd @returns {number | null} */
const stat = (v, name, l, hd) => v.model.get("stats")[name][l][hd];

/** The thumbnails' geometry for the model's current thumbnail size and colour strip.
 * @param {HeadsView} v @returns {Geometry} */
function geometry(v) {
  const px = v.model.get("thumb_px"), strip = v.model.get("colour_by") ? STRIP + 1 : 0;
  return { px, cw: px + GAP, ch: px + strip + GAP, strip };
}

/** The controls: which statistic colours the strips, and the log scale.
 * @param {Model} model @param {string[]} names
 * @returns {{ box: HTMLDivElement, colourSel: HTMLSelectElement, logBox: HTMLInputElement }} */
function buildControls(model, names) {
  const box = h("div", { marginBottom: "6px" });
  const colourSel = h("select", { marginRight: "10px" });
  colourSel.classList.add("ae-colour-by");
  for (const [v, label] of [["", "no colour strip"], ...names.map((n) => [n, "strip: " + model.get("stat_labels")[n]])])
    colourSel.append(Object.assign(h("option", {}, label), { value: v }));
  colourSel.addEventListener("change", () => { model.set("colour_by", colourSel.value); model.save_changes(); });
  const logBox = Object.assign(h("input"), { type: "checkbox" });
  logBox.addEventListener("change", () => { model.set("log_scale", logBox.checked); model.save_changes(); });
  const logLabel = h("label");
  logLabel.append(logBox, document.createTextNode(" log scale"));
  box.append(colourSel, logLabel);
  return { box, colourSel, logBox };
}

/** Build the view's elements in `el`: the controls, the thumbnails' canvas, its caption, the table and the tooltip.
 * @param {Model} model @param {HTMLElement} el @returns {HeadsView} */
function build(model, el) {
  el.classList.add("ae-heads-map");
  Object.assign(el.style, { position: "relative", font: "12px sans-serif", color: "#222" });
  const names = Object.keys(model.get("stat_labels"));
  const { box: controls, colourSel, logBox } = buildControls(model, names);
  const scroller = h("div", { maxHeight: "560px", overflowY: "auto", display: "inline-block", border: "1px solid #ddd" });
  const canvas = h("canvas", { display: "block", cursor: "pointer" });
  canvas.classList.add("ae-thumbs");
  scroller.append(canvas);
  const caption = h("div", { font: "11px sans-serif", color: "#555", margin: "4px 0" });
  const tableBox = h("div", { maxHeight: "220px", overflowY: "auto", display: "inline-block", border: "1px solid #ddd" });
  const table = h("table", { borderCollapse: "collapse", font: "12px sans-serif" });
  table.classList.add("ae-stats");
  tableBox.append(table);
  const tip = h("div", { position: "absolute", pointerEvents: "none", display: "none", zIndex: 10,
    background: "rgba(0,0,0,.82)", color: "#fff", font: "12px monospace", padding: "3px 6px",
    borderRadius: "3px", whiteSpace: "pre" });
  tip.classList.add("ae-tip");
  el.append(controls, scroller, caption, tableBox, tip);
  return { model, el, L: model.get("n_layers"), H: model.get("n_heads"), names, colourSel, logBox, canvas, caption,
    tableBox, table, tip, draws: 0, sortKey: "layer", sortDir: 1, pending: false, scrolledTo: "" };
}

/** All thumbnails packed in one image (a row per layer, n × n pixels a head), to be scaled into place.
 * @param {HeadsView} v @param {number} n a thumbnail's side in weights @returns {HTMLCanvasElement} */
function packThumbnails(v, n) {
  const { L, H } = v, u8 = asU8(v.model.get("thumbs"));
  const off = document.createElement("canvas");
  off.width = H * n;
  off.height = L * n;
  if (n && u8.length >= L * H * n * n) {
    const img = new ImageData(H * n, L * n), out = new Uint32Array(img.data.buffer);
    for (let l = 0; l < L; l++) for (let hd = 0; hd < H; hd++) {
      const base = (l * H + hd) * n * n;
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++)
        out[(l * n + i) * H * n + hd * n + j] = j > i ? MASKED : LUT[u8[base + i * n + j]];
    }
    off.getContext("2d").putImageData(img, 0, 0);
  }
  return off;
}

/** The smallest and the largest value of statistic `by` over all heads (±Infinity if none, or no `by`).
 * @param {HeadsView} v @param {string} by @returns {[number, number]} */
function statRange(v, by) {
  let lo = Infinity, hi = -Infinity;
  if (by) for (const row of v.model.get("stats")[by]) for (const x of row) if (x !== null) { lo = Math.min(lo, x); hi = Math.max(hi, x); }
  return [lo, hi];
}

/** The thumbnails with their labels, colour strips (statistic `by` from lo to hi) and the selection outlined.
 * @param {HeadsView} v @param {Geometry} g @param {string} by @param {number} lo @param {number} hi */
function drawThumbnails(v, g, by, lo, hi) {
  const { L, H, canvas } = v, { px, cw, ch, strip } = g, n = v.model.get("thumb_n");
  const dpr = window.devicePixelRatio || 1;
  const W = LEFT + H * cw, Ht = TOP + L * ch;
  canvas.style.width = W + "px";
  canvas.style.height = Ht + "px";
  canvas.width = W * dpr;
  canvas.height = Ht * dpr;
  const ctx = canvas.getContext("2d");
  ctx.scale(dpr, dpr);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, W, Ht);
  const off = packThumbnails(v, n);
  ctx.imageSmoothingEnabled = false;
  ctx.font = "11px sans-serif";
  ctx.fillStyle = "#333";
  ctx.textBaseline = "middle";
  for (let hd = 0; hd < H; hd++) ctx.fillText(`H${hd}`, LEFT + hd * cw + px / 2 - 8, TOP / 2);
  const selL = v.model.get("layer"), selH = v.model.get("head");
  for (let l = 0; l < L; l++) {
    ctx.fillStyle = "#333";
    ctx.fillText(`L${l}`, 2, TOP + l * ch + px / 2);
    for (let hd = 0; hd < H; hd++) {
      const x = LEFT + hd * cw, y = TOP + l * ch;
      ctx.drawImage(off, hd * n, l * n, n, n, x, y, px, px);
      if (by) {
        const s = stat(v, by, l, hd);
        ctx.fillStyle = s === null ? "#ccc" : cssColour(Math.round((255 * (s - lo)) / (hi - lo || 1)));
        ctx.fillRect(x, y + px + 1, px, STRIP);
      }
      if (l === selL && (selH === null || selH === hd)) {
        ctx.strokeStyle = "#ff3b30";
        ctx.lineWidth = 2;
        ctx.strokeRect(x - 1.5, y - 1.5, px + 3, px + strip + 3);
      }
    }
  }
}

/** The caption under the thumbnails: what they show and what the strip's colours mean.
 * @param {HeadsView} v @param {string} by @param {number} lo @param {number} hi */
function drawCaption(v, by, lo, hi) {
  const get = (k) => v.model.get(k), f = get("thumb_factor");
  v.caption.textContent = `${v.L} layers × ${v.H} heads, ${get("n_tokens")} tokens` +
    (f > 1 ? `; each pixel is the max of ${f}×${f} weights` : "") +
    `; each thumbnail scaled to its own largest weight${get("log_scale") ? " (log)" : ""}` +
    (by ? `; strip: ${get("stat_labels")[by]}, ${fmt(lo)} (dark) to ${fmt(hi)} (yellow)` : "");
}

/** Draw the thumbnails, strips, caption and table from the model's current state, and note the draw in el's
 * data-* attributes.
 * @param {HeadsView} v */
function draw(v) {
  const t0 = performance.now(), g = geometry(v);
  const by = v.model.get("colour_by"), [lo, hi] = statRange(v, by);
  drawThumbnails(v, g, by, lo, hi);
  drawCaption(v, by, lo, hi);
  v.colourSel.value = by;
  v.logBox.checked = v.model.get("log_scale");
  drawTable(v);
  v.draws += 1;
  const { px, cw, ch } = g;
  Object.assign(v.el.dataset, { drawCount: v.draws, drawnAt: performance.now(), drawMs: (performance.now() - t0).toFixed(1),
    layer: v.model.get("layer"), head: v.model.get("head") ?? "mean",
    geometry: JSON.stringify({ left: LEFT, top: TOP, px, cw, ch }) });
}

/** The table's header row: a click on a column sorts by it (again: the other way).
 * @param {HeadsView} v @returns {HTMLTableRowElement} */
function tableHeader(v) {
  const head = h("tr");
  for (const k of ["layer", "head", ...v.names]) {
    const th = h("th", { position: "sticky", top: "0", background: "#f4f4f4", padding: "2px 8px", cursor: "pointer",
      textAlign: "right" }, k + (k === v.sortKey ? (v.sortDir > 0 ? " ▲" : " ▼") : ""));
    th.title = v.model.get("stat_labels")[k] || k;
    th.dataset.key = k;
    th.addEventListener("click", () => {
      v.sortDir = k === v.sortKey ? -v.sortDir : k === "layer" || k === "head" ? 1 : -1;
      v.sortKey = k;
      drawTable(v);
    });
    head.append(th);
  }
  return head;
}

/** A row per head, { layer, head, ...statistics }, sorted by `sortKey` in `sortDir`.
 * @param {HeadsView} v @returns {Array<Record<string, number | null>>} */
function sortedStats(v) {
  const rows = [];
  for (let l = 0; l < v.L; l++) for (let hd = 0; hd < v.H; hd++) {
    const r = { layer: l, head: hd };
    for (const n of v.names) r[n] = stat(v, n, l, hd);
    rows.push(r);
  }
  const val = (r) => (r[v.sortKey] === null ? -Infinity : r[v.sortKey]);
  rows.sort((a, b) => v.sortDir * (val(a) - val(b)) || a.layer - b.layer || a.head - b.head);
  return rows;
}

/** The statistics table, sorted by `sortKey` in `sortDir`, the selected head's row marked and brought into view.
 * @param {HeadsView} v */
function drawTable(v) {
  const selL = v.model.get("layer"), selH = v.model.get("head");
  const body = sortedStats(v).map((r) => {
    const tr = h("tr", { cursor: "pointer", background: r.layer === selL && r.head === selH ? "#ffe58a" : "" });
    tr.dataset.layer = r.layer;
    tr.dataset.head = r.head;
    for (const k of ["layer", "head", ...v.names])
      tr.append(h("td", { padding: "1px 8px", textAlign: "right" }, k === "layer" || k === "head" ? String(r[k]) : fmt(r[k])));
    tr.addEventListener("click", () => pick(v.model, r.layer, r.head));
    return tr;
  });
  v.table.replaceChildren(tableHeader(v), ...body);
  const shown = body.find((tr) => +tr.dataset.layer === selL && +tr.dataset.head === selH);
  if (shown && `${selL} ${selH}` !== v.scrolledTo) { // bring a newly selected head's row into view, once
    v.scrolledTo = `${selL} ${selH}`;
    v.tableBox.scrollTop = shown.offsetTop - v.tableBox.clientHeight / 2;
  }
}

/** The [layer, head] of the thumbnail under the pointer, or null.
 * @param {HeadsView} v @param {MouseEvent} ev @returns {[number, number] | null} */
function headAt(v, ev) {
  const r = v.canvas.getBoundingClientRect(), { px, cw, ch } = geometry(v);
  const x = ev.clientX - r.left - LEFT, y = ev.clientY - r.top - TOP;
  const hd = Math.floor(x / cw), l = Math.floor(y / ch);
  if (x < 0 || y < 0 || hd >= v.H || l >= v.L || x - hd * cw > px || y - l * ch > px) return null;
  return [l, hd];
}

/** The tooltip over a thumbnail: the head's statistics.
 * @param {HeadsView} v @param {MouseEvent} ev */
function showTip(v, ev) {
  const c = headAt(v, ev), { tip } = v;
  if (!c) { tip.style.display = "none"; return; }
  const [l, hd] = c, labels = v.model.get("stat_labels");
  tip.textContent = [`layer ${l}, head ${hd}`, ...v.names.map((n) => `${n.padEnd(8)} ${fmt(stat(v, n, l, hd))}  ${labels[n]}`)]
    .join("\n");
  const r = v.el.getBoundingClientRect();
  Object.assign(tip.style, { left: ev.clientX - r.left + 14 + "px", top: ev.clientY - r.top + 14 + "px", display: "block" });
}

/** Hover and click on the thumbnails.
 * @param {HeadsView} v */
function listen(v) {
  v.canvas.addEventListener("mousemove", (ev) => showTip(v, ev));
  v.canvas.addEventListener("mouseleave", () => { v.tip.style.display = "none"; });
  v.canvas.addEventListener("click", (ev) => { const c = headAt(v, ev); if (c) pick(v.model, c[0], c[1]); });
}

/** Redraw once for all the traits one message changes.
 * @param {HeadsView} v */
function schedule(v) {
  if (v.pending) return;
  v.pending = true;
  queueMicrotask(() => { v.pending = false; draw(v); });
}

/** Redraw on the model's changes; returns the cleanup.
 * @param {HeadsView} v @returns {() => void} */
function connect(v) {
  const redraw = () => schedule(v);
  const events = ["thumbs", "layer", "head", "colour_by", "stats"].map((k) => "change:" + k);
  for (const e of events) v.model.on(e, redraw);
  return () => { for (const e of events) v.model.off(e, redraw); };
}

export default { render: viewRenderer(build, listen, connect, draw) };
