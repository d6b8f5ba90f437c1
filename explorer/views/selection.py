"""What the user has selected, shared by every view of one explorer: layer, head, token and step."""

from __future__ import annotations

import traitlets


class Selection(traitlets.HasTraits):
    """One selection that several views observe and change; head None means the mean of the layer's heads."""

    layer = traitlets.Int(0)
    head = traitlets.Int(None, allow_none=True)
    token = traitlets.Int(None, allow_none=True)  # a position in the sequence, or None
    step = traitlets.Int(0)  # a generated step, 0-based


class FollowsSelection:
    """Mixin for a widget that observes a Selection: what it observes is let go when the widget is closed,
    so a closed view neither reacts to the selection nor keeps its trace alive through it."""

    def follow(self, selection: Selection, handler, names: list[str]) -> None:
        selection.observe(handler, names)
        self.__dict__.setdefault("_followed", []).append((selection, handler, names))

    def close(self) -> None:
        for selection, handler, names in self.__dict__.pop("_followed", []):
            selection.unobserve(handler, names)
        super().close()


class ClampsLayerHead:
    """Mixin for a widget with `layer` and `head` traits and a `trace`: values sent by the browser are
    clamped to the trace's layers and heads (head None or negative means the mean of the heads)."""

    @traitlets.validate("layer")
    def _valid_layer(self, proposal):
        return min(max(int(proposal["value"]), 0), self.trace.n_layers - 1)

    @traitlets.validate("head")
    def _valid_head(self, proposal):
        v = proposal["value"]
        return None if v is None or v < 0 else min(int(v), self.trace.n_heads - 1)
