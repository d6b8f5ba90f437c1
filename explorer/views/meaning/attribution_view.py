"""Which heads wrote this token: the logit attribution of one step as a grid of layers × heads (and each layer's
MLP), red where a part pushed the token's logit up, blue where it pushed it down.

It follows the shared selection's step (or, for a text read with lens="all", its token); a click on a head selects
that layer and head and calls `on_open(layer, head)` (the explorer opens the heatmap there, at the step's row).
What crosses the wire per step: the grid's float32 values (layers × (heads + 1)), the summary line and the lists of
the parts that pushed most each way.
"""

from __future__ import annotations

from collections.abc import Callable

import anywidget
import numpy as np
import traitlets

from ...trace import Trace
from .. import frontend
from ..selection import FollowsSelection, OpensHeads, Selection

NO_ATTRIBUTION = ('This trace has no logit attribution: it comes with the logit lens (lm.generate(prompt) or '
                  'lm.trace(text, lens="all")).')
PENDING = "The logit attribution is read with the lens: it appears here as soon as it is ready."


class AttributionView(OpensHeads, FollowsSelection, anywidget.AnyWidget):
    """The shares of one step's logit: a layers × heads grid with each layer's MLP beside it."""

    _esm = frontend.module("meaning/attribution.js")
    _css = frontend.stylesheet("meaning/attribution.css")

    message = traitlets.Unicode("").tag(sync=True)  # shown instead of the grid
    n_layers = traitlets.Int(0).tag(sync=True)
    n_heads = traitlets.Int(0).tag(sync=True)
    values = traitlets.Bytes(b"").tag(sync=True)  # float32 [n_layers, n_heads + 1]: the heads, then the MLP
    scale = traitlets.Float(1.0).tag(sync=True)  # the largest |value| of the grid: the colours' full strength
    title = traitlets.Unicode("").tag(sync=True)  # which token, at which step
    summary = traitlets.List(traitlets.List()).tag(sync=True)  # [label, value] of the logit's parts
    ranked = traitlets.List(traitlets.List()).tag(sync=True)  # [label, value, layer, head] pushed most, each way
    layer = traitlets.Int(0).tag(sync=True)  # the selection's layer and head, for the highlight
    head = traitlets.Int(-1).tag(sync=True)

    def __init__(self, trace: Trace, selection: Selection | None = None,
                 on_open: Callable[[int, int], None] | None = None, **kwargs):
        self.trace = trace
        self.selection = selection if selection is not None else Selection()
        self.on_open = on_open
        if trace.attribution is None:
            super().__init__(message=PENDING if trace.lens_pending else NO_ATTRIBUTION, **kwargs)
            return
        shape = trace.attribution.heads.shape
        super().__init__(n_layers=shape[1], n_heads=shape[2], **kwargs)
        self._show()
        self.follow(self.selection, self._show, ["step", "token", "layer", "head"])
        self.on_msg(self._on_msg)

    def position(self) -> int:
        """The position whose next token is shown: the selected step's, or the selected token (a text)."""
        covered = self.trace.attribution.positions
        if self.trace.steps:
            step = min(max(self.selection.step, 0), self.trace.n_generated - 1)
            return self.trace.steps[step].position - 1
        token = self.selection.token
        return int(covered[-1]) if token is None or token not in covered else int(token)

    def _show(self, _change=None) -> None:
        trace = self.trace
        position = self.position()
        try:
            parts = trace.attribution.at(position)
        except IndexError:
            self.values, self.title, self.summary, self.ranked = b"", f"No attribution at position {position}.", [], []
            return
        grid = np.concatenate([parts.heads, parts.mlp[:, None]], axis=1).astype("<f4")
        target = trace.tokens[position + 1]
        step = next((s.index for s in trace.steps if s.position == position + 1), None)
        where = f"step {step}" if step is not None else f"after position {position}"
        heads, mlps = float(parts.heads.sum()), float(parts.mlp.sum())
        rest = float(parts.attention_bias.sum()) + parts.constant
        ranked = sorted(((f"L{l} H{h}", float(parts.heads[l, h]), l, h) for l in range(self.n_layers)
                         for h in range(self.n_heads)), key=lambda item: item[1])
        with self.hold_trait_notifications():
            self.values = grid.tobytes()
            self.scale = float(np.abs(parts.heads).max()) or 1.0  # the heads at full strength; an MLP beyond is clamped
            self.title = f"Which heads wrote “{target}” ({where})"
            self.summary = [["logit", parts.logit], ["embedding", parts.embedding], ["heads", heads],
                            ["MLPs", mlps], ["biases", rest]]
            self.ranked = [[label, value, l, h] for label, value, l, h in ranked[::-1][:5] if value > 0] + \
                [[label, value, l, h] for label, value, l, h in ranked[:5] if value < 0]
            self.layer = min(max(self.selection.layer, 0), self.n_layers - 1)
            self.head = -1 if self.selection.head is None else self.selection.head

    def _on_msg(self, _widget, content, _buffers) -> None:
        self._open_asked(content)

    def __repr__(self) -> str:
        if self.message:
            return "AttributionView(no attribution)"
        return f"AttributionView({self.n_layers} layers x {self.n_heads} heads)"


def attribution(trace: Trace, selection: Selection | None = None,
                on_open: Callable[[int, int], None] | None = None) -> AttributionView:
    """Which heads wrote each step's token: the logit attribution of the selected step as a layers × heads grid."""
    return AttributionView(trace, selection=selection, on_open=on_open)
