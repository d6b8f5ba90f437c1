"""Charts of the per-step probabilities: the top candidates of one step, and the entropy over all steps.

Both return a plain plotly `go.Figure`; the stepper wraps each in one FigureWidget and updates it in place
with `probability_update` / `entropy_marker`, so the dashboard can reuse the same figures.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ..trace import Step, Trace
from .tokens_html import label, unique_labels

MODEL_COLOUR = "#1f77b4"
SAMPLING_COLOUR = "#ff7f0e"
CHOSEN_COLOUR = "#d62728"


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
        "token_ids": ids,
        "model": [model.get(i) for i in ids],
        "sampling": [sampling.get(i) for i in ids],
        "chosen": ids.index(step.token_id),
        "differs": sampling_differs(step),
    }


def probability_update(trace: Trace, step: int) -> tuple[list[dict], dict]:
    """The (trace updates, layout updates) that show step `step`; shared by the figure and the live widget."""
    s = trace.steps[step]
    bars = candidate_bars(s)
    n = len(bars["labels"])
    outline = [3 if i == bars["chosen"] else 0 for i in range(n)]
    model = dict(x=bars["labels"], y=bars["model"], customdata=bars["token_ids"],
                 marker=dict(color=[CHOSEN_COLOUR if i == bars["chosen"] else MODEL_COLOUR for i in range(n)],
                             line=dict(width=outline, color="black")))
    sampling = dict(x=bars["labels"], y=bars["sampling"], customdata=bars["token_ids"], visible=bars["differs"],
                    marker=dict(color=SAMPLING_COLOUR, line=dict(width=outline, color="black")))
    chosen = bars["labels"][bars["chosen"]]
    top = max(p for p in [*bars["model"], *(bars["sampling"] if bars["differs"] else [])] if p is not None)
    layout = dict(
        title=dict(text=f"step {step}: chose “{label(s.token)}” · p = {s.prob:.3f} · rank {s.rank}", x=0.01),
        annotations=[dict(x=chosen, y=top * 1.08, text="▼ chosen", showarrow=False, yanchor="bottom",
                          font=dict(color=CHOSEN_COLOUR, size=11))],
        yaxis=dict(range=[0, top * 1.25], title="probability"),
        showlegend=bars["differs"],
    )
    return [model, sampling], layout


def probability_chart(trace: Trace, step: int) -> go.Figure:
    """Bars of the top candidates at one step, the chosen one marked; the sampling distribution beside the
    model's when they differ (temperature, top-k, top-p)."""
    if not trace.steps:
        raise ValueError("this trace has no generated tokens (it comes from lm.trace(text)): nothing to chart")
    (model, sampling), layout = probability_update(trace, step)
    hover = "%{x} (id %{customdata})<br>p = %{y:.4f}<extra>%{fullData.name}</extra>"
    fig = go.Figure(
        data=[go.Bar(name="model", hovertemplate=hover, **model),
              go.Bar(name="sampled from", hovertemplate=hover, **sampling)],
        layout=dict(barmode="group", height=300, margin=dict(l=50, r=10, t=40, b=70), bargap=0.2,
                    xaxis=dict(type="category", tickangle=-40, tickmode="linear", dtick=1),  # every label
                    template="plotly_white"),
    )
    fig.update_layout(**layout)
    return fig


def entropy_chart(trace: Trace, step: int = 0) -> go.Figure:
    """Entropy (nats) of the model's distribution at every step, the sampling one when it differs, `step` marked."""
    steps = trace.steps
    x = [s.index for s in steps]
    tokens = [label(s.token) for s in steps]
    differs = any(sampling_differs(s) for s in steps)
    hover = "step %{x}: %{text}<br>entropy %{y:.3f} nats<extra>%{fullData.name}</extra>"
    data = [
        go.Scatter(x=x, y=[s.entropy for s in steps], text=tokens, name="model", mode="lines+markers",
                   line=dict(color=MODEL_COLOUR), marker=dict(size=4), hovertemplate=hover),
        go.Scatter(x=x, y=[s.sampling_entropy for s in steps], text=tokens, name="sampled from", visible=differs,
                   mode="lines", line=dict(color=SAMPLING_COLOUR, dash="dot"), hovertemplate=hover),
        go.Scatter(**entropy_marker(trace, step), name="this step", mode="markers", hoverinfo="skip",
                   marker=dict(size=11, color=CHOSEN_COLOUR, symbol="circle-open", line=dict(width=2))),
    ]
    fig = go.Figure(data=data, layout=dict(
        height=300, margin=dict(l=50, r=10, t=40, b=40), template="plotly_white", showlegend=differs,
        title=dict(text="entropy of each step (nats): low = sure, high = hesitant", x=0.01),
        xaxis=dict(title="step"), yaxis=dict(rangemode="tozero")))
    if not steps:
        fig.add_annotation(text="no generated tokens", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return fig


def entropy_marker(trace: Trace, step: int) -> dict:
    """x and y of the current-step marker on the entropy chart."""
    if not trace.steps:
        return dict(x=[], y=[])
    return dict(x=[step], y=[trace.steps[step].entropy])
