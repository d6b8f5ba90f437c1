"""Charts of the per-step probabilities: the top candidates of one step, and the entropy over all steps.

Both return a plain plotly `go.Figure`, for notebooks and lessons. The stepper draws the same two charts with its
own light SVG widget (`step_charts.StepCharts`), from the same candidate data.
"""

from __future__ import annotations

import plotly.graph_objects as go

from ...trace import Trace
from .step_charts import candidate_bars, sampling_differs
from ..frontend.tokens_html import label

MODEL_COLOUR = "#1f77b4"
SAMPLING_COLOUR = "#ff7f0e"
CHOSEN_COLOUR = "#d62728"


def _bar_step(trace: Trace, step: int) -> dict:
    """What the bar chart shows at `step`: the two bar traces, a title, the chosen bar's label and the y range."""
    s = trace.steps[step]
    bars = candidate_bars(s)
    n = len(bars["labels"])
    outline = [3 if i == bars["chosen"] else 0 for i in range(n)]
    model = dict(x=bars["labels"], y=bars["model"], customdata=bars["token_ids"],
                 marker=dict(color=[CHOSEN_COLOUR if i == bars["chosen"] else MODEL_COLOUR for i in range(n)],
                             line=dict(width=outline, color="black")))
    sampling = dict(x=bars["labels"], y=bars["sampling"], customdata=bars["token_ids"], visible=bars["differs"],
                    marker=dict(color=SAMPLING_COLOUR, line=dict(width=outline, color="black")))
    top = max(p for p in [*bars["model"], *(bars["sampling"] if bars["differs"] else [])] if p is not None)
    return dict(
        traces=[model, sampling], top=top, differs=bars["differs"], chosen=bars["labels"][bars["chosen"]],
        title=f"step {step}: chose “{label(s.token)}” · p = {s.prob:.3f} · rank {s.rank}",
    )


def _chosen_mark(shown: dict, **axes) -> dict:
    return dict(x=shown["chosen"], y=shown["top"] * 1.08, text="▼ chosen", showarrow=False, yanchor="bottom",
                font=dict(color=CHOSEN_COLOUR, size=11), **axes)


def _bars(shown: dict) -> list[go.Bar]:
    hover = "%{x} (id %{customdata})<br>p = %{y:.4f}<extra>%{fullData.name}</extra>"
    model, sampling = shown["traces"]
    return [go.Bar(name="model", legendgroup="model", hovertemplate=hover, **model),
            go.Bar(name="sampled from", legendgroup="sampling", hovertemplate=hover, **sampling)]


def _entropy_lines(trace: Trace, step: int, differs: bool, legend: bool = True) -> list[go.Scatter]:
    steps = trace.steps
    x = [s.index for s in steps]
    tokens = [label(s.token) for s in steps]
    hover = "step %{x}: %{text}<br>entropy %{y:.3f} nats<extra>%{fullData.name}</extra>"
    return [
        go.Scatter(x=x, y=[s.entropy for s in steps], text=tokens, name="model", legendgroup="model",
                   showlegend=legend, mode="lines+markers", line=dict(color=MODEL_COLOUR), marker=dict(size=4),
                   hovertemplate=hover),
        go.Scatter(x=x, y=[s.sampling_entropy for s in steps], text=tokens, name="sampled from",
                   legendgroup="sampling", showlegend=legend, visible=differs, mode="lines",
                   line=dict(color=SAMPLING_COLOUR, dash="dot"), hovertemplate=hover),
        go.Scatter(**entropy_marker(trace, step), name="this step", mode="markers", hoverinfo="skip",
                   showlegend=legend, marker=dict(size=11, color=CHOSEN_COLOUR, symbol="circle-open", line=dict(width=2))),
    ]


BAR_AXIS = dict(type="category", tickangle=-40, tickmode="linear", dtick=1)  # every candidate labelled
ENTROPY_TITLE = "entropy of each step (nats): low = sure, high = hesitant"


def probability_chart(trace: Trace, step: int) -> go.Figure:
    """Bars of the top candidates at one step, the chosen one marked; the sampling distribution beside the
    model's when they differ (temperature, top-k, top-p)."""
    if not trace.steps:
        raise ValueError("this trace has no generated tokens (it comes from lm.trace(text)): nothing to chart")
    shown = _bar_step(trace, step)
    return go.Figure(data=_bars(shown), layout=dict(
        barmode="group", height=300, margin=dict(l=50, r=10, t=40, b=70), bargap=0.2, template="plotly_white",
        title=dict(text=shown["title"], x=0.01), xaxis=BAR_AXIS, showlegend=shown["differs"],
        yaxis=dict(range=[0, shown["top"] * 1.25], title="probability"), annotations=[_chosen_mark(shown)]))


def entropy_chart(trace: Trace, step: int = 0) -> go.Figure:
    """Entropy (nats) of the model's distribution at every step, the sampling one when it differs, `step` marked."""
    differs = any(sampling_differs(s) for s in trace.steps)
    fig = go.Figure(data=_entropy_lines(trace, step, differs), layout=dict(
        height=300, margin=dict(l=50, r=10, t=40, b=40), template="plotly_white", showlegend=differs,
        title=dict(text=ENTROPY_TITLE, x=0.01), xaxis=dict(title="step"), yaxis=dict(rangemode="tozero")))
    if not trace.steps:
        fig.add_annotation(text="no generated tokens", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return fig


def entropy_marker(trace: Trace, step: int) -> dict:
    """x and y of the current-step marker on the entropy chart."""
    if not trace.steps:
        return dict(x=[], y=[])
    return dict(x=[step], y=[trace.steps[step].entropy])
