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
/** float32 values from base64 (null stays null). @param {string | null} b @returns {Float32Array | null} */
const floats = (b) => b && new Float32Array(Uint8Array.from(atob(b), (c) => c.charCodeAt(0)).buffer);
const norms = floats(data.norms); // [layers, heads, N]: ‖v_j W_O‖ of each head and key
const rollout = floats(data.rollout); // [N, N]
/** The weight of query i on key j in a head (null: the layer's mean), 0 above the diagonal.
 * @param {number} layer @param {number | null} head @param {number} i @param {number} j @returns {number} */
const weight = (layer, head, i, j) =>
  j > i ? 0 : attention[(layer * (H + 1) + (head ?? H)) * TRI + (i * (i + 1)) / 2 + j];

/** What the heatmap shows at (i, j) for its kind: the attention weight, the value-weighted weight α_ij·‖v_j W_O‖
 * (the mean over heads of those for the mean), or the rollout, which has no layer or head.
 * @param {Record<string, any>} s the model's state @param {number} i @param {number} j @returns {number} */
function shown(s, i, j) {
  if (s.kind === "rollout") return j > i ? 0 : rollout[i * N + j];
  if (s.kind !== "norm") return weight(s.layer, s.head, i, j);
  const heads = s.head === null ? [...Array(H).keys()] : [s.head];
  let total = 0;
  for (const head of heads) total += weight(s.layer, head, i, j) * norms[(s.layer * H + head) * N + j];
  return total / heads.length;
}

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
  if (changed.has("kind") && !s.kinds.includes(s.kind)) s.kind = "raw";
  if (["layer", "head", "kind", "log_scale"].some((k) => changed.has(k))) {
    s.scale = 0;
    for (let i = 0; i < N; i++) for (let j = 0; j <= i; j++) s.scale = Math.max(s.scale, shown(s, i, j));
    s.scale = s.scale || 1;
    s.overview = new Uint8Array(N * N);
    for (let i = 0; i < N; i++) for (let j = 0; j <= i; j++)
      s.overview[i * N + j] = quantise(shown(s, i, j), s.scale, s.log_scale, s.log_decades);
    out.add("overview");
  }
  const r0 = s.window_start, c0 = s.key_start, rows = Math.min(N - r0, s.window_size), cols = Math.min(N - c0, s.window_size);
  const exact = new Float32Array(rows * cols), u8 = new Uint8Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) {
    exact[i * cols + j] = shown(s, r0 + i, c0 + j);
    u8[i * cols + j] = quantise(exact[i * cols + j], s.scale, s.log_scale, s.log_decades);
  }
  Object.assign(s, { window_rows: rows, window_cols: cols, window: u8, window_exact: new Uint8Array(exact.buffer),
    shows: s.kind === "rollout" ? "rollout" : `${s.layer} ${s.head ?? "mean"}${s.kind === "norm" ? " norm" : ""}` });
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
      weight: shown(s, msg.row, msg.col) };
    setTimeout(() => this.emit("msg:custom", reply), 0);
  }
}

const model = new LocalModel({
  tokens: data.tokens, n_prompt: data.n_prompt, n_layers: data.n_layers, n_heads: data.n_heads,
  layer: data.layer, head: data.head, kind: "raw", kinds: data.kinds, log_scale: false, log_decades: 4,
  window_start: 0, key_start: 0,
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

// --- the analysis (export.py's analysis_payload): the text coloured by surprisal, the logit lens, the head atlas.
// Each section is drawn only when the trace holds its data; tokens are set with textContent, hovers with `title`.

/** A number for a label: three significant digits, "–" when not known.
 * @param {number | null} v @returns {string} */
const num = (v) => (v === null || v === undefined ? "–" : Math.abs(v) >= 1e-3 || v === 0 ? v.toPrecision(3) : v.toExponential(2));

/** A token in running text: a newline shows as ↵ and still breaks the line, an empty token as ∅.
 * @param {string} t @returns {string} */
const runningText = (t) => (t === "" ? "∅" : t.replaceAll("\n", "↵\n"));

const ANALYSIS_CSS = `
.ae-analysis h2 { font-size: 15px; margin: 22px 0 6px; }
.ae-analysis .ae-note { font: 12px sans-serif; color: #555; margin: 4px 0 6px; max-width: 900px; }
.ae-surprisal-text { font: 13px/1.8 ui-monospace, monospace; white-space: pre-wrap; word-break: break-word;
  max-width: 900px; border: 1px solid #ddd; border-radius: 4px; padding: 4px 6px; }
.ae-surprisal-text span { border-radius: 2px; }
.ae-legend-bar { display: inline-block; width: 160px; height: 12px; vertical-align: middle; border: 1px solid #ccc; }
.ae-scroll { overflow: auto; width: fit-content; max-width: 100%; border: 1px solid #ddd; }
.ae-lens { border-collapse: collapse; font: 11px ui-monospace, monospace; }
.ae-lens th, .ae-lens td { border: 1px solid #eee; padding: 1px 3px; max-width: 64px; overflow: hidden;
  text-overflow: ellipsis; white-space: pre; }
.ae-lens th { background: #f6f6f6; font-weight: normal; }
.ae-lens th.ae-layer { position: sticky; left: 0; z-index: 1; text-align: right; }
.ae-lens td.ae-top1 { font-weight: bold; }
.ae-atlas-box { max-height: 420px; }
.ae-atlas { border-collapse: collapse; font: 12px sans-serif; }
.ae-atlas th { position: sticky; top: 0; background: #f6f6f6; cursor: pointer; padding: 3px 8px; user-select: none;
  border-bottom: 1px solid #ccc; white-space: nowrap; }
.ae-atlas th[data-sort="desc"]::after { content: " ▼"; }
.ae-atlas th[data-sort="asc"]::after { content: " ▲"; }
.ae-atlas td { padding: 1px 8px; text-align: right; font-family: ui-monospace, monospace; }
`;

/** The text coloured by surprisal on a white-to-colour scale, a legend, hover for nats, bits and probability.
 * @param {HTMLElement} box @param {{values: (number|null)[], rgb: number[], full: number}} s */
function drawSurprisal(box, s) {
  const generated = new Map(data.steps.map((st) => [st.position, st]));
  const legend = h("div", { font: "12px sans-serif", color: "#333" });
  const bar = h("span");
  bar.className = "ae-legend-bar";
  bar.style.background = `linear-gradient(to right, rgba(${s.rgb},0), rgba(${s.rgb},1))`;
  const none = h("span", { display: "inline-block", width: "12px", height: "12px", verticalAlign: "middle",
    border: "1px solid #ccc", background: "#fff" });
  legend.append("surprisal 0 ", bar, ` ≥ ${s.full} nats (${(s.full / Math.LN2).toFixed(1)} bits)   `, none,
    " not known (the first token; the prompt of an older trace)");
  const text = h("div");
  text.className = "ae-surprisal-text";
  text.append(...data.text.map((t, i) => {
    const v = s.values[i];
    const span = h("span", {}, runningText(t));
    span.dataset.index = String(i);
    span.dataset.surprisal = v === null ? "" : String(v);
    if (v !== null) span.style.background = `rgba(${s.rgb},${Math.min(1, Math.max(0, v / s.full)).toFixed(3)})`;
    const lines = [`#${i} “${visible(t)}”`,
      v === null ? "surprisal not known" : `surprisal ${v.toFixed(2)} nats (${(v / Math.LN2).toFixed(2)} bits)`];
    const st = generated.get(i);
    if (st) lines.push(`generated at step ${st.index} · p ${num(st.prob)} · rank ${st.rank}`);
    span.title = lines.join("\n");
    return span;
  }));
  const note = h("div", {}, "Surprisal is −ln p(token | the tokens before it): how unexpected each token was to the "
    + "model. Hover a token for its value in nats and bits and, for a generated token, its probability.");
  note.className = "ae-note";
  box.append(h("h2", {}, "The text, coloured by surprisal"), note, legend, text);
}

/** The logit lens as a table: a row a layer (the last on top), a column a covered position; each cell the token
 * that block ranks first, coloured by the probability it gives the token that actually came next.
 * @param {HTMLElement} box @param {any} lens */
function drawLens(box, lens) {
  const L = lens.top_ids.length, word = (id) => visible(lens.words[String(id)] ?? "");
  const table = h("table");
  table.className = "ae-lens";
  const head = h("tr");
  head.append(h("th", {}, "layer"));
  lens.positions.forEach((p, c) => {
    const th = h("th", {}, `#${p} ${visible(data.text[p] ?? "")}`);
    th.title = `position ${p}: “${visible(data.text[p] ?? "")}”; next token “${visible(lens.next_tokens[c] ?? "")}”`;
    head.append(th);
  });
  head.firstChild.className = "ae-layer";
  table.append(head);
  for (let l = L - 1; l >= 0; l--) {
    const tr = h("tr");
    tr.dataset.layer = String(l);
    const label = h("th", {}, String(l));
    label.className = "ae-layer";
    tr.append(label);
    lens.positions.forEach((p, c) => {
      const ids = lens.top_ids[l][c], probs = lens.top_probs[l][c], next = lens.next_prob[l][c];
      const td = h("td", {}, word(ids[0]));
      Object.assign(td.dataset, { layer: String(l), position: String(p), topId: String(ids[0]),
        nextProb: next === null ? "" : String(next) });
      if (next !== null) td.style.background = `rgba(44,160,44,${Math.min(1, next).toFixed(3)})`;
      if (lens.next_rank[l][c] === 1) td.classList.add("ae-top1");
      const nextLine = next === null ? "the trace ends here"
        : `next token “${visible(lens.next_tokens[c])}”: p ${num(next)}, rank ${lens.next_rank[l][c]}`;
      td.title = [`layer ${l}, position ${p} “${visible(data.text[p] ?? "")}”`, nextLine, "top:",
        ...ids.map((id, r) => `  ${r + 1}. “${word(id)}” ${num(probs[r])}`)].join("\n");
      tr.append(td);
    });
    table.append(tr);
  }
  const foot = h("tr");
  foot.append(h("th", {}, "came next"), ...lens.next_tokens.map((t) => h("th", {}, t === null ? "–" : visible(t))));
  foot.firstChild.className = "ae-layer";
  table.append(foot);
  const scroll = h("div");
  scroll.className = "ae-scroll";
  scroll.append(table);
  const note = h("div", {}, `What the residual stream after each block predicts (the last layer on top: the model's `
    + `own output), at ${lens.positions.length} positions. Each cell: the token that layer ranks first; green: the `
    + `probability it gives the token that actually came next (bold: ranked first). Hover for the top ${lens.top_ids[0][0].length}.`);
  note.className = "ae-note";
  box.append(h("h2", {}, "Logit lens"), note, scroll);
}

/** The head atlas: every head's scores in a table that sorts on a click on a column's header.
 * @param {HTMLElement} box @param {{n_tokens: number, names: string[], scores: Record<string, (number|null)[][]>}} atlas */
function drawAtlas(box, atlas) {
  const first = atlas.scores[atlas.names[0]];
  const rows = [];
  first.forEach((heads, l) => heads.forEach((_, hd) => rows.push([l, hd, ...atlas.names.map((n) => atlas.scores[n][l][hd])])));
  const columns = ["layer", "head", ...atlas.names];
  const known = columns.map((_, c) => rows.map((r) => r[c]).filter((v) => v !== null));
  const lows = known.map((vs) => Math.min(...vs)), highs = known.map((vs) => Math.max(...vs));
  const table = h("table");
  table.className = "ae-atlas";
  const head = h("tr");
  const body = h("tbody");
  columns.forEach((name, c) => {
    const th = h("th", {}, name.replaceAll("_", " "));
    th.dataset.column = name;
    th.addEventListener("click", () => {
      const order = th.dataset.sort === "desc" ? "asc" : "desc";
      for (const other of head.children) delete other.dataset.sort;
      th.dataset.sort = order;
      const sign = order === "desc" ? -1 : 1;
      rows.sort((a, b) => (a[c] === null) - (b[c] === null) || sign * ((a[c] ?? 0) - (b[c] ?? 0)) || a[0] - b[0] || a[1] - b[1]);
      fill();
    });
    head.append(th);
  });
  /** The rows in their current order; a score's cell is shaded by where it lies between the column's extremes. */
  function fill() {
    body.replaceChildren(...rows.map((r) => {
      const tr = h("tr");
      Object.assign(tr.dataset, { layer: String(r[0]), head: String(r[1]) });
      r.forEach((v, c) => {
        const td = h("td", {}, c < 2 ? String(v) : num(v));
        td.dataset.value = v === null ? "" : String(v);
        const span = highs[c] - lows[c];
        if (c >= 2 && v !== null && span > 0) td.style.background = `rgba(31,119,180,${(0.6 * (v - lows[c]) / span).toFixed(3)})`;
        tr.append(td);
      });
      return tr;
    }));
  }
  const thead = h("thead");
  thead.append(head);
  table.append(thead, body);
  fill();
  const scroll = h("div");
  scroll.className = "ae-scroll ae-atlas-box";
  scroll.append(table);
  const cut = data.total_tokens > atlas.n_tokens ? ` (of ${data.total_tokens}: the tokens this page holds)` : "";
  const note = h("div", {}, `Scores of every head over the first ${atlas.n_tokens} tokens${cut}: the mean attention `
    + "to the previous token, to the first token, to itself, to earlier copies of its token, to the token after an "
    + "earlier copy (induction), and the entropy of its attention in nats. Click a column's header to sort by it.");
  note.className = "ae-note";
  box.append(h("h2", {}, `Head atlas: ${rows.length} heads`), note, scroll);
}

/** The analysis sections the trace has data for, in #analysis. @param {any} analysis */
function drawAnalysis(analysis) {
  const box = document.getElementById("analysis");
  box.className = "ae-analysis";
  const style = document.createElement("style");
  style.textContent = ANALYSIS_CSS;
  document.head.append(style);
  if (analysis.surprisal) drawSurprisal(box, analysis.surprisal);
  if (analysis.lens) drawLens(box, analysis.lens);
  if (analysis.atlas) drawAtlas(box, analysis.atlas);
}
drawAnalysis(data.analysis ?? {});

document.body.dataset.ready = "1";
