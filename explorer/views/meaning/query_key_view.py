"""Queries and keys of one head in one picture (AttentionViz): a WebGL scatter of both, projected together to 2-D by
PCA after the keys are scaled and moved so that nearness follows the dot product (Trace.query_key_map; the head's
attention is unchanged by both). Queries are dots, keys open diamonds; colour by position or by token; hover for the
token and its position. Layer and head pickers follow the explorer's selection and set it.

A head is one static plotly figure (drawn by plotly's own renderer, which the page loads once): 2 × T points, their
positions and token labels, about 100 KB at 2,048 tokens.
"""

from __future__ import annotations

import html

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

from ...errors import ExplorerError
from ...trace import Trace
from ..frontend.tokens_html import label
from ..positions.positional_view import plotly_output
from ..selection import FollowsSelection, Selection, clamp_head, clamp_layer

COLOUR_BY = ("position", "token")
TOKEN_COLOURS = qualitative.Dark24  # one colour a distinct token, in order of first appearance, cycling
ABOUT = ("<b>Queries and keys of one head</b> (AttentionViz): each position's query (dot) and key (open diamond), "
         "projected together to 2-D by PCA. The keys are scaled and moved first so that a query lies near the keys "
         "it gives a high dot product, which changes none of the head's attention. Hover a point for its token.")


def token_colours(token_ids: list[int]) -> list[str]:
    """A colour a distinct token id, the same for every occurrence (ids in order of first appearance, cycling)."""
    order: dict[int, int] = {}
    return [TOKEN_COLOURS[order.setdefault(i, len(order)) % len(TOKEN_COLOURS)] for i in token_ids]


def query_key_figure(trace: Trace, layer: int, head: int, colour_by: str = "position") -> go.Figure:
    """The plotly figure of a head's queries and keys (see the module); SelectionError for a layer or head the trace
    lacks, MissingDataError for a layer kept as weights, ValueError for an unknown `colour_by`."""
    if colour_by not in COLOUR_BY:
        raise ValueError(f"colour_by must be one of {COLOUR_BY}, not {colour_by!r}")
    qk = trace.query_key_map(layer, head)
    n = trace.n_tokens
    positions = np.arange(n)
    labels = [label(t, max_chars=60) for t in trace.tokens]
    if colour_by == "position":
        colours = {"color": positions, "colorscale": "Viridis", "cmin": 0, "cmax": max(n - 1, 1)}
    else:
        colours = {"color": token_colours(trace.token_ids)}
    fig = go.Figure()
    for name, points, symbol in (("queries", qk.queries, "circle"), ("keys", qk.keys, "diamond-open")):
        marker = {"size": 6 if symbol == "circle" else 7, "symbol": symbol, "opacity": 0.8, **colours}
        if name == "queries" and colour_by == "position":
            marker["colorbar"] = {"title": {"text": "position"}, "thickness": 12}
        fig.add_trace(go.Scattergl(
            x=points[:, 0], y=points[:, 1], mode="markers", name=name, marker=marker, customdata=positions,
            text=labels, hovertemplate=f"{name[:-1] if name == 'keys' else 'query'} #%{{customdata}} “%{{text}}”"
                                       "<extra></extra>"))
    moved = "keys scaled and moved" if qk.moved else "keys scaled only (a soft-cap or sinks: a move would change it)"
    fig.update_layout(
        title={"text": f"layer {qk.layer}, head {qk.head}: PCA axes {qk.explained[0]:.0%} and {qk.explained[1]:.0%} "
                       f"of the variance; {moved}", "font": {"size": 13}},
        height=560, autosize=True, margin={"l": 50, "r": 20, "t": 50, "b": 40}, template="plotly_white",
        hovermode="closest", legend={"orientation": "h", "y": -0.08},
        xaxis={"title": {"text": "PC 1"}, "zeroline": False},
        yaxis={"title": {"text": "PC 2"}, "zeroline": False, "scaleanchor": "x", "scaleratio": 1},  # honest distances
    )
    return fig


class QueryKeyView(FollowsSelection, widgets.VBox):
    """A head's queries and keys in one scatter, with layer and head pickers (following and setting the selection;
    the mean of heads shows head 0) and colour by position or token."""

    def __init__(self, trace: Trace, selection: Selection | None = None, layer: int | None = None,
                 head: int | None = None, colour_by: str = "position"):
        super().__init__()
        self.add_class("query-key-view")
        self.trace = trace
        self.selection = selection if selection is not None else Selection()
        sel = self.selection
        layer = clamp_layer(trace, sel.layer) if layer is None else layer
        head = (clamp_head(trace, sel.head) or 0) if head is None else head
        self.layer = widgets.Dropdown(options=list(range(trace.n_layers)), description="layer",
                                      layout=widgets.Layout(width="150px"))
        self.head = widgets.Dropdown(options=list(range(trace.n_heads)), description="head",
                                     layout=widgets.Layout(width="150px"))
        self.layer.add_class("qk-layer")
        self.head.add_class("qk-head")
        self.colour = widgets.ToggleButtons(options=COLOUR_BY, value=colour_by, style={"button_width": "80px"})
        self.colour.add_class("qk-colour-by")
        self.problem = widgets.HTML()
        self.plot_box = widgets.VBox()
        self.figure: go.Figure | None = None
        self.children = [widgets.HTML(f"<p>{ABOUT}</p>"), widgets.HBox([self.layer, self.head, widgets.Label("colour by"),
                                                                   self.colour]),
                         self.problem, self.plot_box]
        self._following = False
        self.show(layer, head, colour_by)
        self.layer.observe(self._on_picker, "value")
        self.head.observe(self._on_picker, "value")
        self.colour.observe(lambda _: self.show(self.layer.value, self.head.value, self.colour.value), "value")
        self.follow(sel, self._on_selection, ["layer", "head"])

    def show(self, layer: int, head: int, colour_by: str | None = None) -> None:
        """Draw head `head` of layer `layer` (SelectionError for one the trace lacks); a layer without queries and
        keys says so instead."""
        colour_by = colour_by or self.colour.value
        try:
            figure = query_key_figure(self.trace, layer, head, colour_by)
        except ExplorerError as e:
            if isinstance(e, IndexError):
                raise
            figure, self.problem.value = None, f"<p class='ae-error'>{html.escape(str(e))}</p>"
        else:
            self.problem.value = ""
        self._following = True
        try:
            self.layer.value, self.head.value, self.colour.value = int(layer), int(head), colour_by
        finally:
            self._following = False
        self.figure = figure
        old = self.plot_box.children
        self.plot_box.children = [plotly_output(figure)] if figure is not None else []
        for child in old:
            child.close()

    def _on_picker(self, _change) -> None:
        if self._following:
            return
        with self.selection.hold_trait_notifications():  # one new (layer, head) pair for the other views
            self.selection.layer, self.selection.head = self.layer.value, self.head.value
        self.show(self.layer.value, self.head.value)

    def _on_selection(self, _change) -> None:
        layer = clamp_layer(self.trace, self.selection.layer)
        head = clamp_head(self.trace, self.selection.head) or 0
        if (layer, head) != (self.layer.value, self.head.value):
            self.show(layer, head)

    def __repr__(self) -> str:
        return f"QueryKeyView(layer {self.layer.value}, head {self.head.value})"


def query_key(trace: Trace, selection: Selection | None = None, layer: int | None = None, head: int | None = None,
              colour_by: str = "position") -> QueryKeyView:
    """A head's queries and keys in one scatter (AttentionViz), with layer and head pickers."""
    return QueryKeyView(trace, selection, layer=layer, head=head, colour_by=colour_by)
