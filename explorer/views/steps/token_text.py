"""Tokens as text or chips, each coloured by a value: the text the stepper and the read-text view show.

The tokens go to the browser once; then only the values (float32 bytes), how many are shown and which is
highlighted. Drawn by token_text.js, styled by token_text.css.
"""

from __future__ import annotations

import anywidget
import numpy as np
import traitlets

from ...trace import Trace
from .. import frontend
from ..frontend.tokens_html import SURPRISAL_FULL, SURPRISAL_RGB

ATTENTION_COLOUR = {"value_name": "attention", "rgb": "31,119,180", "scale": 0.0, "value_unit": ""}
SURPRISAL_COLOUR = {"value_name": "surprisal", "rgb": ",".join(map(str, SURPRISAL_RGB)), "scale": SURPRISAL_FULL,
                    "value_unit": "nats"}


class TokenText(anywidget.AnyWidget):
    """Tokens as text or chips, each coloured by a value (float32 bytes), the first `count` shown, one highlighted.

    Tokens are set with textContent in the browser, so any token shows as the characters it holds.
    """

    _esm = frontend.module("steps/token_text.js")
    _css = frontend.stylesheet("steps/token_text.css")
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    titles = traitlets.List(traitlets.Unicode()).tag(sync=True)  # extra hover line per token
    values = traitlets.Bytes(b"").tag(sync=True)  # float32, one per token
    count = traitlets.Int(0).tag(sync=True)  # tokens 0..count-1 are shown
    highlight = traitlets.Int(-1).tag(sync=True)
    selected = traitlets.Int(-1).tag(sync=True)  # set by a click in the browser
    key = traitlets.Unicode("").tag(sync=True)  # what the tokens are (the stepper's candidates: "step 3"): data-key
    selected_key = traitlets.Unicode("").tag(sync=True)  # the key of the tokens a click was on, sent with `selected`
    mode = traitlets.Unicode("text").tag(sync=True)  # "text", "chips", or "candidates" (chips of another class)
    rgb = traitlets.Unicode("31,119,180").tag(sync=True)
    scale = traitlets.Float(0.0).tag(sync=True)  # value of full colour; 0 = the max of the shown values
    value_name = traitlets.Unicode("").tag(sync=True)
    value_unit = traitlets.Unicode("").tag(sync=True)  # "nats": the hover gives the value in nats and bits
    max_height = traitlets.Unicode("14em").tag(sync=True)
    clickable = traitlets.Bool(True).tag(sync=True)  # False: a click selects nothing (and the pointer says so)

    def set_values(self, values: np.ndarray) -> None:
        self.values = np.ascontiguousarray(values, dtype="<f4").tobytes()

    def colour_by(self, values: np.ndarray, value_name: str, rgb: str, scale: float, value_unit: str = "") -> None:
        """Colour the tokens by `values` on the scale given (ATTENTION_COLOUR, SURPRISAL_COLOUR), in one message."""
        with self.hold_sync():
            self.set_values(values)
            self.value_name, self.rgb, self.scale, self.value_unit = value_name, rgb, scale, value_unit

    @property
    def clicked_other_tokens(self) -> bool:
        """Whether the click in `selected` was on tokens that were replaced before it came (a page still drawing
        the tokens of another `key`). A selection set here, with no key, is on the tokens there are."""
        return self.selected_key not in ("", self.key)

    @property
    def value_array(self) -> np.ndarray:
        return np.frombuffer(self.values, dtype="<f4")

    @property
    def shown_text(self) -> str:
        return "".join(self.tokens[: self.count])


def token_titles(trace: Trace) -> list[str]:
    """A hover line for each token of the text: a generated token's step, probability and rank; "" for the prompt."""
    titles = [""] * trace.n_tokens
    for s in trace.steps:
        titles[s.position] = f"generated at step {s.index} · p {s.prob:.4f} · rank {s.rank}"
    return titles
