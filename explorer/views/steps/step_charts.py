"""The stepper's charts: the candidates of the current step beside the entropy of every step.

An anywidget drawing plain SVG (`step_charts.js`) rather than a plotly FigureWidget: a FigureWidget carries its
own 5 MB plotly.js to every page and ~45 MB into every kernel, which a class of thirty pays thirty times. All
steps' candidates go over once (a few numbers a step); moving to another step sends one integer.
"""

from __future__ import annotations

import anywidget
import numpy as np
import traitlets

from ...trace import Step, Trace
from .. import frontend
from ..frontend.tokens_html import unique_labels


def sampling_differs(step: Step, tol: float = 1e-6) -> bool:
    """True when the distribution sampled from (after temperature, top-k, top-p) is not the model's own."""
    if [c.token_id for c in step.top_k] != [c.token_id for c in step.sampling_top_k]:
        return True
    model = np.array([c.prob for c in step.top_k])
    sampling = np.array([c.prob for c in step.sampling_top_k])
    return not np.allclose(model, sampling, atol=tol, rtol=0) or abs(step.prob - step.sampling_prob) > tol


def candidate_bars(step: Step) -> dict:
    """Bar data of one step: labels, token ids, the model's and the sampling probabilities (None = not in its top-k).

    Categories are the model's top-k, then sampling candidates outside it, then the chosen token if neither
    list holds it (its two probabilities are always known).
    """
    model = {c.token_id: c.prob for c in step.top_k}
    sampling = {c.token_id: c.prob for c in step.sampling_top_k}
    model[step.token_id] = step.prob
    sampling[step.token_id] = step.sampling_prob
    ids, tokens = [], []
    for c in [*step.top_k, *step.sampling_top_k, step]:
        if c.token_id not in ids:
            ids.append(c.token_id)
            tokens.append(c.token)
    return {
        "labels": unique_labels(tokens, ids),
        "tokens": tokens,
        "token_ids": ids,
        "model": [model.get(i) for i in ids],
        "sampling": [sampling.get(i) for i in ids],
        "chosen": ids.index(step.token_id),
        "differs": sampling_differs(step),
    }


def step_title(trace: Trace, step: int) -> str:
    s = trace.steps[step]
    (shown,) = unique_labels([s.token], [s.token_id], plain=True)
    return f"step {step}: chose “{shown}” · p = {s.prob:.3f} · rank {s.rank}"


def candidates_of(trace: Trace, step: int) -> dict:
    """What the bars of `step` show: labels (plain text), token ids, both probabilities, the chosen one, a title."""
    bars = candidate_bars(trace.steps[step])
    return {
        "labels": unique_labels(bars["tokens"], bars["token_ids"], plain=True),
        "ids": bars["token_ids"],
        "model": bars["model"],
        "sampling": bars["sampling"],
        "chosen": bars["chosen"],
        "title": step_title(trace, step),
    }


class StepCharts(anywidget.AnyWidget):
    """Bars of one step's candidates (model, and sampled-from where it differs; the chosen one outlined) and the
    entropy line of all steps with `step` marked. Follows its box's width."""

    _esm = frontend.module("steps/step_charts.js")
    _css = frontend.stylesheet("steps/step_charts.css")
    candidates = traitlets.List().tag(sync=True)  # one candidates_of() dict per step
    entropy = traitlets.List(traitlets.Float()).tag(sync=True)  # nats, per step
    sampling_entropy = traitlets.List(traitlets.Float()).tag(sync=True)  # [] unless some step sampled otherwise
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)  # each step's token, for the hover text
    differs = traitlets.Bool(False).tag(sync=True)
    step = traitlets.Int(0).tag(sync=True)

    def __init__(self, trace: Trace, step: int = 0, **kwargs):
        if not trace.steps:
            raise ValueError("this trace has no generated tokens (it comes from lm.trace(text)): nothing to chart")
        differs = any(sampling_differs(s) for s in trace.steps)
        super().__init__(
            candidates=[candidates_of(trace, i) for i in range(trace.n_generated)],
            entropy=[s.entropy for s in trace.steps],
            sampling_entropy=[s.sampling_entropy for s in trace.steps] if differs else [],
            tokens=unique_labels([s.token for s in trace.steps], [s.token_id for s in trace.steps], plain=True),
            differs=differs, step=step, **kwargs,
        )
