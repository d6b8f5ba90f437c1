"""One head's attention for one query token, step by step, with the trace's real numbers.

    view = explorer.views.attention_math(trace, layer=0, head=0, query=7)

query · keys · dot products · scaling by √d_k · causal mask · softmax · weighted sum of values, each drawn as
small HTML tables (colour = sign and size, hover for the exact value) beside its formula. It replays the
computation from the queries, keys and values a QueryKeyLayer stores (values only with keep_values=True).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np

from ...trace import QueryKeyLayer, Trace
from ..selection import FollowsSelection, Selection, clamp_head, clamp_layer
from ..frontend.tokens_html import escape, visible

STAGES = ["query", "keys", "dot products", "scale", "causal mask", "softmax", "weighted sum"]
MAX_KEYS = 40  # keys drawn at most; beyond, those with the largest weights (and a few the mask hides)
NUMBERS_UP_TO = 16  # vectors this short show their numbers in the cells, longer ones only colours
POSITIVE, NEGATIVE = (214, 39, 40), (31, 119, 180)


@dataclass
class AttentionMath:
    """Every intermediate of softmax(q·Kᵀ·scaling + mask)·V for one query row, float64."""

    query: np.ndarray  # [d]
    keys: np.ndarray  # [T, d]
    values: np.ndarray | None  # [T, d], None when the trace did not keep them
    dots: np.ndarray  # q·k_j  [T]
    scaled: np.ndarray  # dots · scaling (then soft-capped where the layer has a cap)
    allowed: np.ndarray  # bool [T]: key j is visible to the query
    weights: np.ndarray  # softmax over the allowed keys, 0 elsewhere
    output: np.ndarray | None  # Σ_j weights_j v_j  [d]
    scaling: float
    softcap: float | None
    sliding_window: int | None = None  # the layer sees only the last `sliding_window` keys


def compute(trace: Trace, layer: int, head: int, query: int) -> AttentionMath:
    """Replay one head's attention for the token at position `query` from the stored q, k (and v)."""
    store = trace.layers[layer]
    if not isinstance(store, QueryKeyLayer):
        raise TypeError("this layer keeps only attention weights, not queries and keys")
    kv_head = head // (store.n_heads // store.key.shape[0])
    q = store.query[head, query].astype(np.float64)
    keys = store.key[kv_head].astype(np.float64)
    values = None if store.value is None else store.value[kv_head].astype(np.float64)
    dots = keys @ q
    scaled = store.capped(dots * store.scaling)
    allowed = store.visible(query, query + 1)[0]
    exp = np.where(allowed, np.exp(scaled - scaled[allowed].max()), 0.0)
    weights = exp / exp.sum()
    output = None if values is None else weights @ values
    return AttentionMath(q, keys, values, dots, scaled, allowed, weights, output, store.scaling, store.softcap,
                         store.sliding_window)


def shown_keys(m: AttentionMath, query: int, limit: int = MAX_KEYS) -> np.ndarray:
    """Positions drawn: all when few; else the most attended visible keys and the first few the mask hides."""
    n = len(m.dots)
    if n <= limit:
        return np.arange(n)
    hidden = np.flatnonzero(~m.allowed)
    future = hidden[hidden > query][: limit // 5]
    visible_keys = np.flatnonzero(m.allowed)
    top = visible_keys[np.argsort(-m.weights[visible_keys], kind="stable")[: limit - len(future) - 1]]
    return np.unique(np.concatenate([top, future, [query]]))


# drawing: small HTML tables, escaped tokens, colour by sign and size


def _cell(value: float, scale: float, text: str = "", width: int = 10) -> str:
    rgb = POSITIVE if value >= 0 else NEGATIVE
    alpha = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    style = f"background:rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.3f});min-width:{width}px;height:16px;padding:0 2px"
    return f'<td style="{style}" title="{value:.6g}">{text}</td>'


def vector_cells(vector: np.ndarray, scale: float) -> str:
    """A vector as a row of coloured cells, numbers inside when it is short."""
    show = len(vector) <= NUMBERS_UP_TO
    return "".join(_cell(v, scale, f"{v:.2f}" if show else "", 30 if show else 8) for v in vector)


def bar(value: float, scale: float, width: int = 160, rgb=POSITIVE) -> str:
    """A horizontal bar whose length is |value| / scale of `width` pixels."""
    length = 0 if scale <= 0 or not math.isfinite(value) else min(abs(value) / scale, 1.0) * width
    colour = f"rgb{rgb if value >= 0 else NEGATIVE}"
    return (f'<div style="width:{width}px;background:#f3f3f3"><div style="width:{length:.1f}px;height:12px;'
            f'background:{colour}"></div></div>')


def _number(value: float) -> str:
    return "−∞" if value == -math.inf else f"{value:.4f}".replace("-", "−")


def _token(trace: Trace, position: int) -> str:
    return f"<code>{escape(visible(trace.tokens[position]))}</code>"


TABLE_CSS = ("<style>.am-table{line-height:1.3}"
             ".am-table td,.am-table th{padding:1px 3px;text-align:left;white-space:nowrap}</style>")


def _table(rows: list[str], header: str) -> str:
    style = "border-collapse:collapse;font-family:monospace;font-size:12px"
    return f'{TABLE_CSS}<table class="am-table" style="{style}"><tr>{header}</tr>{"".join(rows)}</table>'


def _key_cells(trace: Trace, j: int, query: int) -> str:
    """The position and token cells of key j; the query's own on a pale yellow."""
    mark = ' style="background:#fff6d5"' if j == query else ""
    return f"<td{mark}>{j}</td><td{mark}>{_token(trace, j)}</td>"


class AttentionMathView(FollowsSelection, widgets.VBox):
    """Pick a layer, a head and a query token; step through how its attention row is computed."""

    def __init__(self, trace: Trace, layer: int | None = None, head: int | None = None, query: int | None = None,
                 selection: Selection | None = None):
        super().__init__()
        self.add_class("attention-math-view")
        self.trace = trace
        self.selection = sel = selection if selection is not None else Selection()
        layer = clamp_layer(trace, sel.layer) if layer is None else layer
        head = (clamp_head(trace, sel.head) or 0) if head is None else head  # the mean has no single computation
        if query is None:
            query = sel.token if sel.token is not None else (trace.n_prompt - 1 if trace.steps else trace.n_tokens - 1)
        self.layer = widgets.Dropdown(options=list(range(trace.n_layers)), value=layer, description="layer",
                                      layout=widgets.Layout(width="150px"))
        self.head = widgets.Dropdown(options=list(range(trace.n_heads)), value=head, description="head",
                                     layout=widgets.Layout(width="150px"))
        self.query = widgets.IntSlider(value=query, min=0, max=trace.n_tokens - 1, description="query",
                                       layout=widgets.Layout(width="360px"))
        self.stage = widgets.ToggleButtons(options=[(f"{i + 1} · {s}", i) for i, s in enumerate(STAGES)], value=0,
                                           style={"button_width": "auto"})
        self.back = widgets.Button(description="◀", layout=widgets.Layout(width="40px"), tooltip="previous step")
        self.next = widgets.Button(description="▶", layout=widgets.Layout(width="40px"), tooltip="next step")
        self.heading = widgets.HTML()
        self.formula = widgets.HTML(layout=widgets.Layout(width="330px", margin="0 16px 0 0"))
        self.drawing = widgets.HTML()
        self.children = [
            widgets.HBox([self.layer, self.head, self.query]),
            widgets.HBox([self.back, self.stage, self.next]),
            self.heading,
            widgets.HBox([self.formula, self.drawing]),
        ]
        self.back.on_click(lambda _: self._move(-1))
        self.next.on_click(lambda _: self._move(1))
        for control in (self.layer, self.head, self.query, self.stage):
            control.observe(self._changed, "value")
        self.follow(sel, self._on_selection, ["layer", "head", "token"])
        self.render()  # opening the view must not change what the other views show

    def _move(self, delta: int) -> None:
        self.stage.value = min(max(self.stage.value + delta, 0), len(STAGES) - 1)

    def _changed(self, change) -> None:
        # tell the other views only what the user changed here
        name = {id(self.layer): "layer", id(self.head): "head", id(self.query): "token"}.get(id(change["owner"]))
        if name is not None:
            setattr(self.selection, name, change["new"])
        self.render()

    def _on_selection(self, change) -> None:
        name, new = change["name"], change["new"]
        if name == "layer":
            self.layer.value = clamp_layer(self.trace, new)
        elif name == "head" and clamp_head(self.trace, new) is not None:  # the mean: keep the head shown
            self.head.value = clamp_head(self.trace, new)
        elif name == "token" and new is not None and 0 <= new <= self.query.max:
            self.query.value = new

    def render(self) -> None:
        """Draw the current stage for the current layer, head and query."""
        i = self.query.value
        self.heading.value = (
            f"<div style='font-family:monospace;margin:4px 0'>layer {self.layer.value}, head {self.head.value}, "
            f"query: token {_token(self.trace, i)} at position {i} · step {self.stage.value + 1} of {len(STAGES)}: "
            f"<b>{STAGES[self.stage.value]}</b></div>"
        )
        try:
            m = compute(self.trace, self.layer.value, self.head.value, i)
        except TypeError as e:
            self.formula.value, self.drawing.value = "", f"<p><b>Cannot replay this layer:</b> {escape(str(e))}.</p>"
            return
        self.formula.value, self.drawing.value = stage_html(self.trace, m, i, self.stage.value)


@dataclass
class _Stage:
    """What every stage's page is made of: the trace, the numbers of query i, and how the rows are laid out."""

    trace: Trace
    m: AttentionMath
    i: int
    stage: int

    @property
    def d(self) -> int:
        return len(self.m.query)

    @property
    def rotary(self) -> str:
        return " (after the rotary rotation for its position)" if self.trace.positional.kind == "rotary" else ""

    @property
    def hover(self) -> str:
        return "<br><small>Red positive, blue negative; hover a cell for its value.</small>" \
            if self.d > NUMBERS_UP_TO else ""

    def shown(self) -> tuple[list[int], str]:
        """The keys shown, and a sentence when they are not all of them."""
        m, keys = self.m, shown_keys(self.m, self.i)
        note = "" if len(keys) == len(m.dots) else (
            f"<p><i>Showing {len(keys)} of {len(m.dots)} keys: the most attended, and a few the mask hides.</i></p>")
        return keys, note

    def page(self, formula: str, drawing: str) -> tuple[str, str]:
        return f'<div style="font-size:14px;line-height:1.6">{formula}</div>', drawing

    def rows(self, cells, extra_header: str) -> str:
        """One row per shown key: its position and token, then `cells(j)`; keys the mask hides greyed out."""
        m, (keys, note) = self.m, self.shown()
        grey = ' style="color:#aaa"'
        body = [f"<tr{grey if self.stage >= 4 and not m.allowed[j] else ''}>{_key_cells(self.trace, j, self.i)}"
                f"{cells(j)}</tr>" for j in keys]
        return note + _table(body, f"<th>j</th><th>token</th>{extra_header}")

    @property
    def masked(self) -> np.ndarray:
        return np.where(self.m.allowed, self.m.scaled, -np.inf)


def _query_stage(st: _Stage) -> tuple[str, str]:
    m, i, d = st.m, st.i, st.d
    formula = (f"<b>q = x<sub>{i}</sub> W<sub>Q</sub></b><br>The query of the token at position {i}: what it "
               f"is looking for. One row of Q = XW<sub>Q</sub> for this head{st.rotary}, "
               f"d<sub>k</sub> = {d} numbers.{st.hover}")
    return st.page(formula, _table([f"<tr>{vector_cells(m.query, np.abs(m.query).max())}</tr>"], ""))


def _keys_stage(st: _Stage) -> tuple[str, str]:
    m = st.m
    formula = ("<b>k<sub>j</sub> = x<sub>j</sub> W<sub>K</sub></b><br>Every token's key: what it offers. "
               f"Rows of K = XW<sub>K</sub>{st.rotary}. The query will be compared with each of them.{st.hover}")
    scale = np.abs(m.keys).max()
    return st.page(formula, st.rows(lambda j: vector_cells(m.keys[j], scale),
                                    f"<th colspan={st.d}>k<sub>j</sub></th>"))


def _dots_stage(st: _Stage) -> tuple[str, str]:
    m = st.m
    best = int(np.argmax(np.where(m.allowed, m.dots, -np.inf)))
    terms = " + ".join(f"({m.query[t]:.2f}×{m.keys[best, t]:.2f})" for t in range(min(3, st.d)))
    formula = (f"<b>s<sub>j</sub> = q · k<sub>j</sub> = Σ<sub>d</sub> q<sub>d</sub> k<sub>j,d</sub></b><br>"
               f"One dot product per key: large when query and key point the same way. For key {best}: "
               f"{terms} + … = {_number(m.dots[best])}.")
    scale = np.abs(m.dots).max()
    return st.page(formula, st.rows(lambda j: f"<td>{bar(m.dots[j], scale)}</td><td>{_number(m.dots[j])}</td>",
                                    "<th colspan=2>q·k<sub>j</sub></th>"))


def _scaled_stage(st: _Stage) -> tuple[str, str]:
    m, d = st.m, st.d
    root = 1 / m.scaling
    how = (f"÷ √d<sub>k</sub> = ÷ √{d} = ÷ {root:.4g}" if abs(root - math.sqrt(d)) < 1e-6 * root
           else f"× scaling = × {m.scaling:.4g} (this model's own scale, not 1/√d<sub>k</sub>)")
    cap = f"<br>Then capped: c·tanh(s/c) with c = {m.softcap:g}." if m.softcap else ""
    formula = (f"<b>s<sub>j</sub> = q · k<sub>j</sub> / √d<sub>k</sub></b><br>{how}. Without it, dot products "
               f"of long vectors grow large and the softmax would pick one key almost always.{cap}")
    scale = np.abs(m.scaled).max()
    return st.page(formula, st.rows(
        lambda j: f"<td>{_number(m.dots[j])}</td><td>→</td><td>{bar(m.scaled[j], scale)}</td>"
                  f"<td>{_number(m.scaled[j])}</td>", "<th>q·k<sub>j</sub></th><th></th><th colspan=2>scaled</th>"))


def _mask_stage(st: _Stage) -> tuple[str, str]:
    m, masked = st.m, st.masked
    scale = np.abs(m.scaled[m.allowed]).max()
    return st.page(_mask_formula(st.i, m.sliding_window), st.rows(
        lambda j: f"<td>{_number(m.scaled[j])}</td><td>{'+ 0' if m.allowed[j] else '+ −∞'}</td>"
                  f"<td>{bar(masked[j], scale)}</td><td>{_number(masked[j])}</td>",
        "<th>scaled</th><th>mask</th><th colspan=2>masked</th>"))


def _softmax_stage(st: _Stage) -> tuple[str, str]:
    m, masked = st.m, st.masked
    exp = np.where(m.allowed, np.exp(masked - masked[m.allowed].max()), 0.0)
    formula = ("<b>a<sub>j</sub> = exp(s<sub>j</sub>) / Σ<sub>j'</sub> exp(s<sub>j'</sub>)</b><br>"
               f"Exponentiate (after subtracting the largest score, {_number(masked[m.allowed].max())}, which "
               f"changes nothing) and divide by the sum, {exp.sum():.4f}. The weights are positive and add up "
               f"to {m.weights.sum():.4f}.")
    return st.page(formula, st.rows(
        lambda j: f"<td>{_number(masked[j])}</td><td>{exp[j]:.4f}</td><td>{bar(m.weights[j], 1.0)}</td>"
                  f"<td><b>{m.weights[j]:.4f}</b></td>",
        "<th>s<sub>j</sub></th><th>exp(s<sub>j</sub>−max)</th><th colspan=2>a<sub>j</sub></th>"))


def _output_stage(st: _Stage) -> tuple[str, str]:
    m, d = st.m, st.d
    if m.values is None:
        return st.page("<b>o = Σ<sub>j</sub> a<sub>j</sub> v<sub>j</sub></b>", (
            "<p><b>Values were not captured for this trace.</b> Generate with "
            "<code>lm.generate(..., keep_values=True)</code> to see the weighted sum of the values.</p>"))
    formula = ("<b>o = Σ<sub>j</sub> a<sub>j</sub> v<sub>j</sub></b>, v<sub>j</sub> = x<sub>j</sub> W<sub>V</sub><br>"
               "The head's output: the values mixed in the proportions of the weights. It is then concatenated "
               f"with the other heads' outputs and multiplied by W<sub>O</sub>.{st.hover}")
    scale = max(np.abs(m.values).max(), np.abs(m.output).max())
    keys, note = st.shown()
    out = f"<tr><td></td><td><b>o</b></td><td></td>{vector_cells(m.output, scale)}</tr>"
    body = [f"<tr>{_key_cells(st.trace, j, st.i)}<td>{m.weights[j]:.3f} ×</td>"
            f"{vector_cells(m.values[j], scale)}</tr>" for j in keys if m.allowed[j]]
    header = f"<th>j</th><th>token</th><th>a<sub>j</sub></th><th colspan={d}>v<sub>j</sub></th>"
    return st.page(formula, note + _table(body + [out], header))


_STAGES = [_query_stage, _keys_stage, _dots_stage, _scaled_stage, _mask_stage, _softmax_stage, _output_stage]


def stage_html(trace: Trace, m: AttentionMath, i: int, stage: int) -> tuple[str, str]:
    """(formula, drawing) HTML of one stage: query, keys, dot products, scaling, mask, softmax, weighted values."""
    return _STAGES[min(stage, len(_STAGES) - 1)](_Stage(trace, m, i, stage))


def _mask_formula(i: int, window: int | None) -> str:
    """The mask stage's formula for query i: causal, and for a sliding-window layer also the window."""
    head = "<b>s<sub>j</sub> + mask<sub>j</sub></b>, mask<sub>j</sub> = "
    if not window or i < window:
        early = (f" This layer looks back over a sliding window of {window} tokens, which at position {i} still "
                 "covers every earlier key." if window else "")
        return (f"{head}0 if j ≤ {i}, −∞ if j > {i}<br>A token may not look at the future: keys after the query "
                f"get −∞, so after the softmax they weigh exactly 0.{early}")
    return (f"{head}0 if {i - window} &lt; j ≤ {i}, −∞ if j > {i} or j ≤ {i - window}<br>A token may not look at "
            f"the future, and this layer looks back over a sliding window of {window} tokens only: keys after the "
            f"query and keys {window} or more positions before it get −∞, so after the softmax they weigh "
            "exactly 0.")


def attention_math(trace: Trace, layer: int | None = None, head: int | None = None, query: int | None = None,
                   selection: Selection | None = None) -> AttentionMathView:
    """Step through one head's attention for one query token.

    layer and head default to the selection's (else 0); query to the selection's token, else the position that
    wrote the first generated token (the last token for a trace with no generated ones).
    """
    return AttentionMathView(trace, layer, head, query, selection)


__all__ = ["AttentionMath", "AttentionMathView", "attention_math", "compute", "stage_html"]
