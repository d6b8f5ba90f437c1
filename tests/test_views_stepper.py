"""The stepper, the probability charts and the token text helpers, checked against the trace they show."""

from __future__ import annotations

import dataclasses
import html

import numpy as np
import pytest

from explorer.trace import Candidate
from explorer.views import Selection
from explorer.views.steps.probabilities import entropy_chart, probability_chart
from explorer.views.steps.stepper_view import MEAN, stepper
from explorer.views.frontend.tokens_html import label, token_span, tokens_html, unique_labels, visible
from conftest import run_without_torch

XSS = "<img src=x onerror=alert(1)>"
SCRIPT = "</script><script>alert(2)</script>"


def with_hostile_tokens(trace):
    """A copy of the trace whose prompt and generated tokens and candidates hold HTML."""
    tokens = list(trace.tokens)
    tokens[1] = XSS
    steps = [dataclasses.replace(s) for s in trace.steps]
    s = steps[1]
    tokens[s.position] = SCRIPT
    top = [Candidate(SCRIPT if c.token_id == s.token_id else XSS, c.token_id, c.prob) for c in s.top_k]
    steps[1] = dataclasses.replace(s, token=SCRIPT, top_k=top)
    return dataclasses.replace(trace, tokens=tokens, steps=steps)


def test_each_step_shows_the_text_so_far_with_the_new_token_highlighted(tiny_trace):
    view = stepper(tiny_trace)
    for step in tiny_trace.steps:
        view.step = step.index
        assert view.text.count == step.position + 1
        assert view.text.shown_text == "".join(tiny_trace.tokens[: step.position + 1])
        assert view.text.highlight == step.position
        assert view.text.tokens[step.position] == step.token
        assert view.strip.highlight == step.index
        assert view.selection.step == step.index


@pytest.mark.parametrize("layer,head", [(0, None), (1, 0), (1, 3)])
def test_attention_drawn_is_the_row_that_produced_the_token(tiny_trace, layer, head):
    view = stepper(tiny_trace)
    view.layer.value = layer
    view.head.value = MEAN if head is None else head
    for step in tiny_trace.steps:
        view.step = step.index
        drawn = view.text.value_array
        # independent: the query row just before the new token, recomputed through the layer's rows
        if head is None:
            reference = np.mean([tiny_trace.attention(layer, h)[step.position - 1] for h in range(tiny_trace.n_heads)], 0)
        else:
            reference = tiny_trace.attention(layer, head)[step.position - 1]
        np.testing.assert_allclose(drawn[: step.position], reference[: step.position], rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(drawn[: step.position], tiny_trace.step_attention(step.index, layer, head))
        assert not drawn[step.position:].any()  # nothing after the context is coloured
        assert drawn.shape == (tiny_trace.n_tokens,)


def test_bars_hold_the_model_and_sampling_probabilities_of_the_step(tiny_trace):
    view = stepper(tiny_trace)
    for step in tiny_trace.steps:
        view.step = step.index
        assert view.charts.step == step.index  # the browser draws this step's bars
        bars = view.charts.candidates[step.index]
        k = len(step.top_k)
        assert bars["model"][:k] == [c.prob for c in step.top_k]
        assert bars["labels"][:k] == unique_labels([c.token for c in step.top_k], [c.token_id for c in step.top_k],
                                                   plain=True)
        ids = bars["ids"]
        for c in step.sampling_top_k:
            assert bars["sampling"][ids.index(c.token_id)] == c.prob
        chosen = ids.index(step.token_id)
        assert bars["chosen"] == chosen  # outlined and marked in the browser
        assert bars["model"][chosen] == step.prob and bars["sampling"][chosen] == step.sampling_prob
        assert bars["title"].startswith(f"step {step.index}: chose") and f"rank {step.rank}" in bars["title"]
    # the tiny trace was sampled at temperature 0.8: the two distributions differ and both show
    assert view.charts.differs is True


def test_greedy_steps_show_one_distribution(tiny_trace):
    greedy_steps = [dataclasses.replace(s, sampling_top_k=list(s.top_k), sampling_prob=s.prob,
                                        sampling_entropy=s.entropy) for s in tiny_trace.steps]
    greedy = dataclasses.replace(tiny_trace, steps=greedy_steps)
    fig = probability_chart(greedy, 0)
    assert fig.data[1].visible is False and not fig.layout.showlegend
    charts = stepper(greedy).charts
    assert charts.differs is False and charts.sampling_entropy == []


def test_probability_chart_alone_matches_the_stepper(tiny_trace):
    fig, charts = probability_chart(tiny_trace, 5), stepper(tiny_trace, Selection(step=5)).charts
    bars = charts.candidates[5]
    assert list(fig.data[0].y) == bars["model"] and list(fig.data[1].y) == bars["sampling"]
    assert [html.unescape(x) for x in fig.data[0].x] == bars["labels"]  # plotly's labels are escaped, ours text
    assert html.unescape(fig.layout.title.text) == bars["title"]


def test_entropy_series_and_current_step_marker(tiny_trace):
    fig = entropy_chart(tiny_trace)
    assert list(fig.data[0].y) == [s.entropy for s in tiny_trace.steps]
    assert list(fig.data[1].y) == [s.sampling_entropy for s in tiny_trace.steps]
    view = stepper(tiny_trace)
    view.step = 4
    assert view.charts.entropy == [s.entropy for s in tiny_trace.steps]
    assert view.charts.sampling_entropy == [s.sampling_entropy for s in tiny_trace.steps]
    assert view.charts.step == 4


def test_strip_colours_tokens_by_their_probability(tiny_trace):
    view = stepper(tiny_trace)
    np.testing.assert_array_equal(view.strip.value_array, np.float32([s.prob for s in tiny_trace.steps]))
    assert view.strip.tokens == [s.token for s in tiny_trace.steps]
    assert f"rank {tiny_trace.steps[3].rank}" in view.strip.titles[3]


def test_follows_and_updates_the_shared_selection(tiny_trace):
    sel = Selection(layer=1, head=2, step=3)
    view = stepper(tiny_trace, sel)
    assert (view.layer.value, view.head.value, view.step) == (1, 2, 3)
    sel.step, sel.head = 6, None
    assert view.step == 6 and view.head.value == MEAN
    np.testing.assert_array_equal(view.text.value_array[: tiny_trace.steps[6].position],
                                  tiny_trace.step_attention(6, 1, None))
    view.step = 2
    view.head.value = 1
    assert (sel.step, sel.head, sel.layer) == (2, 1, 1)
    view.strip.selected = 7  # a click on a generated token goes to its step
    assert view.step == 7 and sel.step == 7
    view.text.selected = 5  # a click in the text selects that token
    assert sel.token == 5
    view.close()  # a closed view lets go of the shared selection, which outlives it
    sel.step = 1
    assert view.slider.value == 7


def test_a_click_on_candidates_replaced_on_its_way_branches_with_nothing(tiny_trace):
    asked = []
    view = stepper(tiny_trace, on_branch=lambda step, token: asked.append((step, token)))
    view.step = 4
    assert view.candidates.key == "step 4"  # sent with the step's tokens: the page draws it as data-key
    other = next(i for i, c in enumerate(tiny_trace.steps[4].top_k) if c.token_id != tiny_trace.steps[4].token_id)
    # a click on the chips of step 0, still drawn while step 4's were on their way: same index, another token
    view.candidates.set_state({"selected": other, "selected_key": "step 0"})
    assert asked == [] and "changed to those of step 4" in view.branch_note.value
    assert (view.candidates.selected, view.candidates.selected_key) == (-1, "")  # the next click is a change
    view.candidates.set_state({"selected": other, "selected_key": "step 4"})  # on the chips of this step
    assert asked == [(4, tiny_trace.steps[4].top_k[other])] and view.branch_note.value == ""


def test_a_trace_with_no_generated_tokens_gets_a_message_and_its_read_text(tiny_trace):
    read_only = dataclasses.replace(tiny_trace, steps=[], n_prompt=tiny_trace.n_tokens)
    view = stepper(read_only)
    assert view.children == (view.message, view.read_text)  # the text coloured by surprisal (test_views_surprisal)
    assert "lm.generate" in view.message.value and "no decoding steps" in view.message.value.lower()
    fig = entropy_chart(read_only)
    assert fig.layout.annotations[0].text == "no generated tokens"
    with pytest.raises(ValueError, match="no generated tokens"):
        probability_chart(read_only, 0)


def test_html_in_tokens_is_escaped_everywhere(tiny_trace):
    hostile = with_hostile_tokens(tiny_trace)
    view = stepper(hostile)
    view.step = 1
    # the HTML widgets and the chart labels hold only escaped text; the token widget gets plain strings
    for value in [view.info.value, view.focus.value]:
        assert "<img" not in value and "<script" not in value and "</script" not in value
    assert html.escape(visible(SCRIPT)) in view.info.value
    assert view.text.tokens[1] == XSS and view.text.shown_text.endswith(SCRIPT)
    fig_text = probability_chart(hostile, 1).to_json()
    assert "<img" not in fig_text and "<script" not in fig_text and "</script" not in fig_text
    # the SVG charts get plain text, which the browser sets with textContent (checked in test_browser_stepper)
    assert label(XSS, plain=True) in view.charts.candidates[1]["labels"] + view.charts.tokens


def test_token_helpers_escape_and_show_whitespace():
    assert visible(" Paris\n") == "␣Paris↵" and visible("") == "∅" and visible("\t") == "→"
    assert label(XSS) == html.escape(XSS.replace(" ", "␣")[:23] + "…")
    span = token_span(XSS, 0.5, title='" onmouseover="alert(1)')
    assert "<img" not in span and 'title="&quot; onmouseover=&quot;alert(1)"' in span
    assert span.count("<span") == 1
    out = tokens_html(["a", SCRIPT, "b"], values=[0.2, 0.4, 0.0], marked=1)
    assert "</script" not in out and out.count("<span") == 4 and "rgba(31,119,180,0.500)" in out
    assert unique_labels(["x", "x", "y"], [5, 6, 7]) == ["x", "x #6", "y"]


def test_works_at_2048_tokens_with_small_messages(tiny_trace):
    """A long trace: the text goes over once; a step changes a 2,048-float row, not the HTML of 2,048 tokens."""
    n = 2048
    layer = tiny_trace.layers[0]
    rng = np.random.default_rng(0)
    big_layers = [dataclasses.replace(layer, query=rng.standard_normal((layer.query.shape[0], n, layer.query.shape[2]),
                                                                       dtype=np.float32),
                                      key=rng.standard_normal((layer.key.shape[0], n, layer.key.shape[2]),
                                                              dtype=np.float32))]
    steps = [dataclasses.replace(s, index=i, position=n - 3 + i) for i, s in enumerate(tiny_trace.steps[:3])]
    big = dataclasses.replace(tiny_trace, tokens=["tok"] * n, token_ids=[5] * n, n_prompt=n - 3, layers=big_layers,
                              steps=steps)
    view = stepper(big)
    view.step = 2
    assert len(view.text.values) == 4 * n
    np.testing.assert_array_equal(view.text.value_array[: n - 1], big.step_attention(2, 0, None))
    assert len(view.info.value) + len(view.focus.value) < 3000


def test_views_do_not_import_torch(tmp_path, tiny_trace):
    run_without_torch(tiny_trace, tmp_path, (
        "from explorer.views.steps.stepper_view import stepper\n"
        "from explorer.views.positions.positional_view import positional\n"
        "stepper(trace); positional(trace)"
    ))


def test_a_head_out_of_range_in_the_selection_is_clamped(tiny_trace):
    last = tiny_trace.n_heads - 1
    sel = Selection(layer=7, head=50, step=2)
    view = stepper(tiny_trace, sel)
    assert (view.layer.value, view.head.value) == (tiny_trace.n_layers - 1, last)
    sel.head = 99
    assert view.head.value == last
    sel.head = -3  # a negative head means the mean, as the other views read it
    assert view.head.value == MEAN
    np.testing.assert_array_equal(view.text.value_array[: tiny_trace.steps[2].position],
                                  tiny_trace.step_attention(2, tiny_trace.n_layers - 1, None))
