"""The contribution graph of the selected step: tokens down the side, layers across, an edge from each token at
each layer into the position that produced the step, as wide as the share of the logit it carried (red up, blue
down), the residual stream along that position's row. A threshold slider keeps the strongest edges; drawn on a
canvas, so 512 tokens × 30 layers draw at once. What crosses the wire per step: the edges as float32 bytes."""

from __future__ import annotations

import anywidget
import traitlets

from ...trace import Trace
from .. import frontend
from ..selection import FollowsSelection, Selection
from .attribution_view import NO_ATTRIBUTION, PENDING


class ContributionView(FollowsSelection, anywidget.AnyWidget):
    """One step's contribution graph (explorer/contribution.py) on a canvas, with a threshold slider."""

    _esm = frontend.module("meaning/contribution.js")
    _css = frontend.stylesheet("meaning/contribution.css")

    message = traitlets.Unicode("").tag(sync=True)
    n_layers = traitlets.Int(0).tag(sync=True)
    n_tokens = traitlets.Int(0).tag(sync=True)  # the position's tokens: 0..position
    edges = traitlets.Bytes(b"").tag(sync=True)  # float32 [n_layers, n_tokens]
    residual = traitlets.Bytes(b"").tag(sync=True)  # float32 [n_layers + 1]
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)
    threshold = traitlets.Float(0.1).tag(sync=True)  # edges below this share of the strongest are not drawn

    def __init__(self, trace: Trace, selection: Selection | None = None, **kwargs):
        self.trace = trace
        self.selection = selection if selection is not None else Selection()
        if trace.attribution is None:
            super().__init__(message=PENDING if trace.lens_pending else NO_ATTRIBUTION, **kwargs)
            return
        super().__init__(n_layers=trace.attribution.heads.shape[1], **kwargs)
        self._show()
        self.follow(self.selection, self._show, ["step", "token"])

    def _show(self, _change=None) -> None:
        trace = self.trace
        if trace.steps:
            step = min(max(self.selection.step, 0), trace.n_generated - 1)
            graph, where = trace.contribution_graph(step), f"step {step}"
        else:
            token = self.selection.token
            covered = trace.attribution.positions
            position = int(covered[-1]) if token is None or token not in covered else int(token)
            graph, where = trace.contribution_graph(position=position), f"after position {position}"
        target = trace.tokens[graph.position + 1]
        split = "value-weighted attention" if graph.weighted else "attention (no value norms)"
        with self.hold_trait_notifications():
            self.n_tokens = graph.position + 1
            self.tokens = list(trace.tokens[: graph.position + 1])
            self.edges = graph.edges.astype("<f4").tobytes()
            self.residual = graph.residual.astype("<f4").tobytes()
            self.title = (f"What carried “{target}” ({where}): logit {graph.logit:.3g}; each head's share split "
                          f"over its sources by {split}")

    def __repr__(self) -> str:
        return "ContributionView(no attribution)" if self.message else \
            f"ContributionView({self.n_layers} layers x {self.n_tokens} tokens)"


def contribution(trace: Trace, selection: Selection | None = None) -> ContributionView:
    """The contribution graph of the selected step: which tokens, through which layers, carried its logit."""
    return ContributionView(trace, selection=selection)
