"""Step through the decoding: at each generated token, the text so far, where the new token looked (or how
surprising each token was), and the candidates it was chosen from.

    view = explorer.views.stepper(trace)        # a slider and a play button over the steps

Given `on_branch(step, token)` (the explorer passes one when it has a model), a click on a candidate of the
current step, or a token typed in the box, asks for a branch: what if the model had picked that token here?

Per step only small things cross to the browser: one attention row as float32 bytes and the step's number.
The tokens and every step's candidates go over once; the charts are SVG drawn by a small anywidget.
"""

from __future__ import annotations

import html
from collections.abc import Callable

import ipywidgets as widgets
import numpy as np

from ...trace import Trace
from .step_charts import StepCharts
from ..meaning.commitment_view import CommitmentStrip
from ..selection import FollowsSelection, Selection, clamp_head, clamp_layer
from ..frontend.tokens_html import most_surprising, surprisal_legend, token_span, visible
from .read_text_view import read_text
from .token_text import ATTENTION_COLOUR, SURPRISAL_COLOUR, TokenText, token_titles

MEAN = -1  # the head selector's value for the mean of the layer's heads
COLOUR_BY = ("attention", "surprisal")  # what the stepper's text is coloured by
BRANCH_HINT = ("<i>Branching (what if the model had picked another token here?) needs a model: "
               "<code>explorer.views.show(trace, lm=lm)</code>.</i>")


class StepperView(FollowsSelection, widgets.VBox):
    """A slider and play button over the decoding steps of a trace, with the text, attention and probabilities
    of the current step. Follows and updates `selection` (layer, head, step; a click on a token sets token).
    With `on_branch`, a click on a candidate of the current step (or a typed token) calls on_branch(step, token)."""

    def __init__(self, trace: Trace, selection: Selection | None = None, play_interval: int = 800,
                 on_branch: Callable[[int, object], None] | None = None,
                 on_attribution: Callable[[], None] | None = None):
        super().__init__()
        self.add_class("stepper-view")
        self.trace = trace
        self.selection = selection if selection is not None else Selection()
        self.on_branch = on_branch
        if not trace.steps:
            self.message = widgets.HTML(
                "<p><b>No decoding steps to show.</b> This trace holds "
                f"{trace.n_tokens} tokens read in one pass (<code>lm.trace(text)</code>), none generated. "
                "Make one with <code>lm.generate(prompt, max_new_tokens=…)</code> to step through. "
                "Below, the text it read, coloured by how surprising each token was to the model.</p>"
            )
            self.read_text = read_text(trace, self.selection)
            self.children = [self.message, self.read_text]
            return
        n = trace.n_generated
        sel = self.selection
        step = min(max(sel.step, 0), n - 1)
        self.slider = widgets.IntSlider(value=step, min=0, max=n - 1, description="step",
                                        continuous_update=True, layout=widgets.Layout(width="420px"))
        self.play = widgets.Play(value=step, min=0, max=n - 1, interval=play_interval, description="play")
        self._link = widgets.jslink((self.play, "value"), (self.slider, "value"))
        self.layer = widgets.Dropdown(options=list(range(trace.n_layers)), value=clamp_layer(trace, sel.layer),
                                      description="layer", layout=widgets.Layout(width="150px"))
        heads = [("mean of heads", MEAN)] + [(f"head {h}", h) for h in range(trace.n_heads)]
        self.head = widgets.Dropdown(options=heads, value=self._head_option(sel.head),
                                     description="head", layout=widgets.Layout(width="230px"))
        self.colour = widgets.ToggleButtons(options=COLOUR_BY, value="attention", style={"button_width": "90px"})
        self.colour.add_class("stepper-colour-by")
        self.info = widgets.HTML()
        self.about_text = widgets.HTML()
        self.legend = widgets.HTML(surprisal_legend(), layout=widgets.Layout(display="none"))
        self.focus = widgets.HTML()
        self.text = TokenText(tokens=list(trace.tokens), titles=token_titles(trace), mode="text",
                              max_height="13em", **ATTENTION_COLOUR)
        generated = trace.steps
        self.strip = TokenText(
            tokens=[s.token for s in generated], mode="chips", rgb="44,160,44", scale=1.0, value_name="p",
            count=n, max_height="6em",
            titles=[f"step {s.index} · p {s.prob:.4f} · rank {s.rank} · entropy {s.entropy:.3f} nats" for s in generated],
        )
        self.strip.set_values(np.array([s.prob for s in generated], dtype=np.float32))
        self.charts = StepCharts(trace, step)
        self.commitment = CommitmentStrip(trace, generated_only=True)
        self._build_branching()
        self._show(step)

        controls = widgets.HBox([self.play, self.slider, self.layer, self.head])
        if on_attribution is not None:  # the explorer's Attribution tab, at this step
            self.which_heads = widgets.Button(description="which heads wrote this token?", icon="search",
                                              layout=widgets.Layout(width="auto", min_width="240px"))
            controls.layout.flex_flow = "row wrap"  # to the next line rather than cut where the row is narrow
            self.which_heads.add_class("stepper-which-heads")
            self.which_heads.on_click(lambda _: on_attribution())
            controls.children = (*controls.children, self.which_heads)
        self.children = [
            controls, self.info, widgets.HBox([widgets.Label("colour the text by"), self.colour]),
            self.about_text, self.legend,
            self.text, self.focus, self.branching, self.commitment,
            widgets.HTML("<b>Generated tokens</b>: green = the probability the model gave each one "
                         "(hover for probability, rank and entropy; click to go to that step)"),
            self.strip, self.charts,
        ]
        self.slider.observe(lambda c: self._show(c["new"]), "value")
        self._following = False  # set while the pickers follow the selection
        self.layer.observe(self._on_head, "value")
        self.head.observe(self._on_head, "value")
        self.colour.observe(self._on_colour, "value")
        self.strip.observe(self._on_chip, "selected")
        self.text.observe(self._on_text_token, "selected")
        self.candidates.observe(self._on_candidate, "selected")
        self.follow(sel, self._on_selection, ["step", "layer", "head"])

    def lens_ready(self) -> None:
        """The trace got its logit lens after this view was drawn: the commitment strip is drawn from it."""
        if hasattr(self, "commitment"):
            self.commitment.refresh()

    def _build_branching(self) -> None:
        """The current step's candidates as chips; with on_branch, clickable, and a box to type a token.
        Every widget made here is in the view's tree, so closing the view closes it (an open widget outside the
        tree would keep the view and its trace alive through its callbacks)."""
        can = self.on_branch is not None
        self.candidates = TokenText(mode="candidates", rgb="44,160,44", scale=1.0, value_name="p", max_height="4.5em",
                                    clickable=can)
        self.candidates.add_class("stepper-candidates")
        self.branch_note = widgets.HTML()  # why a branch was refused here, before asking the model
        self.branch_note.add_class("stepper-branch-note")
        self.branch_token = self.branch_button = None
        if not can:
            about = "<b>Candidates at this step</b> (green = the model's probability). " + BRANCH_HINT
            self.branching = widgets.VBox([widgets.HTML(about), self.candidates, self.branch_note])
        else:
            self.branch_token = widgets.Text(placeholder="or type a token", layout=widgets.Layout(width="150px"))
            self.branch_token.add_class("stepper-branch-token")
            self.branch_button = widgets.Button(description="Branch",
                                                tooltip="generate again from this step with the token typed",
                                                layout=widgets.Layout(width="90px"))
            self.branch_button.add_class("stepper-branch-button")
            self.branch_button.on_click(lambda _: self._on_typed())
            about = ("<b>Candidates at this step</b> (green = the model's probability): click one to branch, "
                     "i.e. generate again from here with it instead")
            typed = widgets.HBox([self.branch_token, self.branch_button, self.branch_note])
            self.branching = widgets.VBox([widgets.HTML(about), self.candidates, typed])
        self.branching.add_class("stepper-branching")

    def _show_candidates(self, step: int) -> None:
        s = self.trace.steps[step]
        top = s.top_k
        with self.candidates.hold_sync():  # the tokens and their step in one message: data-key says whose they are
            self.candidates.key = f"step {step}"
            self.candidates.tokens = [c.token for c in top]
            click = " · click to branch with it" if self.on_branch is not None else ""
            self.candidates.titles = [f"candidate {i + 1} at step {step}"
                                      + (" · the token generated" if c.token_id == s.token_id else click)
                                      for i, c in enumerate(top)]
            self.candidates.set_values(np.array([c.prob for c in top], dtype=np.float32))
            self.candidates.count = len(top)
            self.candidates.highlight = next((i for i, c in enumerate(top) if c.token_id == s.token_id), -1)
        self.branch_note.value = ""

    def _on_candidate(self, change) -> None:
        index = change["new"]
        if index < 0:
            return
        stale = self.candidates.clicked_other_tokens
        with self.candidates.hold_sync():  # so that a second click on the same chip is a change again
            self.candidates.selected, self.candidates.selected_key = -1, ""
        step = self.step
        if stale:  # its index is of the chips drawn before: it would branch with a token nobody picked
            self._refuse(f"the candidates changed to those of step {step} as you clicked: click one again")
            return
        top = self.trace.steps[step].top_k
        if self.on_branch is not None and index < len(top):
            self.branch(step, top[index])

    def _on_typed(self) -> None:
        if self.branch_token is None:
            return
        text = self.branch_token.value
        if not text:
            self._refuse("type a token first (a leading space counts: “ Rome” is not “Rome”)")
            return
        self.branch(self.step, text)

    def branch(self, step: int, token) -> None:
        """Ask for a branch at `step` with `token` (a Candidate or a token's text); refused here when it is the
        token the trace already has."""
        if self.on_branch is None:
            return
        s = self.trace.steps[step]
        if getattr(token, "token_id", None) == s.token_id:
            self._refuse(f"“{visible(s.token)}” is the token of step {step} already: pick another candidate")
            return
        self.branch_note.value = ""
        self.on_branch(step, token)

    def _refuse(self, sentence: str) -> None:
        self.branch_note.value = f"<span class='ae-error'>{html.escape(sentence)}</span>"

    def _on_chip(self, change) -> None:
        if change["new"] >= 0:
            self.slider.value = change["new"]
            self.strip.selected = -1  # so that a second click on the same token is a change again

    def _on_text_token(self, change) -> None:
        if change["new"] >= 0:  # stays underlined: it is the selected token until another is clicked
            self.selection.token = change["new"]

    def close(self) -> None:
        """Close the view; the play-slider link is a widget of its own that would keep the view alive."""
        if hasattr(self, "_link"):
            self._link.close()
        if hasattr(self, "read_text"):  # a trace with no steps: the read-text view follows the selection too
            self.read_text.close()
        super().close()

    @property
    def step(self) -> int:
        return self.slider.value

    @step.setter
    def step(self, value: int) -> None:
        self.slider.value = value

    @property
    def head_index(self) -> int | None:
        return None if self.head.value == MEAN else self.head.value

    def attention_values(self, step: int) -> np.ndarray:
        """What the text view colours at `step`: the attention row that produced the new token, 0 elsewhere."""
        row = self.trace.step_attention(step, self.layer.value, self.head_index)
        values = np.zeros(self.trace.n_tokens, dtype=np.float32)
        values[: row.shape[0]] = row
        return values

    def surprisal_values(self) -> np.ndarray:
        """What the text view colours by surprisal: the trace's surprisal of every token, NaN where not known."""
        return np.asarray(self.trace.surprisal, dtype=np.float32)

    def _show(self, step: int) -> None:
        s = self.trace.steps[step]
        self.selection.step = step
        with self.text.hold_sync():
            self._paint_text(step)
            self.text.count = s.position + 1
            self.text.highlight = s.position
        self.strip.highlight = step
        self._describe(step)
        self._show_candidates(step)
        self.charts.step = step

    def _paint_text(self, step: int) -> None:
        """Colour the text by the chosen value: the attention that produced `step`'s token, or surprisal."""
        if self.colour.value == "surprisal":
            self.text.colour_by(self.surprisal_values(), **SURPRISAL_COLOUR)
            self.about_text.value = (
                "<b>Text so far</b>: the new token outlined in red; orange = surprisal, −ln p(token | the tokens "
                "before it): how unexpected each token was to the model (hover for nats, bits and, for generated "
                "tokens, the probability; click to select)")
        else:
            self.text.colour_by(self.attention_values(step), **ATTENTION_COLOUR)
            self.about_text.value = (
                "<b>Text so far</b>: the new token outlined in red; blue = how much it attended to each earlier "
                "token (scaled to the largest weight; hover for the value, click to select)")
        self.legend.layout.display = "" if self.colour.value == "surprisal" else "none"

    def _on_colour(self, change) -> None:
        self._paint_text(self.step)
        self._describe(self.step)

    def _describe(self, step: int) -> None:
        s = self.trace.steps[step]
        sampled = f" · sampled with p {s.sampling_prob:.4f}" if abs(s.sampling_prob - s.prob) > 1e-6 else ""
        self.info.value = (
            f"<div style='font-family:monospace'>step <b>{step}</b> of {self.trace.n_generated} · position {s.position}"
            f" · new token {token_span(s.token, marked=True)} · p {s.prob:.4f} · rank {s.rank}"
            f" · entropy {s.entropy:.3f} nats{sampled}</div>"
        )
        if self.colour.value == "surprisal":
            self.focus.value = most_surprising(self.trace.tokens, self.surprisal_values()[: s.position + 1],
                                               "most surprising so far")
            return
        row = self.attention_values(step)[: s.position]
        top = np.argsort(-row, kind="stable")[:5]
        who = "mean of heads" if self.head_index is None else f"head {self.head_index}"
        parts = [f"{token_span(self.trace.tokens[i], 0.25)} <small>#{i}</small> {row[i]:.3f}" for i in top]
        self.focus.value = (
            f"<div style='font-family:monospace'>layer {self.layer.value}, {html.escape(who)}: most attended "
            + " · ".join(parts) + "</div>"
        )

    def _on_head(self, change) -> None:
        if self._following:  # the pickers are being set from the selection: nothing to write back
            return
        with self.selection.hold_trait_notifications():  # one new (layer, head) pair for the other views
            self.selection.layer = self.layer.value
            self.selection.head = self.head_index
        self._paint_text(self.step)
        self._describe(self.step)

    def _on_selection(self, change) -> None:
        sel = self.selection
        if change["name"] == "step" and 0 <= sel.step < self.trace.n_generated:
            self.slider.value = sel.step
        elif change["name"] in ("layer", "head"):  # both pickers from the selection, neither writing back
            self._following = True
            try:
                self.layer.value = clamp_layer(self.trace, sel.layer)
                self.head.value = self._head_option(sel.head)
            finally:
                self._following = False
            self._paint_text(self.step)
            self._describe(self.step)

    def _head_option(self, head: int | None) -> int:
        """The head selector's option for a selection's head, clamped to the trace's heads."""
        head = clamp_head(self.trace, head)
        return MEAN if head is None else head


def stepper(trace: Trace, selection: Selection | None = None,
            on_branch: Callable[[int, object], None] | None = None,
            on_attribution: Callable[[], None] | None = None) -> StepperView:
    """Step through the decoding of a generated trace (a message for a trace with no generated tokens).
    `on_branch(step, token)` makes the candidates clickable (views.show(trace, lm=lm) passes one);
    `on_attribution()`, when given, is what a "which heads wrote this token?" button calls."""
    return StepperView(trace, selection, on_branch=on_branch, on_attribution=on_attribution)


__all__ = ["StepperView", "TokenText", "stepper", "token_titles"]
