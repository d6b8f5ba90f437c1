// One step's contribution graph on a canvas: a row per token (0 at the top), a column boundary per layer, an edge
// from token j at layer l to the step's position at layer l + 1, its width and opacity the share it carried (red up,
// blue down), and the residual stream along the position's row. The slider hides edges below a share of the
// strongest; the page counts what it drew in data-edges. h, asFloat32 and visible come from prelude.js.

const LEFT = 120, TOP = 22, RIGHT = 16, MAX_HEIGHT = 900, COLUMN = 34;

/** @param {Model} model @param {HTMLElement} el */
function build(model, el) {
  el.classList.add("ae-contribution");
  const v = { model, el, title: h("div"), bar: h("div"), canvas: h("canvas"), count: h("span") };
  v.title.classList.add("ae-contribution-title");
  v.bar.classList.add("ae-contribution-bar");
  v.slider = Object.assign(h("input"), { type: "range", min: "0", max: "1", step: "0.01" });
  v.slider.classList.add("ae-contribution-threshold");
  v.bar.append(document.createTextNode("show edges above "), v.slider, v.count);
  v.canvas.classList.add("ae-contribution-canvas");
  const legend = h("div", {}, "red: carried the token up · blue: against it · grey band: the residual stream at the step's position");
  legend.classList.add("ae-contribution-legend");
  el.append(v.title, v.bar, legend, v.canvas);
  return v;
}

/** @param {any} v */
function draw(v) {
  const { model } = v, L = model.get("n_layers"), T = model.get("n_tokens");
  const edges = asFloat32(model.get("edges")), residual = asFloat32(model.get("residual"));
  const threshold = model.get("threshold"), tokens = model.get("tokens");
  v.title.textContent = model.get("title");
  v.slider.value = String(threshold);
  const row = Math.max(1.5, Math.min(16, (MAX_HEIGHT - TOP) / Math.max(T, 1)));
  const width = LEFT + L * COLUMN + RIGHT, height = TOP + row * T + 8, ratio = window.devicePixelRatio || 1;
  Object.assign(v.canvas, { width: Math.round(width * ratio), height: Math.round(height * ratio) });
  Object.assign(v.canvas.style, { width: width + "px", height: height + "px" });
  const ctx = v.canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const x = (l) => LEFT + l * COLUMN, y = (j) => TOP + row * (j + 0.5);
  ctx.font = "10px sans-serif";
  ctx.fillStyle = "#555";
  ctx.textAlign = "center";
  for (let l = 0; l <= L; l += Math.max(1, Math.ceil(L / 15))) ctx.fillText(`L${l}`, x(l), 12);
  ctx.textAlign = "right";
  if (row >= 9) tokens.forEach((t, j) => ctx.fillText(visible(t).slice(0, 18), LEFT - 6, y(j) + 3));
  let top = 0;
  for (const e of edges) top = Math.max(top, Math.abs(e));
  let resTop = 0;
  for (const r of residual) resTop = Math.max(resTop, Math.abs(r));
  // the residual stream: a band along the position's row, as wide as the share it carries into each layer
  for (let l = 0; l < L; l++) {
    ctx.fillStyle = residual[l + 1] >= 0 ? "rgba(120,120,120,0.35)" : "rgba(60,60,160,0.35)";
    const w = 1 + 10 * Math.abs(residual[l + 1]) / (resTop || 1);
    ctx.fillRect(x(l), y(T - 1) - w / 2, COLUMN, w);
  }
  let drawn = 0;
  for (let l = 0; l < L; l++) {
    for (let j = 0; j < T; j++) {
      const e = edges[l * T + j], s = Math.abs(e) / (top || 1);
      if (!top || s < threshold || e === 0) continue;
      ctx.strokeStyle = e >= 0 ? `rgba(220,40,40,${0.25 + 0.75 * s})` : `rgba(40,60,220,${0.25 + 0.75 * s})`;
      ctx.lineWidth = 0.5 + 4 * s;
      ctx.beginPath();
      ctx.moveTo(x(l), y(j));
      ctx.lineTo(x(l + 1), y(T - 1));
      ctx.stroke();
      drawn++;
    }
  }
  v.count.textContent = ` ${Math.round(threshold * 100)}% of the strongest: ${drawn} edges of ${L * T}`;
  v.el.dataset.edges = String(drawn);
  v.el.dataset.title = model.get("title");
  v.el.dataset.drawCount = String(+(v.el.dataset.drawCount || 0) + 1);
}

/** @param {{ model: Model, el: HTMLElement }} ctx @returns {() => void} */
function render({ model, el }) {
  if (model.get("message")) {
    el.classList.add("ae-contribution");
    el.append(h("div", {}, model.get("message")));
    el.dataset.drawCount = "1";
    return () => {};
  }
  const v = build(model, el);
  v.slider.addEventListener("input", () => { model.set("threshold", +v.slider.value); model.save_changes(); draw(v); });
  const redraw = () => draw(v);
  // the title names the step: a new bytes value alone may not fire its change
  const events = ["change:edges", "change:title", "change:threshold"];
  for (const e of events) model.on(e, redraw);
  draw(v);
  return () => { for (const e of events) model.off(e, redraw); };
}

export default { render };
