"""The commitment strip (NDIF Workbench): each token the logit lens predicts, coloured by the first layer from which
the lens ranks it first and keeps it first up to the last layer (`Trace.commitment`). Dark: the model settled on it
early; light: only in its last layers; white with a dashed border: never (the last layer ranks another token first,
so it was sampled).

One HTML widget, built once: tokens are escaped, each has its layer in `data-layer` and a tooltip (`title`).
"""

from __future__ import annotations

import html

import ipywidgets as widgets
import numpy as np

from ...analysis import NO_LENS, NOT_COMMITTED
from ...trace import Trace
from ..frontend.tokens_html import visible

# ColorBrewer's Blues, dark to light: layer 0 at the dark end, the last layer at the light one (never white, which
# is for tokens never committed)
STOPS = ((8, 48, 107), (33, 113, 181), (107, 174, 214), (198, 219, 239))
NEVER = "rgb(255,255,255)"
STYLE = """<style>
.ae-commitment { font: 12px sans-serif; color: #333; }
.ae-commitment-tokens { display: flex; flex-wrap: wrap; gap: 2px; max-height: 9em; overflow-y: auto; margin-top: 3px;
  font: 13px/1.5 ui-monospace, monospace; }
.ae-commitment-token { border: 1px solid #bbb; border-radius: 3px; padding: 0 3px; white-space: pre; cursor: default; }
.ae-commitment-token.never { border-style: dashed; border-color: #888; color: #666; }
.ae-commitment-swatch { display: inline-block; width: 12px; height: 12px; vertical-align: middle; border: 1px solid #ccc; }
</style>"""


def layer_colour(layer: int, n_layers: int) -> str:
    """The CSS colour of a token first committed at `layer` of `n_layers` (NOT_COMMITTED: white)."""
    if layer == NOT_COMMITTED:
        return NEVER
    t = layer / (n_layers - 1) if n_layers > 1 else 0.0
    at = t * (len(STOPS) - 1)
    i = min(int(at), len(STOPS) - 2)
    f = at - i
    r, g, b = (round(a + (b - a) * f) for a, b in zip(STOPS[i], STOPS[i + 1]))
    return f"rgb({r},{g},{b})"


def text_colour(layer: int, n_layers: int) -> str:
    """White on the darker half of the scale, near-black on the lighter half."""
    dark = layer != NOT_COMMITTED and (layer / (n_layers - 1) if n_layers > 1 else 0.0) < 0.5
    return "#fff" if dark else "#111"


def tooltip(trace: Trace, position: int, layer: int, column: int) -> str:
    """The hover line of the token at `position`, first committed at `layer` (the lens's column `column`)."""
    n = trace.lens.n_layers
    where = f"#{position} “{visible(trace.tokens[position])}”"
    if layer == NOT_COMMITTED:
        top = trace.lens.top_k(n - 1, int(trace.lens.positions[column]))[0].token
        return f"{where}: never committed: the last layer ranks “{visible(top)}” first (this token was sampled)"
    return f"{where}: first committed at layer {layer} of {n} (layers 0–{n - 1}): ranked first from there to the last"


class CommitmentStrip(widgets.HTML):
    """The tokens the lens predicts (only the generated ones with `generated_only`), coloured by the layer at
    which each was first ranked first for good; `positions` and `layers` are what it shows, for Python."""

    def __init__(self, trace: Trace, generated_only: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.add_class("ae-commitment-strip")
        self.trace = trace
        self.generated_only = generated_only
        self.refresh()

    def refresh(self) -> None:
        """Draw the strip from the trace's lens (again, once a lens that was being read has come)."""
        trace, generated_only = self.trace, self.generated_only
        self.positions: list[int] = []
        self.layers: list[int] = []
        if trace.lens is None:
            said = ("the logit lens is being read: the strip comes with it" if trace.lens_pending else
                    html.escape(NO_LENS))
            self.value = f"<div class='ae-commitment ae-commitment-none'>Commitment strip: {said}.</div>"
            return
        first = trace.commitment()
        wanted = {s.position for s in trace.steps} if generated_only else None
        columns = []
        for column, p in enumerate(trace.lens.positions):
            token = int(p) + 1
            if token < trace.n_tokens and (wanted is None or token in wanted):
                columns.append(column)
                self.positions.append(token)
                self.layers.append(int(first[column]))
        self.value = self._html(columns)

    def _html(self, columns: list[int]) -> str:
        n = self.trace.lens.n_layers
        spans = []
        for column, position, layer in zip(columns, self.positions, self.layers):
            style = f"background:{layer_colour(layer, n)};color:{text_colour(layer, n)}"
            never = " never" if layer == NOT_COMMITTED else ""
            title = html.escape(tooltip(self.trace, position, layer, column), quote=True)
            spans.append(f"<span class='ae-commitment-token{never}' data-position='{position}' data-layer='{layer}' "
                         f"style='{style}' title='{title}'>{html.escape(visible(self.trace.tokens[position]))}</span>")
        swatches = "".join(f"<span class='ae-commitment-swatch' title='layer {layer}' "
                           f"style='background:{layer_colour(layer, n)}'></span>" for layer in range(n))
        never = f"<span class='ae-commitment-swatch' style='background:{NEVER};border:1px dashed #888'></span>"
        committed = int(np.sum(np.asarray(self.layers) != NOT_COMMITTED))
        return (f"{STYLE}<div class='ae-commitment' data-n-layers='{n}'>"
                f"<div><b>Commitment</b>: each token coloured by the first layer whose logit lens ranks it first and "
                f"keeps it first to the last layer (hover for the layer; {committed} of {len(self.layers)} "
                f"committed)</div>"
                f"<div class='ae-commitment-legend'>layer 0 (early) {swatches} layer {n - 1} (last) &nbsp; {never} "
                f"never (the last layer ranks another token first: sampled)</div>"
                f"<div class='ae-commitment-tokens'>{''.join(spans)}</div></div>")

    def __repr__(self) -> str:
        return f"CommitmentStrip({len(self.positions)} tokens)" if self.trace.lens is not None else \
            "CommitmentStrip(no lens)"


def commitment_strip(trace: Trace, generated_only: bool = False) -> CommitmentStrip:
    """The commitment strip of `trace`: its tokens coloured by the first layer from which the logit lens ranks each
    first for good (one line saying so for a trace with no lens)."""
    return CommitmentStrip(trace, generated_only=generated_only)
