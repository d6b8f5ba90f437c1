"""The attention heatmap: one head (or a layer's mean) as a canvas, a readable window beside a whole-head overview.

What crosses the wire (binary buffers, not JSON):
- on a layer, head or scale change: `overview`, the whole T×T head max-pooled to at most 256×256, one uint8 a cell,
  plus the window below;
- on a window move: `window`, the window_size² weights of the window as uint8 colours, and `window_exact`, the same
  weights as float32 (4 bytes each) so the tooltip shows the true weight.
So a head switch at 2,048 tokens with a 64-token window sends 64 KB + 20 KB, not T² = 4 MB.
"""

from __future__ import annotations

from collections import OrderedDict

import anywidget
import numpy as np
import traitlets

from . import attention_data as ad
from . import frontend
from .selection import ClampsLayerHead, FollowsSelection, Selection
from .tokens_html import visible

OVERVIEW_CELLS = 256  # the overview is max-pooled down to at most this many cells a side
WINDOW_SIZES = (16, 32, 64, 128, 256)


class HeatmapView(FollowsSelection, ClampsLayerHead, anywidget.AnyWidget):
    """Canvas heatmap of one head's attention with a token window, an overview, a log scale and a legend."""

    _esm = frontend.module("heatmap.js")

    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)  # every token, whitespace made visible; sent once
    n_prompt = traitlets.Int(0).tag(sync=True)
    n_layers = traitlets.Int(1).tag(sync=True)
    n_heads = traitlets.Int(1).tag(sync=True)
    layer = traitlets.Int(0).tag(sync=True)
    head = traitlets.Int(None, allow_none=True).tag(sync=True)  # None: the mean of the layer's heads
    log_scale = traitlets.Bool(False).tag(sync=True)
    log_decades = traitlets.Float(4.0).tag(sync=True)  # the log scale spans this many decades below `scale`
    window_start = traitlets.Int(0).tag(sync=True)  # first query row of the window
    key_start = traitlets.Int(0).tag(sync=True)  # first key column of the window
    window_size = traitlets.Int(64).tag(sync=True)
    scale = traitlets.Float(1.0).tag(sync=True)  # the weight drawn as colour 255: the head's largest weight
    overview = traitlets.Bytes(b"").tag(sync=True)  # uint8 [overview_n, overview_n]
    overview_n = traitlets.Int(0).tag(sync=True)
    overview_factor = traitlets.Int(1).tag(sync=True)  # tokens per overview cell, a side
    window = traitlets.Bytes(b"").tag(sync=True)  # uint8 [window_rows, window_cols]
    window_exact = traitlets.Bytes(b"").tag(sync=True)  # float32 little-endian, same cells
    window_rows = traitlets.Int(0).tag(sync=True)
    window_cols = traitlets.Int(0).tag(sync=True)
    # [window_start, key_start] the window bytes are of: set with them, so a move reaches the browser and redraws
    # its labels and overview even when the new window's bytes equal the old one's
    window_at = traitlets.List(traitlets.Int(), [0, 0]).tag(sync=True)
    selected_token = traitlets.Int(None, allow_none=True).tag(sync=True)
    shows = traitlets.Unicode("").tag(sync=True)  # "layer head" the bytes above are of (head "mean"), for tests

    def __init__(self, trace, selection: Selection | None = None, window_size: int = 64, log_scale: bool = False,
                 **kwargs):
        self.trace = trace
        self.selection = selection if selection is not None else Selection()
        self._pooled: OrderedDict[tuple, np.ndarray] = OrderedDict()  # (layer, head) -> pooled float32, a few kept
        super().__init__(
            tokens=[visible(t) for t in trace.tokens], n_prompt=trace.n_prompt, n_layers=trace.n_layers,
            n_heads=trace.n_heads, window_size=window_size, log_scale=log_scale, **kwargs,
        )
        self._follow_selection()
        self.follow(self.selection, self._follow_selection, ["layer", "head", "token"])
        self.observe(self._update_selection, ["layer", "head", "selected_token"])
        self._sent: tuple | None = None  # the state the bytes were last computed for
        self.observe(self._refresh, ["layer", "head", "log_scale", "log_decades", "window_start", "key_start",
                                     "window_size"])
        self.observe(self._follow_token, "selected_token")
        self.on_msg(self._on_msg)
        self._refresh()

    # --- the shared selection, layer and head changed together so a new pair is computed once, not in two steps
    def _follow_selection(self, _change=None) -> None:
        sel = self.selection
        with self.hold_trait_notifications():
            self.layer, self.head, self.selected_token = sel.layer, sel.head, sel.token

    def _update_selection(self, _change=None) -> None:
        with self.selection.hold_trait_notifications():
            self.selection.layer, self.selection.head, self.selection.token = self.layer, self.head, self.selected_token

    # --- traits kept in range (the browser may send anything)
    @traitlets.observe("window_size")
    def _reclamp_window(self, _change) -> None:
        # a larger window near the end must move back so it still shows window_size rows
        self.window_start, self.key_start = self.window_start, self.key_start  # re-validated, so clamped

    @traitlets.validate("window_size")
    def _valid_size(self, proposal):
        return int(np.clip(proposal["value"], 1, max(1, self.trace.n_tokens)))

    @traitlets.validate("window_start", "key_start")
    def _valid_start(self, proposal):
        return int(np.clip(proposal["value"], 0, max(0, self.trace.n_tokens - self.window_size)))

    @traitlets.validate("selected_token")
    def _valid_token(self, proposal):
        v = proposal["value"]
        return None if v is None or not 0 <= v < self.trace.n_tokens else int(v)

    # --- data
    @property
    def factor(self) -> int:
        return ad.pool_factor(self.trace.n_tokens, OVERVIEW_CELLS)

    def pooled(self) -> np.ndarray:
        """The current head max-pooled for the overview (float32), cached for the last few heads."""
        key = (self.layer, self.head)
        if key not in self._pooled:
            self._pooled[key] = ad.pooled_head(self.trace, self.layer, self.head, self.factor)
            while len(self._pooled) > 8:
                self._pooled.popitem(last=False)
        self._pooled.move_to_end(key)
        return self._pooled[key]

    def window_weights(self) -> np.ndarray:
        """The float32 weights of the current window [rows, cols]."""
        return ad.window(self.trace, self.layer, self.head, self.window_start, self.key_start, self.window_size)

    def quantise(self, weights: np.ndarray) -> np.ndarray:
        return ad.quantise(weights, self.scale, self.log_decades if self.log_scale else None)

    def _refresh(self, _change=None) -> None:
        """Recompute what changed and send it in one message (several traits set at once: only once)."""
        head_state = (self.layer, self.head, self.log_scale, self.log_decades)
        state = (*head_state, self.window_start, self.key_start, self.window_size)
        if state == self._sent:
            return
        whole, self._sent = self._sent is None or self._sent[:4] != head_state, state
        with self.hold_sync():
            if whole:
                pooled = self.pooled()
                self.scale = float(pooled.max()) or 1.0
                self.overview_factor = self.factor
                self.overview_n = pooled.shape[0]
                self.overview = self.quantise(pooled).tobytes()
            w = self.window_weights()
            self.shows = f"{self.layer} {'mean' if self.head is None else self.head}"
            self.window_rows, self.window_cols = w.shape
            self.window_at = [self.window_start, self.key_start]
            self.window = self.quantise(w).tobytes()
            self.window_exact = w.astype("<f4").tobytes()

    def _follow_token(self, change) -> None:
        """Bring a newly selected token into the window if it is outside."""
        t = change["new"]
        if t is None:
            return
        if not self.window_start <= t < self.window_start + self.window_size:
            with self.hold_trait_notifications():
                self.window_start = t - self.window_size // 2
                self.key_start = self.window_start

    def _on_msg(self, _widget, content, _buffers) -> None:
        """The browser asks for the exact largest weight under one overview cell (the tooltip's value)."""
        if not isinstance(content, dict) or content.get("kind") != "block":
            return
        f, t = self.factor, self.trace.n_tokens
        row, col = int(content["row"]), int(content["col"])
        if not (0 <= row * f < t and 0 <= col * f < t):
            return
        rows = self.trace.attention_rows(self.layer, self.head, row * f, min(t, (row + 1) * f))[:, col * f : (col + 1) * f]
        i, j = np.unravel_index(int(np.argmax(rows)), rows.shape)
        self.send({"kind": "block", "row": row, "col": col, "layer": self.layer, "head": self.head,
                   "weight": float(rows[i, j]), "query": row * f + int(i), "key": col * f + int(j)})

    def __repr__(self) -> str:
        return f"HeatmapView(layer={self.layer}, head={self.head}, window={self.window_start}+{self.window_size})"


def heatmap(trace, layer: int | None = None, head: int | None = None, selection: Selection | None = None,
            window_size: int = 64, log_scale: bool = False) -> HeatmapView:
    """Attention of one head (head=None: the layer's mean) as a canvas heatmap.

    With a shared `selection`, the view opens at the selection's layer and head unless `layer`/`head` are given.
    """
    selection = selection if selection is not None else Selection()
    if layer is not None:
        selection.layer = layer
    if head is not None:
        selection.head = head
    return HeatmapView(trace, selection=selection, window_size=window_size, log_scale=log_scale)
