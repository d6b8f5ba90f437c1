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


class OpensHeads:
    """Mixin for a view of a trace's heads with `n_layers`, `n_heads`, `selection` and `on_open`: a click in the page
    sends {"kind": "open", "layer", "head"}; the head is selected and `on_open(layer, head)` called (the explorer
    shows it in the heatmap)."""

    def open_head(self, layer: int, head: int) -> None:
        """Select head `head` of layer `layer` in the shared selection, then call on_open."""
        if not (0 <= layer < self.n_layers and 0 <= head < self.n_heads):
            return
        with self.selection.hold_trait_notifications():
            self.selection.layer, self.selection.head = layer, head
        if self.on_open is not None:
            self.on_open(layer, head)

    def _open_asked(self, content) -> None:
        """Open the head a page's message names, if it is an "open" message with whole numbers."""
        if isinstance(content, dict) and content.get("kind") == "open":
            try:
                layer, head = int(content["layer"]), int(content["head"])
            except (KeyError, TypeError, ValueError):
                return
            self.open_head(layer, head)


def clamp_layer(trace, layer: int) -> int:
    """`layer` brought into the trace's layers."""
    return min(max(int(layer), 0), trace.n_layers - 1)


def clamp_head(trace, head: int | None) -> int | None:
    """`head` brought into the trace's heads; None or a negative head means the mean of the heads (None)."""
    return None if head is None or head < 0 else min(int(head), trace.n_heads - 1)


class ClampsLayerHead:
    """Mixin for a widget with `layer` and `head` traits and a `trace`: values sent by the browser are
    clamped to the trace's layers and heads (head None or negative means the mean of the heads)."""

    @traitlets.validate("layer")
    def _valid_layer(self, proposal):
        return clamp_layer(self.trace, proposal["value"])

    @traitlets.validate("head")
    def _valid_head(self, proposal):
        return clamp_head(self.trace, proposal["value"])
