"""How the model knows where a token stands: pictures of its positional encoding, from `trace.positional`.

    explorer.views.positional(trace)

learned / sinusoidal: the table (positions × dimensions) and the cosine similarity of every pair of positions.
rotary: cos and sin of position × frequency, and the score (R_m q)·(R_n k) against the distance m − n for
several query positions m: the curves coincide, because a rotation by m·θ then by −n·θ is one by (m − n)·θ.
alibi: each head's bias slope × distance against the distance. NoPE layers: a sentence, no picture.
Models whose layers differ (two rotary bases, NoPE layers between rotary ones) get a strip of the layers, coloured
by kind, that picks the layer pictured.
Big arrays are thinned to at most `max_size` rows and columns (every k-th, real indices on the axes).
"""

from __future__ import annotations

import html
import json

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ...trace import Positional, Trace
from ..selection import Selection

MAX_SIZE = 200  # rows or columns plotted at most, per heatmap
ROTARY_POSITIONS = MAX_SIZE  # rotary pictures cover at least this many positions (computed from inv_freq)

HOW_TO_READ = {
    "learned": (
        "Left: the learned vector of each position (rows) over its dimensions (columns). Right: the cosine "
        "similarity of every pair of positions; a bright band along the diagonal means neighbours get similar vectors."
    ),
    "sinusoidal": (
        "Left: the fixed table, position (rows) × dimension (columns): fast waves in the first dimensions, slow "
        "ones in the last. Right: cosine similarity of every pair of positions; it depends on their distance."
    ),
    "rotary": (
        "Top: cos and sin of position × θ_i for each frequency θ_i (columns, fastest first). Bottom: the score "
        "(R_m q)·(R_n k) of one fixed random q and k rotated to positions m and n, against the distance m − n, "
        "for three query positions m: the curves lie on top of each other, so the score depends only on distance."
    ),
    "alibi": (
        "Each head adds −slope × distance to its scores before the softmax (one line a head): a steep head "
        "looks near, a flat one far. There are no position vectors at all."
    ),
    "none": (
        "This layer adds nothing that depends on position (NoPE). Position still reaches it: the causal mask lets "
        "token i see only tokens 0..i, and earlier layers wrote what they learned of order into the residual stream."
    ),
}
KIND_COLOURS = {"rotary": "#4c78a8", "alibi": "#f58518", "none": "#bab0ac", "absolute": "#54a24b",
                "unknown": "#e45756"}


def thin(n: int, max_size: int = MAX_SIZE) -> np.ndarray:
    """At most max_size evenly spread indices of 0..n-1, first and last included."""
    if n <= max_size:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_size).round().astype(int))


def cosine_similarity(x: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair of rows of x, [n, n]."""
    x = np.asarray(x, dtype=np.float64)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


def _suffix(pos: Positional, layer: int | None) -> str:
    """The name suffix of the rotary table that `layer` uses ("" for the first; layer None: the first)."""
    table = 0 if layer is None else pos.layer(layer).get("table") or 0
    return "" if not table else f"_{table}"


def rotary_tables(pos: Positional, n_positions: int, layer: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of position × inv_freq (times attention_scaling), [n_positions, rotary_dim / 2], of the table
    layer `layer` uses."""
    record = pos.layer(layer) if layer is not None else pos.params
    scaling = float(record.get("attention_scaling") or pos.params.get("attention_scaling", 1.0))
    inv_freq = pos.arrays["inv_freq" + _suffix(pos, layer)].astype(np.float64)
    angles = np.arange(n_positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles) * scaling, np.sin(angles) * scaling


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate vectors x [..., 2h] by the angles whose cos/sin [..., h] are given, pairing dims i and i + h
    (the rotate_half convention of Llama and GPT-NeoX)."""
    h = cos.shape[-1]
    x1, x2 = x[..., :h], x[..., h:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def random_query_key(pos: Positional, seed: int = 0, layer: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random query and key of the rotary width (seeded, standard normal)."""
    rng = np.random.default_rng(seed)
    width = 2 * pos.arrays["inv_freq" + _suffix(pos, layer)].shape[0]
    return rng.standard_normal(width), rng.standard_normal(width)


def relative_scores(pos: Positional, anchors, max_distance: int, seed: int = 0,
                    layer: int | None = None) -> np.ndarray:
    """(R_m q)·(R_n k) for each query position m in anchors and n = m - d, d = 0..max_distance: [len(anchors), D+1].

    Computed by rotating q to m and k to n one by one, as the model does; not from the distance formula.
    """
    q, k = random_query_key(pos, seed, layer)
    cos, sin = rotary_tables(pos, max(anchors) + 1, layer)
    out = np.zeros((len(anchors), max_distance + 1))
    for a, m in enumerate(anchors):
        n = m - np.arange(max_distance + 1)
        q_m = rotate(q, cos[m], sin[m])
        k_n = rotate(np.broadcast_to(k, (n.size, k.size)), cos[n], sin[n])
        out[a] = k_n @ q_m
    return out


def rotary_layout(n_tokens: int) -> tuple[int, int, list[int]]:
    """(positions pictured, largest distance, query positions m) for a trace of n_tokens."""
    n_positions = max(n_tokens, ROTARY_POSITIONS)
    max_distance = n_positions // 2
    return n_positions, max_distance, [max_distance, max_distance + n_positions // 4, n_positions - 1]


def _heatmap(z: np.ndarray, x: np.ndarray, y: np.ndarray, name: str, xname: str, **kw) -> go.Heatmap:
    return go.Heatmap(z=z.astype(np.float32), x=x, y=y, name=name,
                      hovertemplate=f"position %{{y}}, {xname} %{{x}}<br>%{{z:.3f}}<extra>{name}</extra>", **kw)


def _table_figure(table: np.ndarray, kind: str, max_size: int) -> go.Figure:
    rows, cols = thin(table.shape[0], max_size), thin(table.shape[1], max_size)
    similarity = cosine_similarity(table)[np.ix_(rows, rows)]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=(
        f"{kind} position vectors: {table.shape[0]} positions × {table.shape[1]} dims",
        "cosine similarity of positions"))
    limit = float(np.abs(table).max()) or 1.0
    fig.add_trace(_heatmap(table[np.ix_(rows, cols)], cols, rows, "value", "dim", colorscale="RdBu", zmid=0,
                           zmin=-limit, zmax=limit, colorbar=dict(x=0.44, len=0.9, thickness=12)), 1, 1)
    fig.add_trace(_heatmap(similarity, rows, rows, "cosine", "position", colorscale="Viridis", zmin=-1, zmax=1,
                           colorbar=dict(x=1.0, len=0.9, thickness=12)), 1, 2)
    fig.update_xaxes(title_text="dimension", row=1, col=1)
    fig.update_xaxes(title_text="position", row=1, col=2)
    fig.update_yaxes(title_text="position", autorange="reversed")
    return fig


def _rotary_figure(pos: Positional, n_tokens: int, max_size: int, seed: int, layer: int | None = None) -> go.Figure:
    n_positions, max_distance, anchors = rotary_layout(n_tokens)
    cos, sin = rotary_tables(pos, n_positions, layer)
    rows, cols = thin(n_positions, max_size), thin(cos.shape[1], max_size)
    fig = make_subplots(rows=2, cols=2, specs=[[{}, {}], [{"colspan": 2}, None]], vertical_spacing=0.16,
                        horizontal_spacing=0.1, row_heights=[0.55, 0.45], subplot_titles=(
                            f"cos(position × θ_i), positions 0..{n_positions - 1}", "sin(position × θ_i)",
                            "(R_m q)·(R_n k) against the distance m − n"))
    for col, (name, table) in enumerate([("cos", cos), ("sin", sin)], start=1):
        fig.add_trace(_heatmap(table[np.ix_(rows, cols)], cols, rows, name, "frequency", coloraxis="coloraxis"),
                      1, col)
    scores = relative_scores(pos, anchors, max_distance, seed, layer)
    distance = np.arange(max_distance + 1)
    for a, (m, dash) in enumerate(zip(anchors, ["solid", "dash", "dot"])):
        fig.add_trace(go.Scatter(x=distance, y=scores[a].astype(np.float32), mode="lines", name=f"query at m = {m}",
                                 line=dict(dash=dash, width=2.5 - 0.6 * a),
                                 hovertemplate="m − n = %{x}<br>score %{y:.3f}<extra>m = " + str(m) + "</extra>"),
                      2, 1)
    scaling = float(np.hypot(cos[0, 0], sin[0, 0])) or 1.0
    fig.update_layout(coloraxis=dict(colorscale="RdBu", cmin=-scaling, cmax=scaling,
                                     colorbar=dict(len=0.5, y=1, yanchor="top", thickness=12)),
                      legend=dict(x=1.02, y=0.05, yanchor="bottom"))
    fig.update_xaxes(title_text="frequency i (fast → slow)", row=1, col=1)
    fig.update_xaxes(title_text="frequency i", row=1, col=2)
    fig.update_yaxes(title_text="position", autorange="reversed", row=1)
    fig.update_xaxes(title_text="distance m − n", row=2, col=1)
    fig.update_yaxes(title_text="score", row=2, col=1)
    return fig


def alibi_biases(slopes, max_distance: int) -> np.ndarray:
    """Each head's ALiBi bias against the distance d = 0..max_distance: −slope·d, [heads, D+1]."""
    return -np.outer(np.asarray(slopes, dtype=np.float64), np.arange(max_distance + 1))


def _alibi_figure(slopes, max_distance: int) -> go.Figure:
    fig = go.Figure()
    distance = np.arange(max_distance + 1)
    for head, (slope, bias) in enumerate(zip(slopes, alibi_biases(slopes, max_distance))):
        fig.add_trace(go.Scatter(x=distance, y=bias.astype(np.float32), mode="lines", name=f"head {head}: {slope:.3g}",
                                 hovertemplate="distance %{x}<br>bias %{y:.2f}<extra>head " + str(head) + "</extra>"))
    fig.update_layout(title="ALiBi: bias added to the score, −slope × distance (legend: each head's slope)",
                      legend=dict(x=1.02, y=1), xaxis_title="distance i − j", yaxis_title="bias")
    return fig


def layer_shown(trace: Trace, layer: int | None) -> int | None:
    """The layer pictured: `layer`, else the first layer with a positional term of its own, else None."""
    kinds = trace.positional.layer_kinds
    if layer is not None or not kinds:
        return layer
    return next((i for i, k in enumerate(kinds) if k in ("rotary", "alibi")), 0)


def positional_figure(trace: Trace, max_size: int = MAX_SIZE, seed: int = 0,
                      layer: int | None = None) -> go.Figure | None:
    """The plotly figure of the trace's positional encoding at `layer` (default: the first layer that has a positional
    term), or None where that layer has no picture (NoPE)."""
    pos = trace.positional
    layer = layer_shown(trace, layer)
    kind = pos.kind if layer is None else pos.layer(layer)["kind"]
    if kind == "absolute":  # which table was added at the input (a mixed model's kind does not say)
        kind = "learned" if "embeddings" in pos.arrays else "sinusoidal" if "table" in pos.arrays else None
    if kind == "rotary":
        fig = _rotary_figure(pos, trace.n_tokens, max_size, seed, layer)
        height = 680
    elif kind == "alibi" and layer is not None and pos.layer(layer).get("slopes"):
        fig = _alibi_figure(pos.layer(layer)["slopes"], max(16, min(trace.n_tokens, 256)))
        height = 420
    elif kind in ("learned", "sinusoidal"):
        table = pos.arrays["embeddings" if kind == "learned" else "table"]
        fig = _table_figure(table, kind, max_size)
        height = 460
    else:
        return None
    # no width: plotly's renderer sizes the figure to its box (a JupyterLab output area, a dashboard tab)
    fig.update_layout(height=height, autosize=True, margin=dict(l=60, r=20, t=50, b=50), template="plotly_white")
    fig.update_annotations(font_size=13)
    return fig


def plotly_output(fig: go.Figure) -> widgets.Output:
    """A static figure in an Output widget, drawn by plotly's own mime renderer (jupyterlab-plotly).

    Unlike a FigureWidget, this does not send plotly.js again for each figure: the page loads it once.
    """
    out = widgets.Output()
    bundle = {"application/vnd.plotly.v1+json": json.loads(fig.to_json()), "text/plain": "<plotly figure>"}
    out.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)
    return out


def _layer_title(pos: Positional, layer: int) -> str:
    record = pos.layer(layer)
    words = [f"layer {layer}: {record['kind'] if record['kind'] != 'none' else 'NoPE'}"]
    if record.get("theta"):
        words.append(f"base {record['theta']:g}")
    if record.get("rotary_dim"):
        words.append(f"{record['rotary_dim']} rotary dims")
    if record.get("layer_type"):
        words.append(str(record["layer_type"]).replace("_", " "))
    if record.get("evidence"):
        words.append(record["evidence"])
    return ", ".join(words)


class PositionalView(widgets.VBox):
    """A sentence on the model's positional encoding, a strip of its layers coloured by kind (a click picks the
    layer pictured), how to read the picture, and the picture (static plotly)."""

    def __init__(self, trace: Trace, selection: Selection | None = None, max_size: int = MAX_SIZE, seed: int = 0,
                 layer: int | None = None):
        super().__init__()
        self.add_class("positional-view")
        self.trace, self.max_size, self.seed = trace, max_size, seed
        self.selection = selection  # positions do not follow the selection; the strip picks the layer
        pos = trace.positional
        self.description = widgets.HTML(
            f"<p><b>Positional encoding: {html.escape(pos.kind)}.</b> {html.escape(pos.description)}</p>")
        self.buttons = []
        for i, kind in enumerate(pos.layer_kinds):
            button = widgets.Button(description=str(i), tooltip=_layer_title(pos, i),
                                    layout=widgets.Layout(width="34px", height="26px", padding="0", margin="1px"))
            button.style.button_color = KIND_COLOURS.get(kind, "#cccccc")
            button.add_class("ae-layer-button")
            button.on_click(lambda _b, i=i: self.show_layer(i) if i != self.layer else None)  # shown: no redraw
            self.buttons.append(button)
        legend = " ".join(f"<span style='background:{KIND_COLOURS[k]};padding:0 6px;border-radius:3px;color:white'>"
                          f"{'NoPE' if k == 'none' else k}</span>" for k in KIND_COLOURS if k in pos.layer_kinds)
        self.strip = widgets.VBox([widgets.HTML(f"<span>Layers (click one): {legend}</span>"),
                                   widgets.HBox(self.buttons, layout=widgets.Layout(flex_flow="row wrap"))])
        self.strip.add_class("ae-layer-strip")
        self.caption = widgets.HTML()
        self.plot_box = widgets.VBox()
        self.layer = None
        self.figure = None
        self.plot = None
        self.show_layer(layer_shown(trace, layer))

    def show_layer(self, layer: int | None) -> None:
        """Picture layer `layer` (None: the model-wide encoding of a trace without layer records)."""
        pos = self.trace.positional
        self.layer = layer
        kind = pos.kind if layer is None else pos.layer(layer)["kind"]
        how_kind = {"absolute": pos.kind}.get(kind, kind)
        how = HOW_TO_READ.get(how_kind, "")
        self.figure = positional_figure(self.trace, self.max_size, self.seed, layer)
        thinned = (f" Large arrays are thinned to every k-th row and column (at most {self.max_size} of each)."
                   if self.figure is not None and how_kind in ("learned", "sinusoidal", "rotary") else "")
        title = f"<b>{html.escape(_layer_title(pos, layer))}.</b> " if layer is not None and pos.layers else ""
        self.caption.value = f"<p>{title}{html.escape(how)}{thinned}</p>" if title or how else ""
        self.plot = plotly_output(self.figure) if self.figure is not None else None
        for i, button in enumerate(self.buttons):
            if i == layer:
                button.add_class("ae-selected")
                button.layout.border = "2px solid black"
            else:
                button.remove_class("ae-selected")
                button.layout.border = ""
        self.plot_box.children = [self.plot] if self.plot is not None else []
        strip = [self.strip] if self.buttons else []
        self.children = [self.description, *strip, self.caption, self.plot_box]


def positional(trace: Trace, selection: Selection | None = None, max_size: int = MAX_SIZE,
               layer: int | None = None) -> PositionalView:
    """Pictures of the trace's positional encoding, layer by layer (learned, sinusoidal, rotary of each base, ALiBi
    slopes, NoPE), with a sentence on each."""
    return PositionalView(trace, selection, max_size, layer=layer)
