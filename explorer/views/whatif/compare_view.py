"""Two traces side by side: A's and B's attention over their matched positions, A − B, and both traces' choices.

The alignment (explorer/alignment.py) pairs positions; the heatmaps show only matched positions, rows and columns.
What crosses the wire: `window`, float32 [3, rows, cols] (A, B, A − B) of a window of matched positions (the whole
matrix while it fits, `window_size` a side), sent again on a layer, head or window change; the colour scales
(`scale` for A and B together, `dscale` for the difference, both over all matched positions, so moving the
window keeps the colours); the steps' tokens and probabilities once.
"""

from __future__ import annotations

import anywidget
import numpy as np
import traitlets

from ...alignment import Difference, HeadsCompared, align, counterpart, difference, step_pairs
from .. import frontend
from ..selection import clamp_head, clamp_layer
from ..frontend.tokens_html import visible

WINDOW_SIZES = (32, 64, 96, 128, 192, 256)


def describe(trace, label: str) -> str:
    """One line about a trace: its model, its prompt and what it wrote, its sizes."""
    def cut(text: str, n: int) -> str:
        text = visible(text)
        return text if len(text) <= n else text[: n - 1] + "…"

    wrote = f" → “{cut(trace.generated_text, 40)}”" if trace.n_generated else ""
    return (f"{label}: {trace.model.name or 'an unnamed model'}, “{cut(trace.prompt_text, 60)}”{wrote} "
            f"({trace.n_tokens} tokens, {trace.n_generated} generated; "
            f"{trace.n_layers} layers × {trace.n_heads} heads)")


def kinship(a, b) -> str:
    """'B is a branch of A at step k' (or the other way) when one trace was branched from the other, else ''."""
    for child, parent, c, p in ((b, a, "B", "A"), (a, b, "A", "B")):
        if child.parent_id is not None and child.parent_id == parent.id:
            return f"{c} is a branch of {p} at step {child.branch_step}."
    return ""


class CompareView(anywidget.AnyWidget):
    """A's and B's attention (one head or a layer's mean) over matched positions, their difference in a diverging
    scale, and the probabilities of both traces' steps with the steps where they chose differently marked."""

    _esm = frontend.module("whatif/compare.js")
    _css = frontend.stylesheet("whatif/compare.css")

    title_a = traitlets.Unicode("").tag(sync=True)
    title_b = traitlets.Unicode("").tag(sync=True)
    method = traitlets.Unicode("").tag(sync=True)  # "position", "token runs" or "text"
    sentence = traitlets.Unicode("").tag(sync=True)  # how the positions were aligned
    note = traitlets.Unicode("").tag(sync=True)  # which layers and heads are compared when the models differ
    tokens_a = traitlets.List(traitlets.Unicode()).tag(sync=True)  # whitespace made visible
    tokens_b = traitlets.List(traitlets.Unicode()).tag(sync=True)
    n_prompt_a = traitlets.Int(0).tag(sync=True)
    n_prompt_b = traitlets.Int(0).tag(sync=True)
    pos_a = traitlets.List(traitlets.Int()).tag(sync=True)  # matched positions, pair by pair
    pos_b = traitlets.List(traitlets.Int()).tag(sync=True)
    n_layers = traitlets.Int(1).tag(sync=True)  # A's
    n_heads = traitlets.Int(1).tag(sync=True)
    heads_apply = traitlets.Bool(True).tag(sync=True)  # False: the models differ in shape, heads are averaged
    layer = traitlets.Int(0).tag(sync=True)
    head = traitlets.Int(None, allow_none=True).tag(sync=True)  # None: the mean of the layer's heads
    window_size = traitlets.Int(96).tag(sync=True)
    window_start = traitlets.Int(0).tag(sync=True)  # first matched pair of the window's rows (queries)
    key_start = traitlets.Int(0).tag(sync=True)  # first matched pair of its columns (keys)
    window = traitlets.Bytes(b"").tag(sync=True)  # float32 little-endian [3, rows, cols]: A, B, A − B
    window_at = traitlets.List(traitlets.Int(), [0, 0, 0, 0]).tag(sync=True)  # [row start, key start, rows, cols]
    scale = traitlets.Float(1.0).tag(sync=True)  # the largest weight of A and B over all matched positions
    dscale = traitlets.Float(1.0).tag(sync=True)  # the largest |A − B|
    steps = traitlets.List(traitlets.Dict()).tag(sync=True)  # {a, pa, b, pb, differs} a step (None where absent)
    shows = traitlets.Unicode("").tag(sync=True)  # "layer head" (head "mean") the window is of, for tests

    def __init__(self, a, b, layer: int = 0, head: int | None = None, kind: str = "raw", window_size: int = 96,
                 **kwargs):
        self.a, self.b, self.kind = a, b, kind
        self.alignment = align(a, b)
        self._full: tuple | None = None  # (layer, head, Difference) last computed
        same_shape = (a.n_layers, a.n_heads) == (b.n_layers, b.n_heads)
        super().__init__(
            title_a=describe(a, "A"), title_b=describe(b, "B"), method=self.alignment.method,
            sentence=" ".join(s for s in (self.alignment.sentence, kinship(a, b)) if s),
            tokens_a=[visible(t) for t in a.tokens], tokens_b=[visible(t) for t in b.tokens],
            n_prompt_a=a.n_prompt, n_prompt_b=b.n_prompt,
            pos_a=self.alignment.matched_a, pos_b=self.alignment.matched_b,
            n_layers=a.n_layers, n_heads=a.n_heads, heads_apply=same_shape,
            layer=clamp_layer(a, layer), head=clamp_head(a, head) if same_shape else None, window_size=window_size,
            steps=self.step_data(), **kwargs,
        )
        self.observe(self._refresh, ["layer", "head", "window_start", "key_start", "window_size"])
        self._refresh()

    @property
    def n_matched(self) -> int:
        return len(self.alignment.pairs)

    # --- traits kept in range (the browser may send anything)
    @traitlets.validate("layer")
    def _valid_layer(self, proposal):
        return clamp_layer(self.a, proposal["value"])

    @traitlets.validate("head")
    def _valid_head(self, proposal):
        return clamp_head(self.a, proposal["value"]) if self.heads_apply else None

    @traitlets.validate("window_size")
    def _valid_size(self, proposal):
        return int(np.clip(proposal["value"], 1, 512))

    @traitlets.validate("window_start", "key_start")
    def _valid_start(self, proposal):
        return int(np.clip(proposal["value"], 0, max(0, self.n_matched - self.window_size)))

    @traitlets.observe("window_size")
    def _reclamp(self, _change) -> None:
        self.window_start, self.key_start = self.window_start, self.key_start  # re-validated, so clamped

    # --- data
    def step_data(self) -> list[dict]:
        """Each step's tokens and probabilities in A and B, and whether they chose differently."""
        def side(step):
            return (None, None) if step is None else (visible(step.token), float(step.prob))

        out = []
        for pair in step_pairs(self.a, self.b, self.alignment):
            (ta, pa), (tb, pb) = side(pair.a), side(pair.b)
            out.append({"a": ta, "pa": pa, "b": tb, "pb": pb, "differs": pair.differs})
        return out

    def heads(self) -> HeadsCompared:
        return counterpart(self.a, self.b, self.layer, self.head)

    def full(self) -> Difference:
        """A, B and A − B over all matched positions for the current layer and head, computed once a pair."""
        key = (self.layer, self.head)
        if self._full is None or self._full[0] != key:
            self._full = (key, difference(self.a, self.b, self.alignment, self.layer, self.head, self.kind))
        return self._full[1]

    def _refresh(self, _change=None) -> None:
        """Send the window of A, B and A − B (and the scales and note when layer or head changed) in one message."""
        full = self.full()
        s, k, n = self.window_start, self.key_start, self.window_size
        block = np.stack([m[s : s + n, k : k + n] for m in full]).astype("<f4")
        with self.hold_sync():
            self.scale = float(max(full.a.max(initial=0), full.b.max(initial=0))) or 1.0
            self.dscale = float(np.abs(full.delta).max(initial=0)) or 1e-6
            self.note = self.heads().note
            self.window_at = [s, k, block.shape[1], block.shape[2]]
            self.window = block.tobytes()
            self.shows = f"{self.layer} {'mean' if self.head is None else self.head}"

    def __repr__(self) -> str:
        return (f"CompareView({self.alignment.method}: {self.n_matched} matched positions, layer={self.layer}, "
                f"head={self.head})")


def compare(a, b, layer: int = 0, head: int | None = None, kind: str = "raw", window_size: int = 96) -> CompareView:
    """Two traces side by side: the attention of `layer`/`head` (head None: the mean of the heads) of both over
    their matched positions, A − B in a diverging scale, and the probabilities of both traces' steps."""
    if kind not in a.kinds or kind not in b.kinds:
        raise ValueError(f"kind must be one both traces have ({sorted(set(a.kinds) & set(b.kinds))}), not {kind!r}")
    return CompareView(a, b, layer=layer, head=head, kind=kind, window_size=window_size)
