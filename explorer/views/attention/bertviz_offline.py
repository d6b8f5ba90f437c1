"""bertviz's head view and model view of a Trace, drawn with no network and no torch.

bertviz 1.4.1 fetches require.js, d3 and jQuery from a CDN, pastes its JSON payload into its script twice
and does not escape ``</script>`` in tokens; its Python side imports torch. So we build its params dict
ourselves in numpy (same format), read its two JS files from the installed package at run time, and inline
d3 v5.7.0 (from the PyPI package mpld3) and jQuery 3.7.1 (from XStatic-jQuery) behind a three-line
``requirejs`` stand-in. The payload travels once, in a ``<script type="application/json">`` with ``<``, ``>``
and ``&`` escaped; the page is shown in a sandboxed ``<iframe srcdoc>``, so it draws in JupyterLab and Voilà
whatever the notebook's trust, and a hostile token is only ever text.
"""

from __future__ import annotations

import html
import importlib.metadata as metadata
import json
import math
import re
import uuid
from functools import lru_cache

import ipywidgets
import numpy as np

from ...trace import Trace
from ..selection import FollowsSelection, Selection
from ..frontend.tokens_html import json_for_script

# (distribution, file inside it, text its first 300 characters must contain)
D3_SOURCE = ("mpld3", "mpld3/js/d3.v5.min.js", "d3js.org v5.7.0")
JQUERY_SOURCE = ("XStatic-jQuery", "xstatic/pkg/jquery/data/jquery.min.js", "jQuery v3.")
MAX_WEIGHTS = 1_200_000  # attention weights in one page: 64 tokens x 30 layers x 9 heads is 1,105,920
# the model view draws one SVG line per weight of every thumbnail: 1.1 M lines took 21 s in Chromium
MAX_MODEL_VIEW_LINES = 160_000
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "img-src data:; font-src data:")
_REQUIRE_CONFIG = re.compile(r"require\.config\(\{.*?\}\);", re.S)
_PARAMS_LINE = re.compile(r"const params = PYTHON_PARAMS;[^\n]*")
_HINTS = {
    "head_view": "Hover a token to see its weights; click a colour square to hide or show a head, "
                 "double-click it to show that head alone.",
    "model_view": "Click a thumbnail to see that head in full; hover a token there to see its weights.",
}


class OfflineAssetError(RuntimeError):
    """An installed file that the offline page inlines is missing or no longer looks as expected."""


@lru_cache(maxsize=None)
def _package_js(dist: str, relpath: str, marker: str) -> str:
    try:
        path = metadata.distribution(dist).locate_file(relpath)
    except metadata.PackageNotFoundError as e:
        raise OfflineAssetError(f"pip install {dist} (the bertviz views need its {relpath})") from e
    text = open(path, encoding="utf-8").read()
    if marker not in text[:300]:
        raise OfflineAssetError(f"{path}: expected '{marker}' in its header")
    _check_inlinable(text, path)
    return text


@lru_cache(maxsize=None)
def _bertviz_js(view: str) -> str:
    """bertviz's own script for `view`, without the CDN require.config, reading params from the JSON block."""
    dist = metadata.distribution("bertviz")
    src = open(dist.locate_file(f"bertviz/{view}.js"), encoding="utf-8").read()
    src, n_config = _REQUIRE_CONFIG.subn("", src, count=1)
    src, n_params = _PARAMS_LINE.subn(
        "const params = __params();", src, count=1)
    if n_config != 1 or n_params != 1 or "PYTHON_PARAMS" in src or "cdnjs" in src:
        raise OfflineAssetError(f"bertviz {dist.version}: {view}.js does not look like bertviz 1.4's")
    _check_inlinable(src, f"bertviz/{view}.js")
    return src


def _check_inlinable(text: str, name) -> None:
    low = text.lower()
    if "</script" in low or "<!--" in low:  # either would end or confuse an inline <script>
        raise OfflineAssetError(f"{name} cannot be inlined in a <script> safely")


def display_token(token: str) -> str:
    """A token as the views print it: newlines and tabs made visible (SVG text would swallow them)."""
    return token.replace("\r", "\\r").replace("\n", "↵").replace("\t", "⇥")


def resolve_window(trace: Trace, start: int | None, stop: int | None, max_tokens: int) -> tuple[int, int]:
    """The token window [start, stop): by default the last `max_tokens` tokens (the generated part and
    the prompt just before it); an explicit window wider than `max_tokens` is refused."""
    n = trace.n_tokens
    if start is None and stop is None:
        stop = n
    if stop is None:
        stop = min(n, start + max_tokens)
    if start is None:
        start = max(0, stop - max_tokens)
    start, stop = int(start), int(stop)
    if not 0 <= start < stop <= n:
        raise IndexError(f"token window {start}..{stop} is out of range: this trace has tokens 0..{n - 1}")
    if stop - start > max_tokens:
        raise ValueError(f"token window {start}..{stop} has {stop - start} tokens, more than max_tokens="
                         f"{max_tokens}: narrow it or pass a larger max_tokens")
    return start, stop


def _subset(values, count: int, what: str) -> list[int]:
    if values is None:
        return list(range(count))
    values = [int(v) for v in ([values] if isinstance(values, (int, np.integer)) else values)]
    bad = [v for v in values if not 0 <= v < count]
    if bad or not values:
        raise IndexError(f"{what} {bad or values} out of range: this trace has {what} 0..{count - 1}")
    return values


def window_attention(trace: Trace, layers: list[int], heads: list[int], start: int, stop: int,
                     renormalize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Weights of the window's tokens over the window's tokens, float32 [layers, heads, n, n], and the share
    of each row's weight that falls inside the window, [layers, heads, n] (1 everywhere when start is 0)."""
    n = stop - start
    out = np.empty((len(layers), len(heads), n, n), dtype=np.float32)
    for i, layer in enumerate(layers):
        for j, head in enumerate(heads):
            out[i, j] = trace.attention_rows(layer, head, start, stop)[:, start:stop]
    kept = out.sum(axis=-1)
    if renormalize:
        out /= kept[..., None]
    return out, kept


def weight_budget(view: str) -> int:
    """How many weights one page of `view` may carry: a few MB of JSON, and a few seconds of drawing."""
    return MAX_MODEL_VIEW_LINES if view == "model_view" else MAX_WEIGHTS


def check_size(view: str, n_layers: int, n_heads: int, n_tokens: int) -> None:
    """Refuse a page whose payload would pass the view's weight budget."""
    weights, budget = n_layers * n_heads * n_tokens * n_tokens, weight_budget(view)
    if weights > budget:
        raise ValueError(
            f"{n_layers} layers x {n_heads} heads x {n_tokens}² tokens is {weights:,} weights, more than "
            f"{budget:,} for one {view} page (it would be too big or too slow to draw): pick fewer layers= "
            f"or heads=, or a narrower token window (max_tokens=, start=, stop=)")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _span(values: list[int]) -> str:
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}–{values[-1]}"
    return ", ".join(map(str, values))


def caption(trace: Trace, view: str, layers: list[int], heads: list[int], start: int, stop: int,
            kept: np.ndarray, renormalize: bool) -> str:
    """Plain text saying what the page shows and how its rows relate to the model's weights."""
    where = f"tokens {start}–{stop - 1} of {trace.n_tokens}"
    if trace.n_generated and stop > trace.n_prompt:
        first = max(start, trace.n_prompt)
        where += (f" (the generated part starts at the {_ordinal(first - start + 1)} shown, "
                  f"{trace.tokens[first]!r})" if first > start else " (all generated)")
    heads_text = f"head{'s' * (len(heads) > 1)} {_span(heads)}"
    if view == "head_view":
        heads_text += " (the colour squares, in that order)"
    layers_text = f"layer{'s' * (len(layers) > 1)} {_span(layers)}"
    parts = [f"{trace.model.name or 'model'}: {layers_text}, {heads_text}, {where}."]
    if start == 0:
        parts.append("Rows are the model's weights; the window starts at the first token, so each sums to 1.")
    elif renormalize:
        parts.append(f"Rows are renormalised to sum to 1 inside the window; before that they kept "
                     f"{kept.mean():.0%} of their weight on average ({kept.min():.0%} at least).")
    else:
        parts.append(f"Rows are the model's weights restricted to the window; they do not sum to 1 because "
                     f"earlier tokens are cut off (they keep {kept.mean():.0%} of their weight on average, "
                     f"{kept.min():.0%} at least).")
    parts.append(_HINTS[view])
    return " ".join(parts)


def _weights_json(weights: np.ndarray, decimals: int) -> str:
    """Weights as integers in units of 10**-decimals ("123" for 0.0123): 40 % less JSON than decimals."""
    scaled = np.round(weights.astype(np.float64) * 10**decimals).astype(np.int64)
    return json.dumps(scaled.tolist(), separators=(",", ":"))


_BOOT = """(function () {
var define, module, exports;  /* hide a host page's AMD/CommonJS loader from the UMD bundles */
var __params = function () {  /* bertviz's params; weights come as integers in units of 1/attn_scale */
  var params = JSON.parse(document.getElementById(%(params_id)s).textContent);
  var scale = function (x) { return Array.isArray(x) ? x.map(scale) : x / params.attn_scale; };
  params.attention.forEach(function (d) { d.attn = scale(d.attn); });
  return params;
};
var __g = {};
(function () {
%(d3)s
}).call(__g);
%(jquery)s
var __$ = window.jQuery.noConflict(true);
var require = {config: function () {}};
var requirejs = function (deps, done) {
  done.apply(null, deps.map(function (name) { return {jquery: __$, d3: __g.d3}[name]; }));
};
%(app)s
})();"""


class BertvizPage:
    """One bertviz page of a Trace: the params of a token window and a subset of layers and heads.

    The weights are serialised once; `html()` assembles a page, with the head view's initial layer and
    heads chosen at that point (a Selection changes them without recomputing anything).
    """

    def __init__(self, trace: Trace, view: str, layers=None, heads=None, start: int | None = None,
                 stop: int | None = None, max_tokens: int = 64, decimals: int = 4, renormalize: bool = False,
                 display_mode: str = "dark"):
        if view not in _HINTS:
            raise ValueError(f"view must be 'head_view' or 'model_view', not {view!r}")
        if not 1 <= decimals <= 6:
            raise ValueError(f"decimals must be 1..6 (opacity has 256 levels: 3 is already exact), not {decimals}")
        self.view = view
        self.layers = _subset(layers, trace.n_layers, "layers")
        self.heads = _subset(heads, trace.n_heads, "heads")
        if start is None and stop is None:  # the default window shrinks to what the view can draw
            fits = math.isqrt(weight_budget(view) // (len(self.layers) * len(self.heads)))
            shrunk = fits < min(max_tokens, trace.n_tokens)
            max_tokens = max(1, min(max_tokens, fits))
        self.start, self.stop = resolve_window(trace, start, stop, max_tokens)
        check_size(view, len(self.layers), len(self.heads), self.stop - self.start)
        weights, kept = window_attention(trace, self.layers, self.heads, self.start, self.stop, renormalize)
        self.tokens = [display_token(t) for t in trace.tokens[self.start:self.stop]]
        self.caption = caption(trace, view, self.layers, self.heads, self.start, self.stop, kept, renormalize)
        if start is None and stop is None and shrunk:
            self.caption += (f" The window is {self.stop - self.start} tokens so that the page stays under "
                             f"{weight_budget(view):,} weights; pick fewer layers or heads to see more tokens.")
        self.vis_id = f"bertviz-{uuid.uuid4().hex}"
        self._weights_json = _weights_json(weights, decimals)
        self.params = {  # bertviz's params, as its head_view / model_view build them; "attn" is spliced in
            "attention": [{"name": None, "attn": None, "left_text": self.tokens, "right_text": self.tokens}],
            "default_filter": "0",
            "root_div_id": self.vis_id,
            "include_layers": self.layers,
            "attn_scale": 10**decimals,  # ours: "attn" holds integers, divided by this on the page
        }
        if view == "head_view":
            self.params.update(layer=None, heads=None)
        else:
            self.params.update(display_mode=display_mode, include_heads=self.heads, total_heads=trace.n_heads)

    def params_json(self, layer: int | None = None, head: int | None = None) -> str:
        """The params as JSON safe inside a <script>; `layer`, `head` pick the head view's first layer and head."""
        params = dict(self.params)
        if self.view == "head_view":
            params["layer"] = layer if layer in self.layers else None
            params["heads"] = [self.heads.index(head)] if head in self.heads else None
        text = json_for_script(params)
        # a key with its colon is structure, never inside a JSON string (quotes there are escaped)
        return text.replace('"attn":null', '"attn":' + self._weights_json, 1)

    def height(self) -> int:
        """Pixels the page needs (caption, bertviz's own layout)."""
        n = self.stop - self.start
        if self.view == "head_view":
            body = 30 + n * 22.5 + 30
        else:
            thumbnail = n * 7 * 12 / self.params["total_heads"] + 10
            body = max(len(self.layers) * thumbnail + 38, n * 18 + 55)
        return int(body + 90)

    def html(self, layer: int | None = None, head: int | None = None, title: str = "attention") -> str:
        """A self-contained page: no request leaves it (its CSP forbids any), tokens are data."""
        params_id = self.vis_id + "-params"
        boot = _BOOT % {"params_id": json.dumps(params_id), "d3": _package_js(*D3_SOURCE),
                        "jquery": _package_js(*JQUERY_SOURCE), "app": _bertviz_js(self.view)}
        longest = max((len(t) for t in self.tokens), default=0)
        pad = min(300, max(0, 8 * longest - 100)) if self.view == "head_view" else 0
        layer_select = 'Layer: <select id="layer"></select>' if self.view == "head_view" else ""
        return (
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f"<title>{html.escape(title)}</title>\n"
            "<style>body{margin:8px;font-family:'Helvetica Neue',Helvetica,Arial,sans-serif}"
            f".caption{{font-size:12px;color:#555;margin:0 0 8px}}#vis{{padding-left:{pad}px}}"
            "svg{overflow:visible}</style>\n</head><body>\n"
            f'<p class="caption">{html.escape(self.caption)}</p>\n'
            f'<div id="{self.vis_id}"><span style="user-select:none">{layer_select}</span>'
            "<div id='vis'></div></div>\n"
            f'<script type="application/json" id="{params_id}">{self.params_json(layer, head)}</script>\n'
            f"<script>\n{_FIT_TO_WIDTH}\n{boot}\n</script>\n</body></html>\n"
        )


# bertviz draws at fixed sizes (the model view's thumbnails); a page wider than its frame is shrunk to fit rather
# than cut at the frame's edge
_FIT_TO_WIDTH = """
function fitToWidth() {
  var page = document.documentElement, room = page.clientWidth;
  if (!room) return;  /* not laid out yet (a hidden tab): the resize when it shows comes back here */
  document.body.style.zoom = 1;
  if (page.scrollWidth > room) document.body.style.zoom = room / page.scrollWidth;
}
window.addEventListener("load", fitToWidth);  /* registered before bertviz runs, whatever it throws */
window.addEventListener("resize", fitToWidth);
"""


def iframe(page: str, height: int) -> str:
    """`page` in a sandboxed srcdoc iframe: scripts run, but with no access to the notebook around it."""
    return (f'<iframe sandbox="allow-scripts" srcdoc="{html.escape(page, quote=True)}" '
            f'style="width:100%;height:{int(height)}px;border:0"></iframe>')


def head_view_html(trace: Trace, layers=None, heads=None, start: int | None = None, stop: int | None = None,
                   max_tokens: int = 64, decimals: int = 4, renormalize: bool = False,
                   layer: int | None = None) -> str:
    """bertviz's head view of a token window of `trace`, as a standalone HTML page (for export)."""
    return BertvizPage(trace, "head_view", layers, heads, start, stop, max_tokens, decimals, renormalize).html(layer)


def model_view_html(trace: Trace, layers=None, heads=None, start: int | None = None, stop: int | None = None,
                    max_tokens: int = 64, decimals: int = 4, renormalize: bool = False,
                    display_mode: str = "dark") -> str:
    """bertviz's model view (every chosen layer x head as a thumbnail) as a standalone HTML page."""
    page = BertvizPage(trace, "model_view", layers, heads, start, stop, max_tokens, decimals, renormalize,
                       display_mode)
    return page.html()


class PageWidget(FollowsSelection, ipywidgets.HTML):
    """A bertviz page in a sandboxed iframe; lets go of the selection when closed."""


def _widget(page: BertvizPage, selection: Selection | None, height: int | None, max_height: int):
    height = min(page.height(), max_height) if height is None else height

    def value() -> str:
        if selection is None:
            return iframe(page.html(), height)
        return iframe(page.html(selection.layer, selection.head), height)

    # width auto: the widget's box fills its row inside its own margins ("100%" plus the margins overflowed)
    widget = PageWidget(value=value(), layout=ipywidgets.Layout(width="auto"))
    widget.page = page
    if selection is not None and page.view == "head_view":
        widget.follow(selection, lambda _: setattr(widget, "value", value()), ["layer", "head"])
    return widget


def head_view(trace: Trace, layers=None, heads=None, start: int | None = None, stop: int | None = None,
              max_tokens: int = 64, decimals: int = 4, renormalize: bool = False,
              selection: Selection | None = None, height: int | None = None, max_height: int = 1200):
    """bertviz's head view of a token window and a subset of layers and heads, as an ipywidgets.HTML.

    It opens on the selection's layer and head and follows them when they change; it cannot change the
    selection (the page runs in a sandboxed iframe).
    """
    page = BertvizPage(trace, "head_view", layers, heads, start, stop, max_tokens, decimals, renormalize)
    return _widget(page, selection, height, max_height)


def model_view(trace: Trace, layers=None, heads=None, start: int | None = None, stop: int | None = None,
               max_tokens: int = 64, decimals: int = 4, renormalize: bool = False, display_mode: str = "dark",
               selection: Selection | None = None, height: int | None = None, max_height: int = 900):
    """bertviz's model view (a thumbnail per layer x head) of a token window, as an ipywidgets.HTML.

    It shows every chosen layer and head at once, so it takes a selection only to match the other views.
    """
    page = BertvizPage(trace, "model_view", layers, heads, start, stop, max_tokens, decimals, renormalize,
                       display_mode)
    return _widget(page, selection, height, max_height)
