// The head atlas: a table of every head's scores. A query box and the column headers ask Python (head_atlas.py)
// for the heads to show and their order (`shown`); a click on a row asks Python to open that head.
// Over many texts (n_texts > 0), each score is a mean over the texts, shown with ± its standard deviation (`spread`).
// h comes from prelude.js, put in front of this file by the frontend loader. Text is only written with textContent.

/** A score for reading: 3 decimals, "–" where the head has none.
 * @param {number | null} v @returns {string} */
const fmt = (v) => (v === null || v === undefined ? "–" : v.toFixed(3));

/** Scores that are mean weights (0..1): their cells are shaded by value. Entropy is not. */
const WEIGHTS = new Set(["previous_token", "first_token", "self", "duplicate_token", "induction"]);

/** The background of a weight cell: blue, as strong as the weight (0..1).
 * @param {number} w @returns {string} */
const shade = (w) => `rgba(31, 119, 180, ${(0.45 * Math.max(0, Math.min(1, w))).toFixed(3)})`;

/** How long typing must pause before the query is sent, in ms (Enter sends at once). */
const TYPING_PAUSE = 300;

/** One atlas view: its model, its elements and what its drawing and events share.
 * scrolledTo is the head whose row was last scrolled into view; timer the pending query's.
 * @typedef {{ model: Model, el: HTMLElement, input: HTMLInputElement, count: HTMLSpanElement,
 *   title: HTMLDivElement, help: HTMLDivElement, message: HTMLDivElement, progress: HTMLDivElement, bar: HTMLProgressElement, progressText: HTMLSpanElement,
 *   scroller: HTMLDivElement, table: HTMLTableElement, draws: number, pending: boolean, scrolledTo: string,
 *   timer: number | undefined }} AtlasView */

/** Send the query now.
 * @param {AtlasView} v */
function sendQuery(v) {
  clearTimeout(v.timer);
  v.model.set("query", v.input.value);
  v.model.save_changes();
}

/** What a click on a row does: one trace's head opens in the Heatmap tab; over texts there is no trace to open.
 * @param {Model} model @returns {string} */
const opens = (model) => (model.get("n_texts") > 0 ? "select that head" : "open that head in the Heatmap tab");

/** What the scores are means of, for the help line under the table.
 * @param {Model} model @returns {string} */
function scoresAre(model) {
  return model.get("n_texts") > 0
    ? "Each score is a mean over one text's rows, then a mean over the texts; ± is the standard deviation over the "
      + "texts (hover a cell for how many texts have the score); – : no text has a row for it."
    : "Scores are means over the rows of the trace; – : no row for it.";
}

/** The line above the table of an atlas over texts: how many, and what they were.
 * @param {Model} model @returns {string} */
function titleText(model) {
  const n = model.get("n_texts"), source = model.get("source");
  return n > 0 ? `Head scores over ${n} text${n === 1 ? "" : "s"}${source ? ": " + source : ""}` : "";
}

/** Build the view's elements in `el`: the title over texts, the query box and count, the message line, the progress
 * bar, the table.
 * @param {Model} model @param {HTMLElement} el @returns {AtlasView} */
function build(model, el) {
  el.classList.add("ae-atlas");
  const title = h("div", {}, titleText(model));
  title.className = "ae-atlas-title";
  title.style.display = model.get("n_texts") > 0 ? "" : "none";
  const bar = h("div", {});
  bar.className = "ae-atlas-bar";
  const input = Object.assign(h("input"), { type: "search", value: model.get("query"), spellcheck: false,
    placeholder: "filter, e.g.  induction >= 0.3 and layer < 10" });
  input.className = "ae-atlas-query";
  input.title = `compare columns with numbers (< <= > >= = !=), join with and / or / not and ( ).\n`
    + `columns: ${model.get("columns").join(", ")}`;
  const count = h("span");
  count.className = "ae-atlas-count";
  bar.append(input, count);
  const message = h("div");
  message.className = "ae-atlas-message";
  const progress = h("div");
  progress.className = "ae-atlas-progress";
  const progressBar = h("progress");
  const progressText = h("span");
  progress.append(progressBar, progressText);
  const scroller = h("div");
  scroller.className = "ae-atlas-scroller";
  const table = h("table");
  table.className = "ae-atlas-table";
  scroller.append(table);
  const help = h("div", {}, "Filter: compare columns with numbers (< <= > >= = !=), joined by and, or, not and "
    + "( ), e.g. previous_token > 0.5 or self > 0.4. Click a column header to sort (again: the other way); click a "
    + `row to ${opens(model)}. ` + scoresAre(model));
  help.className = "ae-atlas-help";
  el.append(title, bar, message, progress, scroller, help);
  return { model, el, input, count, title, help, message, progress, bar: progressBar, progressText, scroller, table,
    draws: 0, pending: false, scrolledTo: "", timer: undefined };
}

/** The header row: a click sorts by a column, a second click the other way (scores start largest first).
 * The arrow shows the order the rows are in (`shown_for`), not one asked for that Python has yet to answer.
 * @param {AtlasView} v @returns {HTMLTableRowElement} */
function header(v) {
  const { model } = v, [, by, desc] = model.get("shown_for"), labels = model.get("labels");
  const tr = h("tr");
  for (const k of model.get("columns")) {
    const th = h("th", {}, k + (k === by ? (desc ? " ▼" : " ▲") : ""));
    th.dataset.key = k;
    th.title = (labels[k] || k) + "\nclick to sort";
    if (k === by) th.classList.add("sorted");
    th.addEventListener("click", () => {
      const same = k === model.get("sort_by");
      model.set("descending", same ? !model.get("descending") : WEIGHTS.has(k));
      model.set("sort_by", k);
      model.save_changes();
    });
    tr.append(th);
  }
  return tr;
}

/** A score's cell over texts: the mean, then ± its standard deviation in a lighter span, and a tooltip that says
 * both and over how many texts.
 * @param {HTMLTableCellElement} td @param {string} name @param {number | null} mean @param {number | null} std
 * @param {number} n texts that have the score @param {number} nTexts */
function withSpread(td, name, mean, std, n, nTexts) {
  if (mean === null) {
    td.title = `${name}: no text has a row for it`;
    return;
  }
  const spread = h("span", {}, ` ±${fmt(std)}`);
  spread.className = "ae-atlas-spread";
  td.append(spread);
  const over = n === nTexts ? `${n} texts` : `${n} of ${nTexts} texts (the others have no row for it)`;
  td.title = `${name}: mean ${fmt(mean)}, standard deviation ${fmt(std)} over ${over}`;
}

/** One head's row: its numbers (over texts: ± their spread), the selected head marked; a click (or Enter) opens it.
 * @param {AtlasView} v @param {Array<number | null>} row [layer, head, ...scores]
 * @param {Array<number | null> | undefined} spread [...standard deviations], over texts
 * @param {number[] | undefined} counts [...texts with the score], over texts @returns {HTMLTableRowElement} */
function tableRow(v, row, spread, counts) {
  const columns = v.model.get("columns"), [layer, head] = row;
  const tr = h("tr");
  tr.dataset.layer = String(layer);
  tr.dataset.head = String(head);
  tr.tabIndex = 0;
  tr.title = `layer ${layer}, head ${head}: click to ${opens(v.model)}`;
  if (layer === v.model.get("layer") && head === v.model.get("head")) tr.classList.add("selected");
  columns.forEach((k, i) => {
    const value = row[i];
    const td = h("td", {}, i < 2 ? String(value) : fmt(value));
    if (WEIGHTS.has(k) && value !== null) td.style.background = shade(value);
    if (i >= 2 && spread && counts) withSpread(td, k, value, spread[i - 2], counts[i - 2], v.model.get("n_texts"));
    tr.append(td);
  });
  const open = () => v.model.send({ kind: "open", layer, head });
  tr.addEventListener("click", open);
  tr.addEventListener("keydown", (ev) => { if (ev.key === "Enter") open(); });
  return tr;
}

/** The table of the heads Python chose, in its order; the selected head's row brought into view once.
 * @param {AtlasView} v */
function drawTable(v) {
  const table = v.model.get("table"), spread = v.model.get("spread"), counts = v.model.get("counts");
  const rows = v.model.get("shown").map((i) => tableRow(v, table[i], spread[i], counts[i]));
  v.table.replaceChildren(header(v), ...rows);
  const sel = `${v.model.get("layer")} ${v.model.get("head")}`;
  const shown = rows.find((tr) => `${tr.dataset.layer} ${tr.dataset.head}` === sel);
  if (shown && sel !== v.scrolledTo) {
    v.scrolledTo = sel;
    const top = shown.offsetTop - v.scroller.clientHeight / 2;
    v.scroller.scrollTop = Math.max(0, top);
  }
}

/** The progress bar while the scores are computed, or why they could not be.
 * @param {AtlasView} v */
function drawProgress(v) {
  const get = (k) => v.model.get(k), ready = get("ready"), failure = get("failure");
  v.progress.style.display = ready || failure ? "none" : "";
  v.scroller.style.display = ready ? "" : "none";
  v.bar.max = get("n_layers");
  v.bar.value = get("progress");
  v.progressText.textContent = ` computing the head scores of ${get("n_tokens")} tokens: `
    + `layer ${get("progress")} of ${get("n_layers")}`;
}

/** The count of heads shown and the query's error (or the failure of the scores).
 * @param {AtlasView} v */
function drawMessage(v) {
  const get = (k) => v.model.get(k), error = get("error"), failure = get("failure");
  const total = get("n_layers") * get("n_heads");
  v.count.textContent = get("ready") ? `${get("shown").length} of ${total} heads` : "";
  v.message.textContent = failure
    || (error ? `Cannot read this query: ${error}. The table shows the last query read.` : "");
  v.message.classList.toggle("error", Boolean(failure || error));
}

/** Draw everything from the model's state, and note the draw in el's data-* attributes.
 * @param {AtlasView} v */
function draw(v) {
  drawProgress(v);
  drawMessage(v);
  if (v.model.get("ready")) drawTable(v);
  v.draws += 1;
  const [query, sortBy, descending] = v.model.get("shown_for");
  Object.assign(v.el.dataset, { drawCount: v.draws, ready: v.model.get("ready") ? "1" : "0",
    nTexts: v.model.get("n_texts"),
    shown: v.model.get("shown").length, error: v.model.get("error") ? "1" : "0",
    query: query ?? "", sortBy: sortBy ?? "", descending: descending ? "1" : "0" });
}

/** Draw once for all the traits one message changes.
 * @param {AtlasView} v */
function schedule(v) {
  if (v.pending) return;
  v.pending = true;
  queueMicrotask(() => { v.pending = false; draw(v); });
}

/** Typing sends the query after a pause; Enter at once.
 * @param {AtlasView} v */
function listen(v) {
  v.input.addEventListener("input", () => {
    clearTimeout(v.timer);
    v.timer = setTimeout(() => sendQuery(v), TYPING_PAUSE);
  });
  v.input.addEventListener("keydown", (ev) => { if (ev.key === "Enter") sendQuery(v); });
}

/** Redraw on the model's changes; returns the cleanup.
 * @param {AtlasView} v @returns {() => void} */
function connect(v) {
  const redraw = () => schedule(v);
  const events = ["table", "shown", "shown_for", "error", "failure", "ready", "progress", "layer", "head"]
    .map((k) => "change:" + k);
  for (const e of events) v.model.on(e, redraw);
  return () => { clearTimeout(v.timer); for (const e of events) v.model.off(e, redraw); };
}

export default { render: viewRenderer(build, listen, connect, draw) };
