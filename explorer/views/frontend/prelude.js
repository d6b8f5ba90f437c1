// The prelude every view module starts with (the frontend loader puts it in front of each module's own source: an
// anywidget module cannot import a sibling file). Plain top-level declarations, no `export`: the colours, the
// byte helpers and the DOM helpers, defined once so the notebook views and the standalone page stay identical.

/** viridis as a 256-entry lookup table of RGBA pixels packed little-endian (0xAABBGGRR), a polynomial fit.
 * @returns {Uint32Array} */
function viridis() {
  const c = [
    [0.2777273272234177, 0.005407344544966578, 0.3340998053353061],
    [0.1050930431085774, 1.404613529898575, 1.384590162594685],
    [-0.3308618287255563, 0.214847559468213, 0.09509516302823659],
    [-4.634230498983486, -5.799100973351585, -19.33244095627987],
    [6.228269936347081, 14.17993336680509, 56.69055260068105],
    [4.776384997670288, -13.74514537774601, -65.35303263337234],
    [-5.435455855934631, 4.645852612178535, 26.3124352495832],
  ];
  const lut = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    const ch = [0, 1, 2].map((k) => {
      let v = c[6][k];
      for (let j = 5; j >= 0; j--) v = c[j][k] + (i / 255) * v;
      return Math.max(0, Math.min(255, Math.round(v * 255)));
    });
    lut[i] = (255 << 24) | (ch[2] << 16) | (ch[1] << 8) | ch[0];
  }
  return lut;
}
const LUT = viridis();
/** The pixel of a cell a causal model cannot attend to (key after query): light grey. */
const MASKED = (255 << 24) | (236 << 16) | (236 << 8) | 236;

/** The CSS colour of colour index `i` (0..255).
 * @param {number} i @returns {string} */
const cssColour = (i) => `rgb(${LUT[i] & 255},${(LUT[i] >> 8) & 255},${(LUT[i] >> 16) & 255})`;

/** Bytes as a Uint8Array: a bytes trait arrives as a DataView; the standalone page passes a Uint8Array.
 * @param {unknown} v @returns {Uint8Array} */
function asU8(v) {
  if (v instanceof Uint8Array) return v;
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  if (v instanceof ArrayBuffer) return new Uint8Array(v);
  return new Uint8Array(0);
}

/** Float32 bytes (a DataView, as a bytes trait arrives) as a Float32Array, copied so it is aligned.
 * @param {ArrayBufferView | null | undefined} v @returns {Float32Array} */
function asFloat32(v) {
  if (v == null || v.byteLength === 0) return new Float32Array(0);
  const buffer = v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength);
  return new Float32Array(buffer);
}

/** Whitespace a reader cannot see, shown as a visible mark (as tokens_html.VISIBLE in Python). */
const VISIBLE = { " ": "␣", "\n": "↵", "\t": "→", "\r": "␍" };

/** The token with whitespace made visible, "∅" for an empty token (as tokens_html.visible in Python).
 * @param {string} token @returns {string} */
function visible(token) {
  if (token === "") return "∅";
  let out = "";
  for (const c of token) out += VISIBLE[c] ?? c;
  return out;
}

/** The part of the anywidget model API the views use (export.js's LocalModel has the same shape).
 * @typedef {{ get(key: string): any, set(key: string, value: any): void, save_changes(): void,
 *   on(event: string, f: Function): void, off(event: string, f: Function): void, send(msg: any): void }} Model */

/** A new element with inline styles and, if given, its text (set as textContent, never as HTML).
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag @param {Partial<CSSStyleDeclaration>} [style] @param {string | null} [text]
 * @returns {HTMLElementTagNameMap[K]} */
function h(tag, style = {}, text = null) {
  const e = document.createElement(tag);
  Object.assign(e.style, style);
  if (text !== null) e.textContent = text;
  return e;
}

/** An anywidget `render` for a view made of four functions: build(model, el) makes its elements and returns the
 * view; listen(view) wires the page's events; connect(view) follows the model's changes and returns the cleanup;
 * draw(view) draws it all once.
 * @param {(model: Model, el: HTMLElement) => any} build @param {(view: any) => void} listen
 * @param {(view: any) => () => void} connect @param {(view: any) => void} draw
 * @returns {(ctx: { model: Model, el: HTMLElement }) => () => void} */
function viewRenderer(build, listen, connect, draw) {
  return ({ model, el }) => {
    const view = build(model, el);
    listen(view);
    const disconnect = connect(view);
    draw(view);
    return disconnect;
  };
}

/** Draw `img` (one pixel a cell) over the whole of `canvas` through `ctx`, each cell a sharp block.
 * @param {CanvasRenderingContext2D} ctx @param {HTMLCanvasElement} canvas @param {ImageData} img */
function blit(ctx, canvas, img) {
  const off = document.createElement("canvas");
  off.width = img.width;
  off.height = img.height;
  off.getContext("2d").putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
}
