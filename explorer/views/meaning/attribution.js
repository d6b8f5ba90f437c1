// Which heads wrote the token: one step's logit attribution as a grid of layers × heads (then each layer's MLP),
// red where a part pushed the token's logit up, blue where it pushed it down, white near zero. A click on a head
// asks Python to select it (and open it in the heatmap); the highlight follows the selection Python sends back.
// h, asFloat32 and visible come from prelude.js, put in front of this file by the frontend loader.

/** A signed number for reading: a sign and 3 significant digits.
 * @param {number} x @returns {string} */
const signed = (x) => (x >= 0 ? "+" : "−") + Math.abs(x).toPrecision(3);

/** The colour of a share: red up, blue down, its strength |x| / scale.
 * @param {number} x @param {number} scale @returns {string} */
function shade(x, scale) {
  const t = Math.min(1, Math.abs(x) / (scale || 1)), light = Math.round(255 * (1 - 0.85 * t));
  return x >= 0 ? `rgb(255,${light},${light})` : `rgb(${light},${light},255)`;
}

/** @typedef {{ model: Model, el: HTMLElement, title: HTMLDivElement, summary: HTMLDivElement,
 *   grid: HTMLDivElement, ranked: HTMLDivElement, tip: HTMLDivElement, cells: HTMLDivElement[] }} AttributionView */

/** @param {Model} model @param {HTMLElement} el @returns {AttributionView} */
function build(model, el) {
  el.classList.add("ae-attribution");
  const v = { model, el, title: h("div"), summary: h("div"), grid: h("div"), ranked: h("div"), tip: h("div"), cells: [] };
  v.title.classList.add("ae-attribution-title");
  v.summary.classList.add("ae-attribution-summary");
  v.grid.classList.add("ae-attribution-grid");
  v.ranked.classList.add("ae-attribution-ranked");
  v.tip.classList.add("ae-attribution-tip");
  const legend = h("div", {}, "red: pushed the token up · blue: pushed it down · a click opens the head in the heatmap");
  legend.classList.add("ae-attribution-legend");
  el.append(v.title, v.summary, legend, v.grid, v.ranked, v.tip);
  return v;
}

/** The grid's frame: a header row of head labels, a label per layer, a cell per head and the MLP's.
 * @param {AttributionView} v */
function buildGrid(v) {
  const L = v.model.get("n_layers"), H = v.model.get("n_heads");
  v.grid.style.gridTemplateColumns = `36px repeat(${H}, 30px) 8px 38px`;
  v.grid.replaceChildren();
  v.cells = [];
  const label = (text, cls) => { const e = h("div", {}, text); e.classList.add(cls); v.grid.append(e); };
  label("", "ae-attribution-corner");
  for (let c = 0; c < H; c++) label(`H${c}`, "ae-attribution-col");
  label("", "ae-attribution-gap");
  label("MLP", "ae-attribution-col");
  for (let l = 0; l < L; l++) {
    label(`L${l}`, "ae-attribution-row");
    for (let c = 0; c <= H; c++) {
      if (c === H) label("", "ae-attribution-gap");
      const cell = h("div");
      cell.classList.add("ae-attribution-cell");
      if (c === H) cell.classList.add("mlp");
      cell.dataset.layer = String(l);
      cell.dataset.head = c === H ? "mlp" : String(c);
      v.grid.append(cell);
      v.cells.push(cell);
    }
  }
}

/** Colour every cell with the step's values, and write the title, the sum and the lists.
 * @param {AttributionView} v */
function draw(v) {
  const { model } = v, values = asFloat32(model.get("values")), scale = model.get("scale");
  v.title.textContent = model.get("title");
  v.summary.replaceChildren();
  model.get("summary").forEach(([name, value], i) => {
    const part = h("span", {}, (i === 0 ? `${name} ${value.toPrecision(4)} = ` : `${i > 1 ? " " : ""}${name} ${signed(value)}`));
    part.classList.add("ae-attribution-part");
    v.summary.append(part);
  });
  v.cells.forEach((cell, i) => {
    const x = values[i];
    cell.style.background = x === undefined ? "" : shade(x, scale);
    cell.dataset.value = x === undefined ? "" : String(x);
  });
  v.ranked.replaceChildren();
  for (const [label, value, layer, head] of model.get("ranked")) {
    const chip = h("span", { background: shade(value, scale) }, `${label} ${signed(value)}`);
    chip.classList.add("ae-attribution-chip");
    chip.dataset.layer = String(layer);
    chip.dataset.head = String(head);
    v.ranked.append(chip);
  }
  highlight(v);
  v.el.dataset.drawCount = String(+(v.el.dataset.drawCount || 0) + 1);
  v.el.dataset.title = model.get("title");
}

/** Outline the selected head. @param {AttributionView} v */
function highlight(v) {
  const layer = String(v.model.get("layer")), head = String(v.model.get("head"));
  for (const cell of v.cells) cell.classList.toggle("selected", cell.dataset.layer === layer && cell.dataset.head === head);
}

/** @param {AttributionView} v */
function listen(v) {
  const pick = (ev) => {
    const t = /** @type {HTMLElement} */ (ev.target).closest("[data-head]");
    if (t && t.dataset.head !== "mlp") v.model.send({ kind: "open", layer: +t.dataset.layer, head: +t.dataset.head });
  };
  v.grid.addEventListener("click", pick);
  v.ranked.addEventListener("click", pick);
  v.grid.addEventListener("mousemove", (ev) => {
    const cell = /** @type {HTMLElement} */ (ev.target).closest(".ae-attribution-cell");
    if (!cell || cell.dataset.value === "") { v.tip.style.display = "none"; return; }
    const who = cell.dataset.head === "mlp" ? `layer ${cell.dataset.layer}'s MLP` : `layer ${cell.dataset.layer} head ${cell.dataset.head}`;
    const x = +cell.dataset.value;
    v.tip.textContent = `${who}: ${signed(x)} to the logit (${x >= 0 ? "pushed it up" : "pushed it down"})`;
    const box = v.el.getBoundingClientRect();
    v.tip.style.display = "block";
    v.tip.style.left = ev.clientX - box.left + 12 + "px";
    v.tip.style.top = ev.clientY - box.top + 12 + "px";
  });
  v.grid.addEventListener("mouseleave", () => { v.tip.style.display = "none"; });
}

/** @param {AttributionView} v @returns {() => void} */
function connect(v) {
  const redraw = () => draw(v), moved = () => highlight(v);
  // the title names the step: a new bytes value alone may not fire its change (two DataViews compare equal)
  const events = ["change:values", "change:title"];
  for (const e of events) v.model.on(e, redraw);
  v.model.on("change:layer", moved);
  v.model.on("change:head", moved);
  return () => {
    for (const e of events) v.model.off(e, redraw);
    v.model.off("change:layer", moved);
    v.model.off("change:head", moved);
  };
}

/** @param {{ model: Model, el: HTMLElement }} ctx @returns {() => void} */
function render({ model, el }) {
  if (model.get("message")) {
    el.classList.add("ae-attribution");
    const m = h("div", {}, model.get("message"));
    m.classList.add("ae-attribution-message");
    el.append(m);
    el.dataset.drawCount = "1";
    return () => {};
  }
  const v = build(model, el);
  buildGrid(v);
  listen(v);
  const disconnect = connect(v);
  draw(v);
  return disconnect;
}

export default { render };
