"""The logit lens as a grid: a column per position the lens covers, a row per layer (layer 0 at the bottom), each
cell the token block `layer` ranks first there, coloured by the probability it gives the token that came next.

What crosses the wire, once (a 2,048-position, 30-layer lens sends about 250 KB):
- `top1`, every cell's first token as an index into `words` (its distinct texts): uint16, or uint32 past 65,536;
- `next_code` and `top1_code`, the two probabilities a cell can be coloured by as uint8 codes (0..254 for 0..1,
  255 where there is no next token, at the trace's end);
- `next_index`, per column, where the token that came next is in `words` (-1 if no cell ranks it first);
- the columns' labels.
A cell's top-k and its exact numbers go over in a message when the pointer is on it. A click sends a message too;
Python sets the shared selection, and the highlight follows the selection (`layer`, `column`), wherever it was set.
"""

from __future__ import annotations

import anywidget
import numpy as np
import traitlets

from ...trace import Trace
from .. import frontend
from ..selection import FollowsSelection, Selection

NO_NEXT = 255  # the colour code of a cell with no next token
NO_LENS = ('This trace has no logit lens: capture one with lm.generate(prompt, lens="steps") '
           'or lm.trace(text, lens="all").')
PENDING = "The logit lens is being read: it appears here as soon as it is ready."


def colour_codes(probs: np.ndarray) -> np.ndarray:
    """Probabilities as uint8 colour codes: round(254·p) for p in 0..1, NO_NEXT where p is NaN."""
    codes = np.rint(np.clip(np.nan_to_num(probs, nan=0.0), 0.0, 1.0) * 254).astype(np.uint8)
    codes[np.isnan(probs)] = NO_NEXT
    return codes


def _number(x: float) -> float | None:
    """A float for JSON: None for NaN, which JSON cannot hold."""
    return None if np.isnan(x) else float(x)


class LensView(FollowsSelection, anywidget.AnyWidget):
    """The logit lens of a trace: hover a cell for its top-k, click one to select its layer and step (or token)."""

    _esm = frontend.module("meaning/lens.js")
    _css = frontend.stylesheet("meaning/lens.css")

    message = traitlets.Unicode("").tag(sync=True)  # shown instead of the grid (a trace without a lens)
    mode = traitlets.Unicode("all").tag(sync=True)  # "steps": a column per generated step; "all": per position
    n_layers = traitlets.Int(0).tag(sync=True)
    n_columns = traitlets.Int(0).tag(sync=True)
    top1 = traitlets.Bytes(b"").tag(sync=True)  # uint16 or uint32 [n_layers, n_columns]: indices into words
    top1_width = traitlets.Int(2).tag(sync=True)  # bytes an index of top1
    words = traitlets.List(traitlets.Unicode()).tag(sync=True)  # the distinct top-1 texts, as the tokenizer decodes
    next_code = traitlets.Bytes(b"").tag(sync=True)  # uint8 [n_layers, n_columns], see colour_codes
    top1_code = traitlets.Bytes(b"").tag(sync=True)  # uint8 [n_layers, n_columns]
    next_index = traitlets.Bytes(b"").tag(sync=True)  # int32 [n_columns]: the next token's index in words, or -1
    column_labels = traitlets.List(traitlets.Unicode()).tag(sync=True)  # under the grid: "step i", or the token read
    target_labels = traitlets.List(traitlets.Unicode()).tag(sync=True)  # above it: the token that came next
    colour_by = traitlets.Unicode("next").tag(sync=True)  # "next": p(the token that came next); "top": p(top-1)
    cell_width = traitlets.Int(64).tag(sync=True)  # CSS pixels
    layer = traitlets.Int(0).tag(sync=True)  # the selection's layer, for the highlight
    column = traitlets.Int(-1).tag(sync=True)  # the selection's step (or token) as a column; -1 if not covered

    def __init__(self, trace: Trace, selection: Selection | None = None, cell_width: int = 64, **kwargs):
        self.trace = trace
        self.selection = selection if selection is not None else Selection()
        lens = trace.lens
        if lens is None:
            super().__init__(message=PENDING if trace.lens_pending else NO_LENS, **kwargs)
            return
        step_at = {s.position - 1: s.index for s in trace.steps}  # the position that produced each step
        self.steps = [step_at.get(int(p)) for p in lens.positions]  # the step of each column, or None
        steps_mode = bool(trace.steps) and all(s is not None for s in self.steps)
        ids, top1 = np.unique(lens.top_ids[:, :, 0], return_inverse=True)
        width = 2 if len(ids) <= 1 << 16 else 4
        super().__init__(
            mode="steps" if steps_mode else "all", n_layers=lens.n_layers, n_columns=len(lens.positions),
            top1=top1.reshape(lens.top_ids.shape[:2]).astype(f"<u{width}").tobytes(), top1_width=width,
            words=[lens.words.get(int(i), "") for i in ids],
            next_code=colour_codes(lens.next_prob).tobytes(), top1_code=colour_codes(lens.top_probs[:, :, 0]).tobytes(),
            next_index=self._next_index(ids).tobytes(),
            column_labels=[f"step {s}" for s in self.steps] if steps_mode else [trace.tokens[p] for p in lens.positions],
            target_labels=[trace.tokens[p + 1] if p + 1 < trace.n_tokens else "" for p in lens.positions],
            cell_width=cell_width, **kwargs,
        )
        self._follow_selection()
        self.follow(self.selection, self._follow_selection, ["layer", "step", "token"])
        self.on_msg(self._on_msg)

    def _next_index(self, ids: np.ndarray) -> np.ndarray:
        """Per column, where the token that came next is among the top-1 ids, int32; -1 when it is not there."""
        out = np.full(len(self.trace.lens.positions), -1, dtype="<i4")
        for c, p in enumerate(self.trace.lens.positions):
            if p + 1 < self.trace.n_tokens:
                i = int(np.searchsorted(ids, self.trace.token_ids[p + 1]))
                if i < len(ids) and ids[i] == self.trace.token_ids[p + 1]:
                    out[c] = i
        return out

    def column_of_selection(self) -> int:
        """The column the selection's step (steps mode) or token (all mode) is in; -1 when the lens lacks it."""
        if self.mode == "steps":
            return self.steps.index(self.selection.step) if self.selection.step in self.steps else -1
        token = self.selection.token
        if token is None:
            return -1
        try:
            return self.trace.lens.column(token)
        except IndexError:
            return -1

    def _follow_selection(self, _change=None) -> None:
        with self.hold_trait_notifications():
            self.layer = min(max(self.selection.layer, 0), self.n_layers - 1)
            self.column = self.column_of_selection()

    def pick(self, layer: int, column: int) -> None:
        """Select block `layer` at `column`: the shared selection's layer, and its step (steps mode) or token."""
        if not (0 <= layer < self.n_layers and 0 <= column < self.n_columns):
            return
        with self.selection.hold_trait_notifications():
            self.selection.layer = layer
            if self.mode == "steps":
                self.selection.step = self.steps[column]
            else:
                self.selection.token = int(self.trace.lens.positions[column])

    def cell(self, layer: int, column: int) -> dict:
        """What the tooltip of a cell shows: its position, the token read and the one that came next, the top-k,
        and the next token's probability and rank (None at the trace's end)."""
        lens, trace = self.trace.lens, self.trace
        position = int(lens.positions[column])
        at_end = position + 1 >= trace.n_tokens
        return {
            "kind": "cell", "layer": layer, "column": column, "position": position, "step": self.steps[column],
            "token": trace.tokens[position], "next": None if at_end else trace.tokens[position + 1],
            "top": [[c.token, _number(c.prob)] for c in lens.top_k(layer, position)],
            "next_prob": _number(lens.next_prob[layer, column]),
            "next_rank": None if at_end else int(lens.next_rank[layer, column]),
        }

    def _on_msg(self, _widget, content, _buffers) -> None:
        """The browser asks for a cell's details (hover) or picks a cell (click)."""
        if not isinstance(content, dict):
            return
        try:
            layer, column = int(content["layer"]), int(content["column"])
        except (KeyError, TypeError, ValueError):
            return
        if content.get("kind") == "pick":
            self.pick(layer, column)
        elif content.get("kind") == "cell" and 0 <= layer < self.n_layers and 0 <= column < self.n_columns:
            self.send(self.cell(layer, column))

    def __repr__(self) -> str:
        if self.message:
            return "LensView(no lens)"
        return f"LensView({self.n_layers} layers x {self.n_columns} columns, mode={self.mode!r})"


def lens(trace: Trace, selection: Selection | None = None, cell_width: int = 64) -> LensView:
    """The logit lens of `trace` as a grid of layers × positions; clicking a cell selects its layer and step."""
    return LensView(trace, selection=selection, cell_width=cell_width)
