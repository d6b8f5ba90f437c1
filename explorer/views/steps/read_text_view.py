"""A text as the model read it, each token coloured by its surprisal: how unexpected it was to the model.

    view = explorer.views.read_text(trace)      # any trace; lm.trace(text) gives one with no generated tokens

Surprisal is −ln p(token_i | tokens before i), in nats (÷ ln 2 for bits): white at 0, full colour from
SURPRISAL_FULL nats up; tokens whose surprisal is not known (the first token, the prompt of an older trace) stay
white. The tokens and their values go to the browser once, as the stepper's text (token_text.TokenText).
"""

from __future__ import annotations

import html
import math

import ipywidgets as widgets
import numpy as np

from ...trace import Trace
from ..selection import FollowsSelection, Selection
from .token_text import SURPRISAL_COLOUR, TokenText, token_titles
from ..frontend.tokens_html import most_surprising, surprisal_legend, surprisal_words


class ReadTextView(FollowsSelection, widgets.VBox):
    """The whole text of a trace coloured by surprisal, with a legend, a summary and the most surprising tokens.
    A click on a token selects it in `selection`."""

    def __init__(self, trace: Trace, selection: Selection | None = None):
        super().__init__()
        self.add_class("read-text-view")
        self.trace = trace
        self.selection = selection if selection is not None else Selection()
        self.text = TokenText(tokens=list(trace.tokens), titles=token_titles(trace), mode="text",
                              count=trace.n_tokens, max_height="20em")
        self.text.colour_by(self.surprisal, **SURPRISAL_COLOUR)
        self.summary = widgets.HTML(self._summary())
        self.surprising = widgets.HTML(most_surprising(trace.tokens, self.surprisal))
        self.children = [
            widgets.HTML("<b>The text as the model read it</b>: orange = surprisal, −ln p(token | the tokens before "
                         "it), how unexpected each token was (hover for nats and bits; click to select)"),
            widgets.HTML(surprisal_legend()), self.summary, self.text, self.surprising,
        ]
        self.text.observe(self._on_token, "selected")
        self.follow(self.selection, self._on_selection, ["token"])

    @property
    def surprisal(self) -> np.ndarray:
        """What the tokens are coloured by: the trace's surprisal, float32 [T], NaN where not known."""
        return np.asarray(self.trace.surprisal, dtype=np.float32)

    def _summary(self) -> str:
        values = self.surprisal
        known = values[~np.isnan(values)]
        if not len(known):
            return ("<div style='font-family:monospace'>No surprisal known for this text: the trace was captured "
                    "without it (capture it again with this version of attention-explorer).</div>")
        mean = float(known.mean())
        perplexity = f"{math.exp(mean):.4g}" if mean < 700 else "∞"
        return (f"<div style='font-family:monospace'>{len(known)} of {len(values)} tokens with a known surprisal · "
                f"mean {html.escape(surprisal_words(mean))} a token · perplexity {perplexity}</div>")

    def _on_token(self, change) -> None:
        if change["new"] >= 0:
            self.selection.token = change["new"]

    def _on_selection(self, change) -> None:
        token = self.selection.token
        self.text.selected = token if token is not None and 0 <= token < self.trace.n_tokens else -1


def read_text(trace: Trace, selection: Selection | None = None) -> ReadTextView:
    """The text of `trace` coloured by each token's surprisal, with a legend; hover a token for its value."""
    return ReadTextView(trace, selection)


__all__ = ["ReadTextView", "read_text"]
