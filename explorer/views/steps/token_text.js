// TokenText: tokens as text (or as chips), each coloured by a value, one highlighted, hover for details.
// Tokens arrive once as a list; per step only `values` (float32 bytes), `count` and `highlight` change (the
// stepper's candidates: their tokens and `key` too, the step they are of, shown as data-key).
// Tokens are set with textContent, never innerHTML: a token like <img src=x onerror=...> shows as text.

// asFloat32 and visible come from prelude.js, put in front of this file by the frontend loader; the styles are
// token_text.css.

/** Draw the token text into `el` and repaint on the model's changes; returns the cleanup.
 * @param {{ model: Model, el: HTMLElement }} ctx @returns {() => void} */
function render({ model, el }) {
  el.classList.add("token-text");
  const box = document.createElement("div");
  const tip = document.createElement("div");
  tip.className = "token-text-tip";
  el.append(box, tip);
  let spans = [];
  let draws = 0;

  /** One span a token. The spans there are kept and only a token's text that changed is written: moving to
   * another step neither replaces the chips under the pointer nor redraws a chip whose token stays. */
  function build() {
    const tokens = model.get("tokens");
    const mode = model.get("mode");
    const chips = mode !== "text"; // "chips", or "candidates": chips too, told apart by their class
    box.className = chips ? `token-text-box ${mode}` : "token-text-box";
    box.classList.toggle("not-clickable", !model.get("clickable"));
    box.style.maxHeight = model.get("max_height");
    const old = spans;
    spans = tokens.map((token, i) => {
      let text;
      if (chips) {
        text = visible(token);
      } else if (token.includes("\n")) {
        // a newline shows as ↵ and still breaks the line
        text = token.replaceAll("\n", "↵\n");
      } else {
        text = token === "" ? "∅" : token;
      }
      const span = old[i] ?? box.appendChild(document.createElement("span"));
      span.dataset.index = String(i);
      if (span.textContent !== text) span.textContent = text;
      return span;
    });
    for (const span of old.slice(tokens.length)) span.remove();
    tip.style.display = "none"; // it told of a token that may have changed
  }

  /** Colour, show and mark the spans from `values`, `count`, `highlight` and `selected`. */
  function paint() {
    const values = asFloat32(model.get("values"));
    const count = model.get("count");
    const highlight = model.get("highlight");
    const selected = model.get("selected");
    const rgb = model.get("rgb");
    let top = model.get("scale");
    if (!(top > 0)) {
      top = 0;
      for (let i = 0; i < Math.min(count, values.length); i++) if (values[i] < Infinity) top = Math.max(top, values[i]);
    }
    spans.forEach((span, i) => {
      span.hidden = i >= count;
      const v = i < values.length ? values[i] : 0;
      const a = top > 0 && !Number.isNaN(v) ? Math.min(1, Math.max(0, v / top)) : 0; // NaN (unknown): no colour
      span.style.background = a > 0 ? `rgba(${rgb},${a.toFixed(3)})` : "";
      span.classList.toggle("highlight", i === highlight);
      span.classList.toggle("selected", i === selected);
    });
    const h = spans[highlight];
    if (h && !h.hidden) {
      // keep the highlighted token in view inside the box, without scrolling the page
      const top = h.offsetTop;
      if (top < box.scrollTop || top + h.offsetHeight > box.scrollTop + box.clientHeight) {
        box.scrollTop = Math.max(0, top - box.clientHeight / 2);
      }
    }
    draws += 1;
    el.dataset.drawCount = String(draws);
    el.dataset.count = String(count);
    el.dataset.highlight = String(highlight);
    el.dataset.valueName = model.get("value_name");
    el.dataset.key = model.get("key");
  }

  /** The hover line of a value: nats also in bits (value_unit "nats"); NaN is a value not known.
   * @param {number} v @returns {string} */
  function valueLine(v) {
    const name = model.get("value_name");
    if (Number.isNaN(v)) return `${name} not known`;
    if (model.get("value_unit") === "nats") return `${name} ${v.toFixed(2)} nats (${(v / Math.LN2).toFixed(2)} bits)`;
    return `${name} ${v.toFixed(4)}`;
  }

  /** @param {MouseEvent} ev */
  function onMove(ev) {
    const span = ev.target.closest("span[data-index]");
    if (!span) { tip.style.display = "none"; return; }
    const i = Number(span.dataset.index);
    const values = asFloat32(model.get("values"));
    const titles = model.get("titles");
    const lines = [`#${i} “${visible(model.get("tokens")[i])}”`];
    if (titles[i]) lines.push(titles[i]);
    if (model.get("value_name") && i < values.length) lines.push(valueLine(values[i]));
    tip.textContent = lines.join("\n");
    tip.style.display = "block";
    // beside the pointer, turned to the other side where it would run past the widget's right or bottom edge
    const r = el.getBoundingClientRect(), x = ev.clientX - r.left, y = ev.clientY - r.top;
    const left = x + 12 + tip.offsetWidth > el.clientWidth ? Math.max(0, x - 12 - tip.offsetWidth) : x + 12;
    const top = y + 14 + tip.offsetHeight > el.clientHeight ? y - 8 - tip.offsetHeight : y + 14;
    tip.style.left = left + "px";
    tip.style.top = top + "px";
  }
  function onLeave() { tip.style.display = "none"; }
  /** @param {MouseEvent} ev */
  function onClick(ev) {
    const span = ev.target.closest("span[data-index]");
    if (!span || !model.get("clickable")) return;
    // with the key of the tokens clicked, in one message: the kernel can tell a click on tokens it has since
    // replaced (the candidates of the step before, still drawn while the new ones were on their way)
    model.set("selected", Number(span.dataset.index));
    model.set("selected_key", model.get("key"));
    model.save_changes();
  }
  box.addEventListener("mousemove", onMove);
  box.addEventListener("mouseleave", onLeave);
  box.addEventListener("click", onClick);

  const rebuild = () => { build(); paint(); };
  const PAINTED = ["values", "count", "highlight", "selected", "rgb", "scale", "value_name", "key"];
  model.on("change:tokens", rebuild);
  model.on("change:mode", rebuild);
  model.on("change:clickable", rebuild);
  for (const name of PAINTED) model.on(`change:${name}`, paint);
  rebuild();

  return () => {
    model.off("change:tokens", rebuild);
    model.off("change:mode", rebuild);
    model.off("change:clickable", rebuild);
    for (const name of PAINTED) model.off(`change:${name}`, paint);
    box.removeEventListener("mousemove", onMove);
    box.removeEventListener("mouseleave", onLeave);
    box.removeEventListener("click", onClick);
  };
}

export default { render };
