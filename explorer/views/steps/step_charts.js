// StepCharts: the candidates of one decoding step as bars (the model's probabilities, and the distribution
// sampled from where it differs; the chosen token outlined) beside the entropy of every step, the current one
// marked. Plain SVG that follows its box's width. All steps arrive once; moving to a step changes only `step`.
// Labels are set with textContent: a token like <img src=x onerror=...> shows as text.

const SVG = "http://www.w3.org/2000/svg";
const MODEL = "#1f77b4", SAMPLING = "#ff7f0e", CHOSEN = "#d62728", GRID = "#e5e5e5";  // text ink #2a3f5f: step_charts.css
const HEIGHT = 330;
const LABEL_CHARS = 12;  // a longer candidate label is cut (whole on hover), so that turned labels stay inside

/** An SVG element with attributes and, if given, its text (set as textContent).
 * @param {string} name @param {Record<string, string|number>} attrs @param {string} [text] @returns {SVGElement} */
function node(name, attrs, text) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

/** Round tick values from 0 to `top`. @param {number} top @param {number} [count] @returns {number[]} */
function ticks(top, count = 5) {
  if (!(top > 0)) return [0];
  const raw = top / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const out = [];
  for (let v = 0; v <= top + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

/** A y axis with grid lines; returns the value → pixel map.
 * @param {SVGElement} g @param {{x: number, y: number, w: number, h: number}} box @param {number} top @param {string} title
 * @returns {(v: number) => number} */
function yAxis(g, box, top, title) {
  const y = (/** @type {number} */ v) => box.y + box.h - (v / top) * box.h;
  for (const v of ticks(top)) {
    g.append(node("line", { x1: box.x, x2: box.x + box.w, y1: y(v), y2: y(v), stroke: GRID }));
    g.append(node("text", { class: "tick", x: box.x - 6, y: y(v) + 4, "text-anchor": "end" }, String(v)));
  }
  g.append(node("text", { class: "axis-title", transform: `translate(${box.x - 42},${box.y + box.h / 2}) rotate(-90)`,
    "text-anchor": "middle" }, title));
  return y;
}

/** The bars of one step's candidates, the chosen one marked.
 * @param {SVGElement} g @param {any} c one step's candidates @param {boolean} differs @param {{x: number, y: number, w: number, h: number}} box */
function bars(g, c, differs, box) {
  const values = [...c.model, ...(differs ? c.sampling : [])].filter((p) => p != null);
  const top = Math.max(...values, 1e-9) * 1.25;
  const y = yAxis(g, box, top, "probability");
  const n = c.labels.length, slot = box.w / n, width = slot * 0.8 / (differs ? 2 : 1);
  c.labels.forEach((text, i) => {
    const series = differs ? [["model", c.model[i], MODEL], ["sampled from", c.sampling[i], SAMPLING]]
                           : [["model", c.model[i], i === c.chosen ? CHOSEN : MODEL]];
    series.forEach(([name, p, colour], j) => {
      if (p == null) return;
      const x = box.x + slot * i + slot * 0.1 + j * width;
      const bar = node("rect", { class: `bar ${j ? "sampling" : "model"}`, x, y: y(p), width, height: box.y + box.h - y(p),
        fill: i === c.chosen && !differs ? CHOSEN : colour, stroke: "black", "stroke-width": i === c.chosen ? 3 : 0 });
      bar.append(node("title", {}, `${text} (id ${c.ids[i]})\np = ${p.toFixed(4)} (${name})`));
      g.append(bar);
    });
    const cx = box.x + slot * (i + 0.5);
    const short = [...text].length > LABEL_CHARS ? [...text].slice(0, LABEL_CHARS - 1).join("") + "…" : text;
    const tick = node("text", { class: "bar-label", transform: `translate(${cx},${box.y + box.h + 12}) rotate(-40)`,
      "text-anchor": "end" }, short);
    tick.append(node("title", {}, text));  // the whole label on hover
    g.append(tick);
  });
  const cx = box.x + slot * (c.chosen + 0.5), best = Math.max(c.model[c.chosen] ?? 0, differs ? c.sampling[c.chosen] ?? 0 : 0);
  g.append(node("text", { class: "chosen-mark", x: cx, y: y(best) - 6, "text-anchor": "middle", fill: CHOSEN }, "▼ chosen"));
  g.append(node("text", { class: "title", x: box.x - 50, y: 18 }, c.title));
}

/** The entropy of every step as a line, the current step circled.
 * @param {SVGElement} g @param {Model} model @param {{x: number, y: number, w: number, h: number}} box */
function entropy(g, model, box) {
  const values = model.get("entropy"), sampled = model.get("sampling_entropy"), tokens = model.get("tokens");
  const step = model.get("step"), n = values.length;
  const top = Math.max(...values, ...sampled, 1e-9) * 1.1;
  const y = yAxis(g, box, top, "nats");
  const x = (/** @type {number} */ i) => box.x + (n > 1 ? (i / (n - 1)) * box.w : box.w / 2);
  for (const i of ticks(Math.max(n - 1, 1), 6).filter((v) => Number.isInteger(v) && v < n)) {
    g.append(node("text", { class: "tick", x: x(i), y: box.y + box.h + 16, "text-anchor": "middle" }, String(i)));
  }
  g.append(node("text", { class: "axis-title", x: box.x + box.w / 2, y: box.y + box.h + 34, "text-anchor": "middle" }, "step"));
  /** @param {number[]} v @param {string} colour @param {string} dash @param {string} cls */
  const line = (v, colour, dash, cls) => g.append(node("polyline", { class: cls, fill: "none",
    stroke: colour, "stroke-width": 1.5, "stroke-dasharray": dash, points: v.map((e, i) => `${x(i)},${y(e)}`).join(" ") }));
  if (sampled.length) line(sampled, SAMPLING, "4 3", "sampling-line");
  line(values, MODEL, "", "entropy-line");
  values.forEach((e, i) => {
    const dot = node("circle", { class: "entropy-point", cx: x(i), cy: y(e), r: 2.5, fill: MODEL });
    dot.append(node("title", {}, `step ${i}: ${tokens[i]}\nentropy ${e.toFixed(3)} nats`));
    g.append(dot);
  });
  if (n) g.append(node("circle", { class: "current-step", cx: x(step), cy: y(values[step]), r: 6, fill: "none",
    stroke: CHOSEN, "stroke-width": 2 }));
  g.append(node("text", { class: "title", x: box.x + box.w, y: 18, "text-anchor": "end" },
    "entropy of each step (nats): low = sure, high = hesitant"));
}

/** The colour key of the two series. @param {SVGElement} g @param {number} x @param {number} y */
function legend(g, x, y) {
  [["model", MODEL], ["sampled from", SAMPLING]].forEach(([name, colour], i) => {
    g.append(node("rect", { x: x + i * 120, y: y - 9, width: 10, height: 10, fill: colour }));
    g.append(node("text", { class: "tick", x: x + i * 120 + 14, y }, name));
  });
}

/** Draw the charts into `el` and redraw on a new step or width; returns the cleanup.
 * @param {{ model: Model, el: HTMLElement }} ctx @returns {() => void} */
function render({ model, el }) {
  el.classList.add("step-charts");
  let draws = 0;

  function draw() {
    const width = Math.max(el.clientWidth || 860, 480);
    const svg = node("svg", { width, height: HEIGHT, viewBox: `0 0 ${width} ${HEIGHT}` });
    const differs = model.get("differs");
    const split = Math.round(width * 0.55);
    const candidates = model.get("candidates")[model.get("step")];
    if (candidates) bars(svg, candidates, differs, { x: 70, y: 40, w: split - 90, h: HEIGHT - 125 });
    entropy(svg, model, { x: split + 50, y: 40, w: width - split - 60, h: HEIGHT - 125 });
    if (differs) legend(svg, width - 250, HEIGHT - 6);
    el.replaceChildren(svg);
    el.dataset.drawCount = String(++draws);
    el.dataset.step = String(model.get("step"));
  }

  draw();
  model.on("change:step", draw);
  model.on("change:candidates", draw);
  const resize = new ResizeObserver(() => draw());
  resize.observe(el);
  return () => resize.disconnect();
}

export default { render };
