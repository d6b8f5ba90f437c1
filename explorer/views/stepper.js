// TokenText: tokens as text (or as chips), each coloured by a value, one highlighted, hover for details.
// Tokens arrive once as a list; per step only `values` (float32 bytes), `count` and `highlight` change.
// Tokens are set with textContent, never innerHTML: a token like <img src=x onerror=...> shows as text.

const VISIBLE = { " ": "␣", "\n": "↵", "\t": "→", "\r": "␍" };

function visible(token) {
  if (token === "") return "∅";
  let out = "";
  for (const c of token) out += VISIBLE[c] ?? c;
  return out;
}

// Bytes traits arrive as a DataView
function asFloat32(v) {
  if (v == null || v.byteLength === 0) return new Float32Array(0);
  const buffer = v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength);
  return new Float32Array(buffer);
}

const CSS = `
.token-text { position: relative; }
.token-text-box { position: relative; overflow-y: auto; font: 13px/1.7 ui-monospace, monospace; white-space: pre-wrap;
  word-break: break-word; border: 1px solid #ddd; border-radius: 4px; padding: 4px 6px; background: #fff; color: #111; }
.token-text-box span { cursor: pointer; border-radius: 2px; }
.token-text-box span.highlight { outline: 2px solid #d62728; outline-offset: 0; font-weight: bold; }
.token-text-box span.selected { text-decoration: underline; }
.token-text-box.chips { white-space: normal; }
.token-text-box.chips span { display: inline-block; border: 1px solid #ccc; margin: 1px; padding: 0 3px; white-space: pre; }
.token-text-tip { position: absolute; display: none; pointer-events: none; z-index: 20; white-space: pre;
  background: rgba(0,0,0,.85); color: #fff; font: 12px monospace; padding: 3px 6px; border-radius: 3px; }
`;

function addStyle() {
  if (document.getElementById("token-text-style")) return;
  const style = document.createElement("style");
  style.id = "token-text-style";
  style.textContent = CSS;
  document.head.append(style);
}

function render({ model, el }) {
  addStyle();
  el.classList.add("token-text");
  const box = document.createElement("div");
  const tip = document.createElement("div");
  tip.className = "token-text-tip";
  el.append(box, tip);
  let spans = [];
  let draws = 0;

  function build() {
    const tokens = model.get("tokens");
    const chips = model.get("mode") === "chips";
    box.className = chips ? "token-text-box chips" : "token-text-box";
    box.style.maxHeight = model.get("max_height");
    box.replaceChildren();
    spans = tokens.map((token, i) => {
      const span = document.createElement("span");
      span.dataset.index = String(i);
      if (chips) {
        span.textContent = visible(token);
      } else if (token.includes("\n")) {
        // a newline shows as ↵ and still breaks the line
        span.textContent = token.replaceAll("\n", "↵\n");
      } else {
        span.textContent = token === "" ? "∅" : token;
      }
      box.append(span);
      return span;
    });
  }

  function paint() {
    const values = asFloat32(model.get("values"));
    const count = model.get("count");
    const highlight = model.get("highlight");
    const selected = model.get("selected");
    const rgb = model.get("rgb");
    let top = model.get("scale");
    if (!(top > 0)) {
      top = 0;
      for (let i = 0; i < Math.min(count, values.length); i++) top = Math.max(top, values[i]);
    }
    spans.forEach((span, i) => {
      span.hidden = i >= count;
      const v = i < values.length ? values[i] : 0;
      const a = top > 0 ? Math.min(1, Math.max(0, v / top)) : 0;
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
  }

  function onMove(ev) {
    const span = ev.target.closest("span[data-index]");
    if (!span) { tip.style.display = "none"; return; }
    const i = Number(span.dataset.index);
    const values = asFloat32(model.get("values"));
    const titles = model.get("titles");
    const lines = [`#${i} “${visible(model.get("tokens")[i])}”`];
    if (titles[i]) lines.push(titles[i]);
    if (model.get("value_name") && i < values.length) lines.push(`${model.get("value_name")} ${values[i].toFixed(4)}`);
    tip.textContent = lines.join("\n");
    const r = el.getBoundingClientRect();
    tip.style.left = ev.clientX - r.left + 12 + "px";
    tip.style.top = ev.clientY - r.top + 14 + "px";
    tip.style.display = "block";
  }
  function onLeave() { tip.style.display = "none"; }
  function onClick(ev) {
    const span = ev.target.closest("span[data-index]");
    if (!span) return;
    model.set("selected", Number(span.dataset.index));
    model.save_changes();
  }
  box.addEventListener("mousemove", onMove);
  box.addEventListener("mouseleave", onLeave);
  box.addEventListener("click", onClick);

  const rebuild = () => { build(); paint(); };
  model.on("change:tokens", rebuild);
  model.on("change:mode", rebuild);
  for (const name of ["values", "count", "highlight", "selected", "rgb", "scale"]) model.on(`change:${name}`, paint);
  rebuild();

  return () => {
    model.off("change:tokens", rebuild);
    model.off("change:mode", rebuild);
    for (const name of ["values", "count", "highlight", "selected", "rgb", "scale"]) model.off(`change:${name}`, paint);
    box.removeEventListener("mousemove", onMove);
    box.removeEventListener("mouseleave", onLeave);
    box.removeEventListener("click", onClick);
  };
}

export default { render };
