// All heads on one canvas: a row of thumbnails per layer, a strip under each coloured by a statistic,
// hover for the numbers, click to select; below, the statistics as a table sortable by any column.
// LUT, MASKED, cssColour, asU8 and h come from prelude.js, put in front of this file by frontend.py.

/** A statistic for reading: 3 significant digits, "–" when there is none.
 * @param {number | null | undefined} v @returns {string} */
const fmt = (v) => (v === null || v === undefined ? "–" : v.toPrecision(3));

/** Draw the heads map into `el` and redraw on the model's changes; returns the cleanup.
 * @param {{ model: Model, el: HTMLElement }} ctx @returns {() => void} */
function render({ model, el }) {
  el.classList.add("ae-heads-map");
  Object.assign(el.style, { position: "relative", font: "12px sans-serif", color: "#222" });
  const get = (k) => model.get(k);
  const L = get("n_layers"), H = get("n_heads"), names = Object.keys(get("stat_labels"));
  const LEFT = 34, TOP = 18, GAP = 6, STRIP = 5;
  const pick = (layer, head) => { model.set("layer", layer); model.set("head", head); model.save_changes(); };

  const controls = h("div", { marginBottom: "6px" });
  const colourSel = h("select", { marginRight: "10px" });
  colourSel.classList.add("ae-colour-by");
  for (const [v, label] of [["", "no colour strip"], ...names.map((n) => [n, "strip: " + get("stat_labels")[n]])])
    colourSel.append(Object.assign(h("option", {}, label), { value: v }));
  colourSel.addEventListener("change", () => { model.set("colour_by", colourSel.value); model.save_changes(); });
  const logBox = Object.assign(h("input"), { type: "checkbox" });
  logBox.addEventListener("change", () => { model.set("log_scale", logBox.checked); model.save_changes(); });
  const logLabel = h("label");
  logLabel.append(logBox, document.createTextNode(" log scale"));
  controls.append(colourSel, logLabel);
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

  let draws = 0, sortKey = "layer", sortDir = 1, pending = false, scrolledTo = "";
  const stat = (name, l, hd) => get("stats")[name][l][hd];
  const geometry = () => {
    const px = get("thumb_px"), strip = get("colour_by") ? STRIP + 1 : 0;
    return { px, cw: px + GAP, ch: px + strip + GAP, strip };
  };

  /** Draw the thumbnails, strips, caption and table from the model's current state. */
  function draw() {
    const t0 = performance.now();
    const n = get("thumb_n"), u8 = asU8(get("thumbs")), { px, cw, ch, strip } = geometry();
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
    // all thumbnails packed in one image, then each scaled into place
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
    ctx.imageSmoothingEnabled = false;
    ctx.font = "11px sans-serif";
    ctx.fillStyle = "#333";
    ctx.textBaseline = "middle";
    for (let hd = 0; hd < H; hd++) ctx.fillText(`H${hd}`, LEFT + hd * cw + px / 2 - 8, TOP / 2);
    const by = get("colour_by");
    let lo = Infinity, hi = -Infinity;
    if (by) for (const row of get("stats")[by]) for (const v of row) if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    const selL = get("layer"), selH = get("head");
    for (let l = 0; l < L; l++) {
      ctx.fillStyle = "#333";
      ctx.fillText(`L${l}`, 2, TOP + l * ch + px / 2);
      for (let hd = 0; hd < H; hd++) {
        const x = LEFT + hd * cw, y = TOP + l * ch;
        ctx.drawImage(off, hd * n, l * n, n, n, x, y, px, px);
        if (by) {
          const v = stat(by, l, hd);
          ctx.fillStyle = v === null ? "#ccc" : cssColour(Math.round((255 * (v - lo)) / (hi - lo || 1)));
          ctx.fillRect(x, y + px + 1, px, STRIP);
        }
        if (l === selL && (selH === null || selH === hd)) {
          ctx.strokeStyle = "#ff3b30";
          ctx.lineWidth = 2;
          ctx.strokeRect(x - 1.5, y - 1.5, px + 3, px + strip + 3);
        }
      }
    }
    const f = get("thumb_factor");
    caption.textContent = `${L} layers × ${H} heads, ${get("n_tokens")} tokens` +
      (f > 1 ? `; each pixel is the max of ${f}×${f} weights` : "") +
      `; each thumbnail scaled to its own largest weight${get("log_scale") ? " (log)" : ""}` +
      (by ? `; strip: ${get("stat_labels")[by]}, ${fmt(lo)} (dark) to ${fmt(hi)} (yellow)` : "");
    colourSel.value = by;
    logBox.checked = get("log_scale");
    drawTable();
    draws += 1;
    Object.assign(el.dataset, { drawCount: draws, drawnAt: performance.now(), drawMs: (performance.now() - t0).toFixed(1),
      layer: selL, head: selH ?? "mean", geometry: JSON.stringify({ left: LEFT, top: TOP, px, cw, ch }) });
  }

  /** The statistics table, sorted by `sortKey` in `sortDir`, the selected head's row marked. */
  function drawTable() {
    const rows = [];
    for (let l = 0; l < L; l++) for (let hd = 0; hd < H; hd++) {
      const r = { layer: l, head: hd };
      for (const n of names) r[n] = stat(n, l, hd);
      rows.push(r);
    }
    const val = (r) => (r[sortKey] === null ? -Infinity : r[sortKey]);
    rows.sort((a, b) => sortDir * (val(a) - val(b)) || a.layer - b.layer || a.head - b.head);
    const head = h("tr");
    for (const k of ["layer", "head", ...names]) {
      const th = h("th", { position: "sticky", top: "0", background: "#f4f4f4", padding: "2px 8px", cursor: "pointer",
        textAlign: "right" }, k + (k === sortKey ? (sortDir > 0 ? " ▲" : " ▼") : ""));
      th.title = get("stat_labels")[k] || k;
      th.dataset.key = k;
      th.addEventListener("click", () => {
        sortDir = k === sortKey ? -sortDir : k === "layer" || k === "head" ? 1 : -1;
        sortKey = k;
        drawTable();
      });
      head.append(th);
    }
    const selL = get("layer"), selH = get("head");
    const body = rows.map((r) => {
      const tr = h("tr", { cursor: "pointer", background: r.layer === selL && r.head === selH ? "#ffe58a" : "" });
      tr.dataset.layer = r.layer;
      tr.dataset.head = r.head;
      for (const k of ["layer", "head", ...names])
        tr.append(h("td", { padding: "1px 8px", textAlign: "right" }, k === "layer" || k === "head" ? String(r[k]) : fmt(r[k])));
      tr.addEventListener("click", () => pick(r.layer, r.head));
      return tr;
    });
    table.replaceChildren(head, ...body);
    const shown = body.find((tr) => +tr.dataset.layer === selL && +tr.dataset.head === selH);
    if (shown && `${selL} ${selH}` !== scrolledTo) { // bring a newly selected head's row into view, once
      scrolledTo = `${selL} ${selH}`;
      tableBox.scrollTop = shown.offsetTop - tableBox.clientHeight / 2;
    }
  }

  /** The [layer, head] of the thumbnail under the pointer, or null.
   * @param {MouseEvent} ev @returns {[number, number] | null} */
  const at = (ev) => {
    const r = canvas.getBoundingClientRect(), { px, cw, ch } = geometry();
    const x = ev.clientX - r.left - LEFT, y = ev.clientY - r.top - TOP;
    const hd = Math.floor(x / cw), l = Math.floor(y / ch);
    if (x < 0 || y < 0 || hd >= H || l >= L || x - hd * cw > px || y - l * ch > px) return null;
    return [l, hd];
  };
  canvas.addEventListener("mousemove", (ev) => {
    const c = at(ev);
    if (!c) { tip.style.display = "none"; return; }
    const [l, hd] = c;
    tip.textContent = [`layer ${l}, head ${hd}`, ...names.map((n) => `${n.padEnd(8)} ${fmt(stat(n, l, hd))}  ${get("stat_labels")[n]}`)]
      .join("\n");
    const r = el.getBoundingClientRect();
    Object.assign(tip.style, { left: ev.clientX - r.left + 14 + "px", top: ev.clientY - r.top + 14 + "px", display: "block" });
  });
  canvas.addEventListener("mouseleave", () => { tip.style.display = "none"; });
  canvas.addEventListener("click", (ev) => { const c = at(ev); if (c) pick(c[0], c[1]); });

  const schedule = () => { if (!pending) { pending = true; queueMicrotask(() => { pending = false; draw(); }); } };
  const events = ["thumbs", "layer", "head", "colour_by", "stats"].map((k) => "change:" + k);
  for (const e of events) model.on(e, schedule);
  draw();
  return () => { for (const e of events) model.off(e, schedule); };
}

export default { render };
