// ProbabilityChange: one step's next-token probabilities before and after heads were switched off. A line with
// the step's token, its probability and rank before → after; below, both top-k lists side by side as bars on
// one scale, the step's token marked in both. Numbers carry their exact value in data-prob for tests.
// Tokens are set with textContent (visible() from prelude.js): a token like <img src=x> shows as text.

/** A number cell's text: a probability with four decimals. @param {number} p @returns {string} */
const fmt = (p) => p.toFixed(4);

/** Draw the change into `el` and redraw when it changes; returns the cleanup.
 * @param {{ model: Model, el: HTMLElement }} ctx @returns {() => void} */
function render({ model, el }) {
  el.classList.add("whatif-change");
  let draws = 0;

  /** One side: its label, then a row a candidate (token, bar, probability).
   * @param {any} side @param {string} name @param {number} top @param {number} tokenId @returns {HTMLElement} */
  function column(side, name, top, tokenId) {
    const box = h("div");
    box.className = "whatif-side";
    box.dataset.side = name;
    const title = h("div", {}, side.label);
    title.className = "whatif-side-title";
    const table = h("table");
    for (const [token, id, p] of side.top_k) {
      const row = h("tr");
      row.className = id === tokenId ? "chosen" : "";
      row.dataset.tokenId = String(id);
      row.dataset.prob = String(p);
      const word = h("td", {}, visible(token));
      word.className = "whatif-word";
      const barCell = h("td");
      barCell.className = "whatif-bar-cell";
      const bar = h("div", { width: `${Math.max(0, (p / top) * 100).toFixed(1)}%` });
      bar.className = "whatif-bar";
      barCell.append(bar);
      const number = h("td", {}, fmt(p));
      number.className = "whatif-number";
      row.append(word, barCell, number);
      table.append(row);
    }
    box.append(title, table);
    return box;
  }

  function draw() {
    const c = model.get("change") || {};
    el.replaceChildren();
    if (c.before) {
      const head = h("div");
      head.className = "whatif-headline";
      head.append(h("span", {}, `step ${c.step} · token “${c.token}” · p `));
      const before = h("span", {}, fmt(c.before.prob));
      before.className = "whatif-token-prob";
      before.dataset.side = "before";
      before.dataset.prob = String(c.before.prob);
      head.append(before, h("span", {}, " → "));
      const after = h("span", {}, c.after ? fmt(c.after.prob) : "…");
      after.className = "whatif-token-prob";
      after.dataset.side = "after";
      if (c.after) after.dataset.prob = String(c.after.prob);
      head.append(after);
      if (c.after) {
        const delta = c.after.prob - c.before.prob;
        const sign = delta > 0 ? "+" : delta < 0 ? "−" : "±";
        const d = h("span", {}, ` (${sign}${fmt(Math.abs(delta))}) · rank ${c.before.rank} → ${c.after.rank}`);
        d.className = delta < 0 ? "whatif-down" : delta > 0 ? "whatif-up" : "";
        head.append(d);
      }
      el.append(head);
      const sides = [c.before, ...(c.after ? [c.after] : [])];
      const top = Math.max(1e-9, ...sides.flatMap((s) => s.top_k.map((k) => k[2])));
      const row = h("div");
      row.className = "whatif-sides";
      row.append(column(c.before, "before", top, c.token_id));
      if (c.after) row.append(column(c.after, "after", top, c.token_id));
      el.append(row);
    }
    if (c.note) {
      const note = h("div", {}, c.note);
      note.className = "whatif-note";
      el.append(note);
    }
    draws += 1;
    el.dataset.drawCount = String(draws);
    el.dataset.pending = String(Boolean(c.before && !c.after));
  }

  model.on("change:change", draw);
  draw();
  return () => model.off("change:change", draw);
}

export default { render };
