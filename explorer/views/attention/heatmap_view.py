"""The attention heatmap: one head (or a layer's mean) as a canvas, a readable window beside a whole-head overview.

What crosses the wire (binary buffers, not JSON):
- on a layer, head or scale change: `overview`, the whole T×T head max-pooled to at most 256×256, one uint8 a cell,
  plus the window below;
- on a window move: `window`, the window_size² weights of the window as uint8 colours, and `window_exact`, the same
  weights as float32 (4 bytes each) so the tooltip shows the true weight.
So a head switch at 2,048 tokens with a 64-token window sends 64 KB + 20 KB, not T² = 4 MB.

`kind` picks what is drawn: "raw" attention weights α; "norm", value-weighted attention α_ij·‖v_j W_O‖ (Kobayashi
et al. 2020; traces captured with value norms), not probabilities, so colours scale to the head's largest value as
for α; "rollout", attention rollout through all layers (Abnar & Zuidema 2020), one T×T matrix for the whole model,
computed once (~7 s at 2,048 tokens) and kept; layer and head do not apply to it; "no_position", the head with its
positional term taken out (rotary undone with the layer's own cos/sin, ALiBi's bias divided out: exact, from the
stored queries and keys, see Trace.attention_rows), and "position_effect", raw − no_position, what position adds
to each weight, drawn on a diverging scale (`signed`) around 0. For these two, `window_raw` sends the raw weights
of the window too, so the tooltip shows both numbers. A layer that cannot give them (positions added at the input)
leaves the view as it was drawn, with the trace's sentence in `problem`.

Under the heatmap, the selected head's attention by distance (`profile`, float32 [2, D+1]: mean α[i, i−d] for
d = 0..D over rows, raw then no_position, NaN where the layer has none; the first position apart in
`profile_first`), from Trace.distance_profile, sent after the heatmap on a layer or head change. For a layer with
learned sinks (GPT-OSS), `window_sink` / `window_sink_exact` give each window row's share on the sink, drawn as
one more column.
"""

from __future__ import annotations

from collections import OrderedDict

import anywidget
import numpy as np
import traitlets

from ... import analysis
from . import attention_data as ad
from .. import frontend
from ..selection import ClampsLayerHead, FollowsSelection, Selection
from ..frontend.tokens_html import visible

OVERVIEW_CELLS = 256  # the overview is max-pooled down to at most this many cells a side
WINDOW_SIZES = (16, 32, 64, 128, 256)
KINDS = ("raw", "norm", "no_position", "position_effect", "rollout")
PROFILE_DISTANCE = 64  # the distance profile's largest distance i − j


def kinds_of(trace) -> list[str]:
    """What a heatmap of `trace` can draw: raw attention, value-weighted attention if it has value norms, the head
    with its positional term taken out and the difference position makes if some layer has one, rollout."""
    kinds = list(trace.kinds)
    if "no_position" in kinds:
        kinds.insert(kinds.index("no_position") + 1, "position_effect")
    return [*kinds, "rollout"]


class HeatmapView(FollowsSelection, ClampsLayerHead, anywidget.AnyWidget):
    """Canvas heatmap of one head's attention with a token window, an overview, a log scale and a legend."""

    _esm = frontend.module("attention/heatmap.js")

    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)  # every token, whitespace made visible; sent once
    n_prompt = traitlets.Int(0).tag(sync=True)
    n_layers = traitlets.Int(1).tag(sync=True)
    n_heads = traitlets.Int(1).tag(sync=True)
    layer = traitlets.Int(0).tag(sync=True)
    head = traitlets.Int(None, allow_none=True).tag(sync=True)  # None: the mean of the layer's heads
    kind = traitlets.Unicode("raw").tag(sync=True)  # "raw", "norm", "no_position", "position_effect" or "rollout"
    kinds = traitlets.List(traitlets.Unicode()).tag(sync=True)  # the kinds this trace has
    busy = traitlets.Unicode("").tag(sync=True)  # what is being computed, while it is (the rollout)
    problem = traitlets.Unicode("").tag(sync=True)  # why the kind asked for cannot be drawn here (the view keeps
    # what it drew): a layer with no positional term of its own has no "no_position"
    signed = traitlets.Bool(False).tag(sync=True)  # the bytes are of a difference: diverging colours around 0
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
    window_raw = traitlets.Bytes(b"").tag(sync=True)  # float32, the raw weights of the same cells (no_position and
    # position_effect only: the tooltip shows both numbers); empty otherwise
    window_sink = traitlets.Bytes(b"").tag(sync=True)  # uint8 [window_rows]: each row's share on the learned sink
    window_sink_exact = traitlets.Bytes(b"").tag(sync=True)  # float32, the same; both empty without sinks
    profile = traitlets.Bytes(b"").tag(sync=True)  # float32 [2, profile_n]: weight by distance, raw, no_position
    profile_n = traitlets.Int(0).tag(sync=True)
    profile_first = traitlets.List(traitlets.Float(allow_none=True), [None, None]).tag(sync=True)  # on position 0
    profile_of = traitlets.Unicode("").tag(sync=True)  # "layer head" the profile is of; "" for none (mean of heads)
    window_rows = traitlets.Int(0).tag(sync=True)
    window_cols = traitlets.Int(0).tag(sync=True)
    # [window_start, key_start] the window bytes are of: set with them, so a move reaches the browser and redraws
    # its labels and overview even when the new window's bytes equal the old one's
    window_at = traitlets.List(traitlets.Int(), [0, 0]).tag(sync=True)
    selected_token = traitlets.Int(None, allow_none=True).tag(sync=True)
    # what the bytes above are of, for tests: "layer head" (head "mean"), "layer head norm", or "rollout"
    shows = traitlets.Unicode("").tag(sync=True)

    def __init__(self, trace, selection: Selection | None = None, window_size: int = 64, log_scale: bool = False,
                 kind: str = "raw", **kwargs):
        self.trace = trace
        self.selection = selection if selection is not None else Selection()
        self._pooled: OrderedDict[tuple, np.ndarray] = OrderedDict()  # source() -> pooled float32, a few kept
        self._flow: np.ndarray | None = None  # the rollout, once computed
        super().__init__(
            tokens=[visible(t) for t in trace.tokens], n_prompt=trace.n_prompt, n_layers=trace.n_layers,
            n_heads=trace.n_heads, window_size=window_size, log_scale=log_scale, kinds=kinds_of(trace), kind=kind,
            **kwargs,
        )
        self._follow_selection()
        self.follow(self.selection, self._follow_selection, ["layer", "head", "token"])
        self.observe(self._update_selection, ["layer", "head", "selected_token"])
        self._sent: tuple | None = None  # the state the bytes were last computed for
        self.observe(self._refresh, ["layer", "head", "kind", "log_scale", "log_decades", "window_start", "key_start",
                                     "window_size"])
        self.observe(self._follow_token, "selected_token")
        self._profiled: tuple | None = None
        self.observe(self._refresh_profile, ["layer", "head"])
        self.on_msg(self._on_msg)
        self._refresh()
        self._refresh_profile()

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

    @traitlets.validate("kind")
    def _valid_kind(self, proposal):
        """A kind the trace does not have (value-weighted without value norms) falls back to raw attention."""
        return proposal["value"] if proposal["value"] in kinds_of(self.trace) else "raw"

    @traitlets.validate("selected_token")
    def _valid_token(self, proposal):
        v = proposal["value"]
        return None if v is None or not 0 <= v < self.trace.n_tokens else int(v)

    # --- data
    @property
    def factor(self) -> int:
        return ad.pool_factor(self.trace.n_tokens, OVERVIEW_CELLS)

    def source(self) -> tuple:
        """What the view draws, as a cache key: ("rollout",), or (kind, layer, head)."""
        return ("rollout",) if self.kind == "rollout" else (self.kind, self.layer, self.head)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 of what the view draws, float32 [n, T]: the head's attention of `kind`, raw − no_position
        for "position_effect", or the rollout. ValueError where the layer has no positional term to take out."""
        if self.kind == "rollout":
            return self.flow()[start:stop]
        if self.kind == "position_effect":
            return (self.trace.attention_rows(self.layer, self.head, start, stop)
                    - self.trace.attention_rows(self.layer, self.head, start, stop, kind="no_position"))
        return self.trace.attention_rows(self.layer, self.head, start, stop, kind=self.kind)

    @property
    def is_signed(self) -> bool:
        return self.kind == "position_effect"

    def sink_shares(self, start: int, stop: int) -> np.ndarray | None:
        """Each row's share on the layer's learned sink, for the kind drawn (raw, no_position, or their difference;
        the mean over heads for head None), float32 [stop-start]; None without sinks or for other kinds."""
        layer = self.trace.layers[self.layer]
        if getattr(layer, "sinks", None) is None or self.kind not in ("raw", "no_position", "position_effect"):
            return None
        heads = range(self.trace.n_heads) if self.head is None else [self.head]

        def share(store):
            return np.mean([store.sink_share(h, start, stop) for h in heads], axis=0).astype(np.float32)

        raw = share(layer) if self.kind != "no_position" else None
        if self.kind == "raw":
            return raw
        free = share(self.trace._without_position(self.layer))
        return free if raw is None else raw - free

    def flow(self) -> np.ndarray:
        """The attention rollout [T, T], computed once (saying how far it is in `busy`) and kept."""
        if self._flow is None:
            n = self.trace.n_layers
            self.busy = f"computing the rollout of {n} layers…"
            try:
                self._flow = analysis.rollout(self.trace, on_layer=lambda layer: setattr(
                    self, "busy", f"computing the rollout: layer {layer + 1} of {n}…"))
            finally:
                self.busy = ""
        return self._flow

    def pooled(self) -> np.ndarray:
        """What the view draws, max-pooled for the overview (float32), cached for the last few heads."""
        key = self.source()
        if key not in self._pooled:
            pool = ad.max_abs_pool if self.is_signed else ad.max_pool
            self._pooled[key] = ad.pooled(self.rows, self.trace.n_tokens, self.factor, pool)
            while len(self._pooled) > 8:
                self._pooled.popitem(last=False)
        self._pooled.move_to_end(key)
        return self._pooled[key]

    def window_weights(self) -> np.ndarray:
        """The float32 weights of the current window [rows, cols]."""
        return ad.window_of(self.rows, self.trace.n_tokens, self.window_start, self.key_start, self.window_size)

    def quantise(self, weights: np.ndarray) -> np.ndarray:
        decades = self.log_decades if self.log_scale else None
        return (ad.quantise_signed if self.is_signed else ad.quantise)(weights, self.scale, decades)

    def describe(self) -> str:
        """What the view draws, for `shows`: "layer head" (head "mean"), "layer head KIND" for the other kinds
        (norm, no_position, position_effect), or "rollout"."""
        if self.kind == "rollout":
            return "rollout"
        head = "mean" if self.head is None else self.head
        return f"{self.layer} {head}" + ("" if self.kind == "raw" else f" {self.kind}")

    def _refresh(self, _change=None) -> None:
        """Recompute what changed and send it in one message (several traits set at once: only once)."""
        head_state = (*self.source(), self.log_scale, self.log_decades)
        state = (head_state, (self.window_start, self.key_start, self.window_size))
        if state == self._sent:
            return
        whole = self._sent is None or self._sent[0] != head_state
        try:  # computed before hold_sync: the rollout's progress goes out now
            pooled = self.pooled() if whole else None
            w = self.window_weights()
            sink = self.sink_shares(self.window_start, self.window_start + w.shape[0])
            raw = (self.trace.attention_rows(self.layer, self.head, self.window_start, self.window_start + w.shape[0])
                   [:, self.key_start : self.key_start + w.shape[1]] if self.kind in ("no_position", "position_effect")
                   else None)
        except ValueError as e:  # this layer cannot give the kind: say why, keep what is drawn (and retry on change)
            self.problem = str(e)
            return
        self._sent = state
        with self.hold_sync():
            self.problem = ""
            if whole:
                peak = float(np.abs(pooled).max() if self.is_signed else pooled.max())
                self.scale = peak or 1.0
                self.signed = self.is_signed
                self.overview_factor = self.factor
                self.overview_n = pooled.shape[0]
                self.overview = self.quantise(pooled).tobytes()
            self.shows = self.describe()
            self.window_raw = b"" if raw is None else np.ascontiguousarray(raw, dtype="<f4").tobytes()
            self.window_sink = b"" if sink is None else self.quantise(sink).tobytes()
            self.window_sink_exact = b"" if sink is None else sink.astype("<f4").tobytes()
            self.window_rows, self.window_cols = w.shape
            self.window_at = [self.window_start, self.key_start]
            self.window = self.quantise(w).tobytes()
            self.window_exact = w.astype("<f4").tobytes()

    def distance_profiles(self) -> tuple[np.ndarray, list] | None:
        """The selected head's distance profile, raw and no_position (NaN where the layer has none): float32
        [2, D+1] and the two weights on the first position; None for the mean of heads."""
        if self.head is None:
            return None
        raw = self.trace.distance_profile(self.layer, self.head, PROFILE_DISTANCE)
        out = np.full((2, len(raw["weight"])), np.nan, dtype=np.float32)
        out[0] = raw["weight"]
        first = [float(raw["first_token"]), None]
        if "no_position" in self.trace.kinds:
            try:
                free = self.trace.distance_profile(self.layer, self.head, PROFILE_DISTANCE, kind="no_position")
                out[1], first[1] = free["weight"], float(free["first_token"])
            except ValueError:
                pass  # a layer with no positional term of its own: the raw line only
        return out, first

    def _refresh_profile(self, _change=None) -> None:
        """Send the distance profile of the head now selected (after the heatmap, so it does not delay it)."""
        key = (self.layer, self.head)
        if key == self._profiled:
            return
        self._profiled = key
        got = self.distance_profiles()
        with self.hold_sync():
            if got is None:
                self.profile, self.profile_n, self.profile_first, self.profile_of = b"", 0, [None, None], ""
                return
            profile, first = got
            self.profile_n = profile.shape[1]
            self.profile_first = first
            self.profile = profile.astype("<f4").tobytes()
            self.profile_of = f"{self.layer} {self.head}"

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
        try:
            rows = self.rows(row * f, min(t, (row + 1) * f))[:, col * f : (col + 1) * f]
        except ValueError:  # the kind asked for has no meaning in this layer (`problem` says why)
            return
        i, j = np.unravel_index(int(np.argmax(np.abs(rows) if self.is_signed else rows)), rows.shape)
        self.send({"kind": "block", "row": row, "col": col, "layer": self.layer, "head": self.head, "of": self.kind,
                   "weight": float(rows[i, j]), "query": row * f + int(i), "key": col * f + int(j)})

    def __repr__(self) -> str:
        return (f"HeatmapView(layer={self.layer}, head={self.head}, kind={self.kind!r}, "
                f"window={self.window_start}+{self.window_size})")


def heatmap(trace, layer: int | None = None, head: int | None = None, selection: Selection | None = None,
            window_size: int = 64, log_scale: bool = False, kind: str = "raw") -> HeatmapView:
    """Attention of one head (head=None: the layer's mean) as a canvas heatmap.

    kind: "raw" weights, "norm" value-weighted (traces with value norms), "no_position" (the positional term taken
    out), "position_effect" (raw − no_position) or "rollout" (all layers; layer and head do not apply). With a shared `selection`, the view opens at the selection's layer and head unless `layer`/`head`
    are given.
    """
    if kind not in kinds_of(trace):
        why = ": this trace has no value norms, so no value-weighted attention" if kind == "norm" else ""
        raise ValueError(f"kind must be one of {kinds_of(trace)}, not {kind!r}{why}")
    selection = selection if selection is not None else Selection()
    if layer is not None:
        selection.layer = layer
    if head is not None:
        selection.head = head
    return HeatmapView(trace, selection=selection, window_size=window_size, log_scale=log_scale, kind=kind)
