// The standalone HTML page (written by export.py): heatmap.js, inlined beside this script, draws the heatmap
// from a model of the same shape as the notebook widget's, filled here from the embedded float32 weights;
// below it a stepper walks through the generated tokens. Tokens are only written with textContent.
// Both scripts start with prelude.js (export.py puts it in front), so the colours and helpers are the notebook's.

const data = JSON.parse(document.getElementById("attention-data").textContent);
const source = document.getElementById("heatmap-module").textContent;
const heatmap = await import(URL.createObjectURL(new Blob([source], { type: "text/javascript" })));

const N = data.n_tokens, H = data.n_heads, TRI = (N * (N + 1)) / 2;
const raw = Uint8Array.from(atob(data.attention), (c) => c.charCodeAt(0));
const attention = new Float32Array(raw.buffer); // [layers, heads + mean, packed lower triangle]
/** The weight of query i on key j in a head (null: the layer's mean), 0 above the diagonal.
 * @param {number} layer @param {number | null} head @param {number} i @param {number} j @returns {number} */
const weight = (layer, head, i, j) =>
  j > i ? 0 : attention[(layer * (H + 1) + (head ?? H)) * TRI + (i * (i + 1)) / 2 + j];

/** The same colour indices as attention_data.quantise in Python.
 * @param {number} w @param {number} scale @param {boolean} log @param {number} decades @returns {number} */
function quantise(w, scale, log, decades) {
  const q = log ? 255 * (1 + Math.log10(Math.max(w, 1e-38) / scale) / decades) : (255 * w) / scale;
  return Math.max(0, Math.min(255, Math.round(q)));
}

/** What the Python HeatmapView computes on a change, computed here from the embedded weights.
 * @param {LocalModel} m @param {Set<string>} changed the traits set @returns {Set<string>} the traits now changed */
function refresh(m, changed) {
  const s = m.state, clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));
  s.window_size = clamp(s.window_size, 1, N);
  s.window_start = clamp(s.window_start, 0, N - s.window_size);
  s.key_start = clamp(s.key_start, 0, N - s.window_size);
  const out = new Set(changed), sel = s.selected_token;
  if (changed.has("selected_token") && sel !== null && !(sel >= s.window_start && sel < s.window_start + s.window_size)) {
    s.window_start = s.key_start = clamp(sel - Math.floor(s.window_size / 2), 0, N - s.window_size);
  }
  if (["layer", "head", "log_scale"].some((k) => changed.has(k))) {
    s.scale = 0;
    for (let i = 0; i < N; i++) for (let j = 0; j <= i; j++) s.scale = Math.max(s.scale, weight(s.layer, s.head, i, j));
    s.scale = s.scale || 1;
    s.overview = new Uint8Array(N * N);
    for (let i = 0; i < N; i++) for (let j = 0; j <= i; j++)
      s.overview[i * N + j] = quantise(weight(s.layer, s.head, i, j), s.scale, s.log_scale, s.log_decades);
    out.add("overview");
  }
  const r0 = s.window_start, c0 = s.key_start, rows = Math.min(N - r0, s.window_size), cols = Math.min(N - c0, s.window_size);
  const exact = new Float32Array(rows * cols), u8 = new Uint8Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) {
    exact[i * cols + j] = weight(s.layer, s.head, r0 + i, c0 + j);
    u8[i * cols + j] = quantise(exact[i * cols + j], s.scale, s.log_scale, s.log_decades);
  }
  Object.assign(s, { window_rows: rows, window_cols: cols, window: u8, window_exact: new Uint8Array(exact.buffer),
    shows: `${s.layer} ${s.head ?? "mean"}` });
  out.add("window");
  return out;
}

/** The part of the anywidget model API that heatmap.js uses (prelude.js's Model), over a plain state object. */
class LocalModel {
  /** @param {Record<string, any>} state */
  constructor(state) { this.state = state; this.dirty = new Set(); this.listeners = {}; refresh(this, new Set(["layer"])); }
  /** @param {string} k @returns {any} */
  get(k) { return this.state[k]; }
  /** @param {string} k @param {any} v */
  set(k, v) { this.state[k] = v; this.dirty.add(k); }
  /** @param {string} e @param {Function} f */
  on(e, f) { (this.listeners[e] ||= []).push(f); }
  /** @param {string} e @param {Function} f */
  off(e, f) { this.listeners[e] = (this.listeners[e] || []).filter((g) => g !== f); }
  /** @param {string} e @param {...any} args */
  emit(e, ...args) { for (const f of this.listeners[e] || []) f(...args); }
  /** Recompute what the set traits change, then tell the listeners. */
  save_changes() {
    const changed = refresh(this, this.dirty);
    this.dirty = new Set();
    for (const k of changed) this.emit("change:" + k);
  }
  /** The overview's "largest weight under this cell": one weight a cell here. @param {any} msg */
  send(msg) {
    if (msg.kind !== "block") return;
    const s = this.state, reply = { ...msg, layer: s.layer, head: s.head, query: msg.row, key: msg.col,
      weight: weight(s.layer, s.head, msg.row, msg.col) };
    setTimeout(() => this.emit("msg:custom", reply), 0);
  }
}

const model = new LocalModel({
  tokens: data.tokens, n_prompt: data.n_prompt, n_layers: data.n_layers, n_heads: data.n_heads,
  layer: data.layer, head: data.head, log_scale: false, log_decades: 4, window_start: 0, key_start: 0,
  window_size: Math.min(N, 64), overview_factor: 1, overview_n: N, selected_token: null,
});
heatmap.default.render({ model, el: document.getElementById("heatmap") });

// --- the stepper: text so far with the new token marked, the attention that chose it, its probability
const box = document.getElementById("stepper");
box.classList.add("ae-stepper");
const steps = data.steps;
if (!steps.length) {
  box.textContent = data.total_tokens > N ? `No generated token falls in the first ${N} tokens.` : "This trace has no generated tokens.";
} else {
  const slider = Object.assign(h("input", { width: "320px" }), { type: "range", min: "0", max: String(steps.length - 1), value: "0" });
  slider.classList.add("ae-step-slider");
  const label = h("span", { marginLeft: "8px" });
  const note = h("div", { font: "11px sans-serif", color: "#555", margin: "4px 0" });
  const text = h("div", { lineHeight: "1.9", maxWidth: "900px", whiteSpace: "pre-wrap", margin: "6px 0" });
  text.classList.add("ae-step-text");
  const about = h("div", { margin: "6px 0" });
  about.classList.add("ae-step-token");
  const topk = h("table", { borderCollapse: "collapse", font: "12px sans-serif" });
  topk.classList.add("ae-step-topk");
  const controls = h("div");
  controls.append(slider, label);
  box.append(controls, note, text, about, topk);

  let draws = 0;
  /** The step the slider is on: its text, shading, readout and candidates. */
  function drawStep() {
    const st = steps[+slider.value], p = st.position, layer = model.get("layer"), head = model.get("head");
    label.textContent = `step ${st.index + 1} of ${steps.length}`;
    note.textContent = `Shading: attention of position ${p - 1} (the query that produced the new token) in layer ${layer}, `
      + (head === null ? "mean of heads" : `head ${head}`) + ". Hover a token for its weight.";
    const row = [...Array(p).keys()].map((j) => weight(layer, head, p - 1, j));
    const top = Math.max(...row, 1e-12);
    text.replaceChildren(...data.text.slice(0, p + 1).map((t, j) => {
      const span = h("span", { padding: "1px 0", borderRadius: "2px" }, t);
      if (j === p) Object.assign(span.style, { background: "#ffd54a", fontWeight: "bold", outline: "1px solid #b58900" });
      else span.style.background = `rgba(31,119,180,${(0.85 * row[j]) / top})`;
      span.title = j === p ? "the new token" : `#${j}: weight ${heatmap.fmt(row[j])}`;
      return span;
    }));
    about.textContent = `new token “${st.token}”: probability ${heatmap.fmt(st.prob)}, rank ${st.rank}, `
      + `entropy of the distribution ${heatmap.fmt(st.entropy)} nats`;
    topk.replaceChildren(h("tr"), ...st.top_k.map(([tok, prob]) => {
      const tr = h("tr", { background: tok === st.token ? "#fff3c4" : "" });
      const bar = h("div", { width: `${Math.round(200 * prob)}px`, height: "10px", background: "#1f77b4" });
      const cell = h("td", { padding: "1px 6px" });
      cell.append(bar);
      tr.append(h("td", { padding: "1px 6px", fontFamily: "monospace" }, `“${tok}”`), cell,
        h("td", { padding: "1px 6px", textAlign: "right" }, heatmap.fmt(prob)));
      return tr;
    }));
    topk.firstChild.append(h("th", { textAlign: "left" }, "top candidates"), h("th"), h("th", {}, "p"));
    draws += 1;
    Object.assign(box.dataset, { drawCount: draws, step: st.index, position: p });
  }
  slider.addEventListener("input", () => {
    drawStep();
    model.set("selected_token", steps[+slider.value].position);
    model.save_changes();
  });
  model.on("change:layer", drawStep);
  model.on("change:head", drawStep);
  drawStep();
}
document.body.dataset.ready = "1";
