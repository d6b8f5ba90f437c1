// The attention heatmap: a whole-head overview and a labelled window, drawn from uint8 colour indices.
// The same module draws in a notebook (anywidget) and in the standalone HTML page (export.js gives it a
// model of the same shape). Tokens are only ever written with textContent.
// LUT, MASKED, asU8 and h come from prelude.js, put in front of this file by frontend.py.

/** Paint a rows × cols matrix of colour indices onto `canvas`, cells above the diagonal (key after query) grey.
 * rowStart/colStart place the matrix in the whole sequence, in cells.
 * @param {HTMLCanvasElement} canvas @param {Uint8Array} u8 @param {number} rows @param {number} cols
 * @param {number} [rowStart] @param {number} [colStart] */
export function paint(canvas, u8, rows, cols, rowStart = 0, colStart = 0) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!rows || !cols || u8.length < rows * cols) return;
  const img = new ImageData(cols, rows);
  const out = new Uint32Array(img.data.buffer);
  for (let i = 0; i < rows; i++) {
    const q = rowStart + i;
    for (let j = 0; j < cols; j++) out[i * cols + j] = colStart + j > q ? MASKED : LUT[u8[i * cols + j]];
  }
  const off = document.createElement("canvas");
  off.width = cols;
  off.height = rows;
  off.getContext("2d").putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
}

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

/** The legend: a vertical colour bar with tick values (linear or by decades).
 * @param {HTMLElement} box @param {number} scale @param {boolean} log @param {number} decades */
function drawLegend(box, scale, log, decades) {
  box.replaceChildren();
  const H = 200;
  const bar = h("canvas", { width: "14px", height: H + "px", display: "block" });
  bar.width = 1;
  bar.height = 256;
  const img = new ImageData(1, 256);
  const out = new Uint32Array(img.data.buffer);
  for (let i = 0; i < 256; i++) out[i] = LUT[255 - i];
  bar.getContext("2d").putImageData(img, 0, 0);
  const ticks = h("div", { position: "relative", height: H + "px", width: "64px", font: "11px sans-serif" });
  const n = log ? Math.round(decades) : 2;
  for (let d = 0; d <= n; d++) {
    const frac = d / n; // 0 at the top
    const value = log ? scale * 10 ** -d : scale * (1 - frac);
    const label = (log && d === n ? "≤ " : "") + String(Number(value.toPrecision(2)));
    ticks.append(h("div", { position: "absolute", left: "4px", top: `${frac * H - 7}px` }, label));
  }
  const row = h("div", { display: "flex" });
  row.append(bar, ticks);
  box.append(h("div", { font: "11px sans-serif", marginBottom: "9px" }, log ? "weight (log)" : "weight"), row);
}

/** Draw the heatmap into `el` and redraw on the model's changes; returns the cleanup.
 * @param {{ model: Model, el: HTMLElement }} ctx @returns {() => void} */
function render({ model, el }) {
  el.classList.add("ae-heatmap");
  Object.assign(el.style, { position: "relative", font: "12px sans-serif", color: "#222" });
  const LABEL_W = 110, LABEL_H = 84, OVERVIEW_PX = 240;
  const get = (k) => model.get(k);
  const save = (pairs) => { for (const [k, v] of pairs) model.set(k, v); model.save_changes(); };

  // controls
  const controls = h("div", { marginBottom: "6px", display: "flex", alignItems: "center", flexWrap: "wrap" });
  const layerSel = select([...Array(get("n_layers")).keys()].map((l) => [l, `layer ${l}`]),
    (v) => save([["layer", +v]]));
  const headSel = select([[-1, "mean of heads"], ...[...Array(get("n_heads")).keys()].map((x) => [x, `head ${x}`])],
    (v) => save([["head", +v < 0 ? null : +v]]));
  const T = get("tokens").length;
  const sizes = [16, 32, 64, 128, 256].filter((s) => s < T).concat([Math.min(T, 256)]);
  if (!sizes.includes(get("window_size"))) sizes.push(get("window_size"));
  const sizeSel = select(sizes.sort((a, b) => a - b).map((s) => [s, `window ${s}`]),
    (v) => save([["window_size", +v]]));
  const logBox = Object.assign(h("input"), { type: "checkbox" });
  logBox.addEventListener("change", () => save([["log_scale", logBox.checked]]));
  const slider = Object.assign(h("input", { width: "220px" }), { type: "range", min: "0", step: "1" });
  slider.addEventListener("input", () => save([["window_start", +slider.value], ["key_start", +slider.value]]));
  const logLabel = h("label", { marginRight: "10px" });
  logLabel.append(logBox, document.createTextNode(" log scale"));
  controls.append(layerSel, headSel, sizeSel, logLabel, h("span", { marginRight: "4px" }, "move window"), slider);
  [layerSel, headSel, sizeSel, logBox, slider].forEach((c, i) => c.classList.add(
    ["ae-layer", "ae-head", "ae-size", "ae-log", "ae-slider"][i]));

  // overview | window with labels | legend
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
  grid.append(colLabels, rowLabels, canvas);
  const legend = h("div", { marginTop: LABEL_H + "px", flexShrink: 0 });
  body.append(ovBox, grid, legend);
  const readout = h("div", { marginTop: "6px", minHeight: "16px" });
  readout.classList.add("ae-readout");
  const tip = h("div", { position: "absolute", pointerEvents: "none", display: "none", zIndex: 10,
    background: "rgba(0,0,0,.82)", color: "#fff", font: "12px monospace", padding: "3px 6px",
    borderRadius: "3px", whiteSpace: "pre" });
  tip.classList.add("ae-tip");
  el.append(controls, body, readout, tip);

  let draws = 0, cell = 10, labelKey = "", pending = false;
  const token = (i) => `${i} “${get("tokens")[i]}”`;
  // where the window bytes start: Python sends window_at with them; the standalone page has window_start/key_start
  const origin = () => get("window_at") ?? [get("window_start"), get("key_start")];

  /** The row and column token labels of the window, rebuilt only when they change.
   * @param {number} r0 @param {number} c0 @param {number} rows @param {number} cols */
  function labels(r0, c0, rows, cols) {
    const key = [r0, c0, rows, cols, cell, get("selected_token")].join();
    if (key === labelKey) return;
    labelKey = key;
    const toks = get("tokens"), np = get("n_prompt"), sel = get("selected_token");
    const every = Math.ceil(9 / cell), font = Math.min(12, Math.max(cell, 9) - 1);
    const make = (i, vertical) => {
      const pos = (vertical ? c0 : r0) + i;
      const e = h("div", { position: "absolute", overflow: "hidden", textOverflow: "ellipsis", whiteSpace: "nowrap",
        font: `${font}px sans-serif`, cursor: "pointer", color: pos >= np ? "#b35900" : "#222",
        fontWeight: pos === sel ? "bold" : "normal", background: pos === sel ? "#ffe58a" : "" }, toks[pos]);
      e.title = `#${pos}${pos >= np ? " (generated)" : ""}`;
      e.dataset.pos = String(pos);
      e.className = vertical ? "ae-col-label" : "ae-row-label";
      if (vertical) Object.assign(e.style, { left: LABEL_W + i * cell + "px", top: "0px", width: cell * every + "px",
        height: LABEL_H - 2 + "px", writingMode: "vertical-rl", transform: "rotate(180deg)", lineHeight: cell + "px" });
      else Object.assign(e.style, { left: "0px", top: LABEL_H + i * cell + "px", width: LABEL_W - 4 + "px",
        height: cell * every + "px", lineHeight: cell + "px", textAlign: "right" });
      e.addEventListener("click", () => save([["selected_token", pos]]));
      return e;
    };
    const pick = (n) => [...Array(n).keys()].filter((i) => i % every === 0);
    rowLabels.replaceChildren(...pick(rows).map((i) => make(i, false)));
    colLabels.replaceChildren(...pick(cols).map((i) => make(i, true)));
  }

  /** Draw everything from the model's current state. */
  function draw() {
    const t0 = performance.now();
    const f = get("overview_factor"), n = get("overview_n");
    const dpr = window.devicePixelRatio || 1;
    overview.width = overview.height = Math.round(OVERVIEW_PX * dpr);
    paint(overview, asU8(get("overview")), n, n);
    const [r0, c0] = origin(), ws = get("window_size");
    const ctx = overview.getContext("2d"), s = overview.width / n;
    ctx.strokeStyle = "#ff3b30";
    ctx.lineWidth = 2 * dpr;
    ctx.strokeRect((c0 / f) * s, (r0 / f) * s, Math.max(2, (ws / f) * s), Math.max(2, (ws / f) * s));
    ovCaption.textContent = `whole head, ${T} tokens` + (f > 1 ? `: each pixel is the max of ${f}×${f} weights` : "")
      + "; click to move the window";

    const rows = get("window_rows"), cols = get("window_cols");
    cell = Math.max(2, Math.min(18, Math.floor(640 / Math.max(rows, cols, 1))));
    canvas.style.width = cols * cell + "px";
    canvas.style.height = rows * cell + "px";
    canvas.width = cols * cell * dpr;
    canvas.height = rows * cell * dpr;
    paint(canvas, asU8(get("window")), rows, cols, r0, c0);
    const sel = get("selected_token");
    const w = canvas.getContext("2d"), px = cell * dpr;
    w.strokeStyle = "#ff3b30";
    w.lineWidth = Math.max(1, dpr);
    if (sel !== null && sel >= r0 && sel < r0 + rows) w.strokeRect(0, (sel - r0) * px, canvas.width, px);
    if (sel !== null && sel >= c0 && sel < c0 + cols) w.strokeRect((sel - c0) * px, 0, px, canvas.height);
    grid.style.width = LABEL_W + cols * cell + "px";
    grid.style.height = LABEL_H + rows * cell + "px";
    labels(r0, c0, rows, cols);
    drawLegend(legend, get("scale"), get("log_scale"), get("log_decades"));

    syncControls();
    readout.textContent = sel === null ? "click a token label or a cell to select a token"
      : `selected token ${token(sel)}${sel >= get("n_prompt") ? " (generated)" : ""}`;

    draws += 1;
    Object.assign(el.dataset, { drawCount: draws, drawnAt: performance.now(), drawMs: (performance.now() - t0).toFixed(1),
      layer: get("shows").split(" ")[0], head: get("shows").split(" ")[1], windowStart: r0, keyStart: c0 });
  }
  function syncControls() { // the pickers show the model's values, wherever they were changed
    const ws = get("window_size");
    layerSel.value = String(get("layer"));
    headSel.value = String(get("head") ?? -1);
    sizeSel.value = String(ws);
    logBox.checked = get("log_scale");
    slider.max = String(Math.max(0, T - ws));
    slider.value = String(get("window_start"));
  }
  function schedule() { // one draw for all the traits one message changes
    if (pending) return;
    pending = true;
    queueMicrotask(() => { pending = false; draw(); });
  }

  // hover and click
  const place = (ev) => {
    const r = el.getBoundingClientRect();
    tip.style.left = ev.clientX - r.left + 14 + "px";
    tip.style.top = ev.clientY - r.top + 14 + "px";
    tip.style.display = "block";
  };
  const windowCell = (ev) => {
    const r = canvas.getBoundingClientRect();
    const i = Math.floor((ev.clientY - r.top) / cell), j = Math.floor((ev.clientX - r.left) / cell);
    return i >= 0 && j >= 0 && i < get("window_rows") && j < get("window_cols") ? [i, j] : null;
  };
  canvas.addEventListener("mousemove", (ev) => {
    const c = windowCell(ev);
    if (!c) { tip.style.display = "none"; return; }
    const [i, j] = c, q = origin()[0] + i, k = origin()[1] + j;
    const exact = get("window_exact"), cols = get("window_cols");
    let text = `query ${token(q)}\nkey   ${token(k)}\n`;
    if (k > q) text += "masked: a token cannot attend to later tokens";
    else text += "weight " + fmt(new DataView(exact.buffer, exact.byteOffset, exact.byteLength)
      .getFloat32((i * cols + j) * 4, true));
    tip.textContent = text;
    place(ev);
  });
  canvas.addEventListener("click", (ev) => {
    const c = windowCell(ev);
    if (c) save([["selected_token", origin()[0] + c[0]]]);
  });
  let asked = null;
  const overviewCell = (ev) => {
    const r = overview.getBoundingClientRect(), n = get("overview_n");
    const row = Math.floor(((ev.clientY - r.top) / r.height) * n), col = Math.floor(((ev.clientX - r.left) / r.width) * n);
    return row >= 0 && col >= 0 && row < n && col < n ? [row, col] : null;
  };
  overview.addEventListener("mousemove", (ev) => {
    const c = overviewCell(ev);
    if (!c) { tip.style.display = "none"; return; }
    const f = get("overview_factor"), last = T - 1, [row, col] = c;
    const span = (a) => (f === 1 ? `${a * f}` : `${a * f}–${Math.min(last, a * f + f - 1)}`);
    place(ev);
    if (col > row) { tip.textContent = `queries ${span(row)}, keys ${span(col)}: masked`; asked = null; return; }
    if (asked && asked[0] === row && asked[1] === col) return;
    asked = [row, col];
    tip.textContent = `queries ${span(row)}, keys ${span(col)}\nlargest weight: …`;
    model.send({ kind: "block", row, col });
  });
  const onMsg = (msg) => {
    if (!msg || msg.kind !== "block" || !asked || msg.row !== asked[0] || msg.col !== asked[1]) return;
    if (msg.layer !== get("layer") || msg.head !== get("head")) return;
    tip.textContent = tip.textContent.replace("…", `${fmt(msg.weight)}\n  query ${token(msg.query)}\n  key   ${token(msg.key)}`);
  };
  model.on("msg:custom", onMsg);
  overview.addEventListener("click", (ev) => {
    const c = overviewCell(ev);
    if (!c) return;
    const f = get("overview_factor"), ws = get("window_size"), top = Math.max(0, T - ws);
    const at = (x) => Math.max(0, Math.min(top, Math.round(x * f + f / 2 - ws / 2)));
    save([["window_start", at(c[0])], ["key_start", at(c[1])]]);
  });
  for (const e of [canvas, overview]) e.addEventListener("mouseleave", () => { tip.style.display = "none"; asked = null; });

  const events = ["overview", "window", "window_at", "selected_token", "window_size", "log_scale", "shows"]
    .map((k) => "change:" + k);
  for (const e of events) model.on(e, schedule);
  const picks = ["layer", "head"].map((k) => "change:" + k);
  for (const e of picks) model.on(e, syncControls);
  draw();
  return () => {
    for (const e of events) model.off(e, schedule);
    for (const e of picks) model.off(e, syncControls);
    model.off("msg:custom", onMsg);
  };
}

export default { render };
