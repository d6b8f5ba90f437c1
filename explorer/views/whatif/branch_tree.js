// BranchTree: a family of traces as an indented list, one row a trace: the label of the edge that made it (the
// step, the forced token and its probability against the parent's), then the text from there. The current trace
// is highlighted; a click sends the row's id to Python, which shows that trace in every view.
// Labels and snippets are set with textContent: a token like <img src=x onerror=...> shows as text.

/** Draw the tree into `el` and redraw on the model's changes; returns the cleanup.
 * @param {{ model: Model, el: HTMLElement }} ctx @returns {() => void} */
function render({ model, el }) {
  el.classList.add("branch-tree");
  const title = h("div", {}, "Traces of this family: a branch under the trace it came from; click one to show it");
  title.className = "branch-tree-title";
  const list = h("div");
  list.className = "branch-tree-list";
  el.append(title, list);
  let draws = 0;

  function draw() {
    const current = model.get("current");
    list.replaceChildren();
    for (const node of model.get("nodes")) {
      const row = h("div", { paddingLeft: `${6 + node.depth * 18}px` });
      row.className = "branch-tree-node" + (node.id === current ? " current" : "");
      row.dataset.id = node.id;
      row.dataset.depth = String(node.depth);
      if (node.step !== null) row.dataset.step = String(node.step);
      row.title = `${node.label} → ${node.snippet}\n${node.id === current ? "shown now" : "click to show this trace"}`;
      if (node.depth > 0) row.append(h("span", {}, "└ "));
      const label = h("span", {}, node.label);
      label.className = "branch-tree-label";
      const snippet = h("span", {}, node.snippet);
      snippet.className = "branch-tree-snippet";
      row.append(label, snippet);
      list.append(row);
    }
    draws += 1;
    el.dataset.drawCount = String(draws);
    el.dataset.current = current;
  }

  /** @param {MouseEvent} ev */
  function onClick(ev) {
    const row = ev.target.closest(".branch-tree-node");
    if (row && row.dataset.id !== model.get("current")) model.send({ kind: "select", id: row.dataset.id });
  }
  list.addEventListener("click", onClick);
  model.on("change:nodes", draw);
  model.on("change:current", draw);
  draw();

  return () => {
    model.off("change:nodes", draw);
    model.off("change:current", draw);
    list.removeEventListener("click", onClick);
  };
}

export default { render };
