"""Surprisal colouring in the stepper and the read-text view, checked against the trace's surprisal array."""

from __future__ import annotations

import html
import math

import numpy as np
import pytest

from explorer import views
from explorer.views.steps.stepper_view import stepper
from explorer.views.steps.token_text import ATTENTION_COLOUR, SURPRISAL_COLOUR
from explorer.views.frontend.tokens_html import SURPRISAL_FULL, most_surprising, surprisal_legend, surprisal_words
from conftest import run_without_torch
from synthetic import synthetic_trace, with_analysis

XSS = "<img src=x onerror=alert(1)>"


def analysed(n: int = 24, n_generated: int = 6):
    """A synthetic trace with a known surprisal everywhere but position 0, and `n_generated` steps."""
    return with_analysis(synthetic_trace(n, n_layers=2, n_heads=3, kv_heads=1), n_generated=n_generated, lens=None)


def test_stepper_colours_by_the_traces_surprisal_and_back(tiny_trace):
    view = stepper(tiny_trace)
    assert view.colour.options == ("attention", "surprisal") and view.colour.value == "attention"
    view.step = 3
    view.colour.value = "surprisal"
    np.testing.assert_array_equal(view.text.value_array, np.float32(tiny_trace.surprisal))  # NaN where NaN
    assert view.text.value_unit == "nats" and view.text.value_name == "surprisal"
    assert view.text.scale == SURPRISAL_FULL and view.text.rgb == SURPRISAL_COLOUR["rgb"]
    assert view.legend.layout.display != "none" and "surprisal" in view.about_text.value
    # the text still grows with the steps; the values stay the surprisal of every token
    for step in tiny_trace.steps:
        view.step = step.index
        assert view.text.count == step.position + 1 and view.text.highlight == step.position
        np.testing.assert_array_equal(view.text.value_array, np.float32(tiny_trace.surprisal))
    view.colour.value = "attention"
    assert view.text.value_name == ATTENTION_COLOUR["value_name"] and view.text.value_unit == ""
    assert view.legend.layout.display == "none"
    s = tiny_trace.steps[view.step]
    np.testing.assert_array_equal(view.text.value_array[: s.position],
                                  tiny_trace.step_attention(view.step, view.layer.value, view.head_index))


def test_generated_tokens_surprisal_is_minus_log_of_their_probability(tiny_trace):
    view = stepper(tiny_trace)
    view.colour.value = "surprisal"
    drawn = view.text.value_array
    for s in tiny_trace.steps:
        assert drawn[s.position] == pytest.approx(-math.log(s.prob), rel=1e-5)
        # hovering a generated token also gives its probability and rank
        assert view.text.titles[s.position] == f"generated at step {s.index} · p {s.prob:.4f} · rank {s.rank}"
    assert all(view.text.titles[i] == "" for i in range(tiny_trace.n_prompt))
    assert np.isnan(drawn[0])  # nothing before the first token to predict it from


def test_focus_line_names_the_most_surprising_tokens_so_far():
    trace = analysed()
    view = stepper(trace)
    view.colour.value = "surprisal"
    view.step = 2
    shown = trace.surprisal[: trace.steps[2].position + 1]
    top = int(np.nanargmax(shown))
    first = view.focus.value.split("most surprising so far: ", 1)[1]
    assert first.split("<small>#", 1)[1].startswith(f"{top}</small> {surprisal_words(shown[top])}")
    view.colour.value = "attention"
    assert "most attended" in view.focus.value


def test_nan_surprisal_is_left_uncoloured_and_said_not_known():
    trace = analysed()
    trace.surprisal[3:7] = np.nan  # as the prompt of a version-1 trace
    view = stepper(trace)
    view.colour.value = "surprisal"
    drawn = view.text.value_array
    assert np.isnan(drawn[[0, 3, 4, 5, 6]]).all()
    np.testing.assert_array_equal(drawn, trace.surprisal)
    assert surprisal_words(float("nan")) == "not known"
    assert surprisal_words(math.log(2) * 3) == "2.08 nats (3.00 bits)"
    line = most_surprising(trace.tokens, trace.surprisal)
    assert all(f"#{i}</small>" not in line for i in (0, 3, 4, 5, 6))


def test_a_read_trace_shows_the_read_text_view_in_the_stepper():
    read = analysed(n_generated=0)
    view = stepper(read)
    assert view.children == (view.message, view.read_text)
    text = view.read_text.text
    assert text.count == read.n_tokens and text.tokens == read.tokens and text.highlight == -1
    np.testing.assert_array_equal(text.value_array, read.surprisal)
    assert (text.value_unit, text.scale) == ("nats", SURPRISAL_FULL)
    known = read.surprisal[~np.isnan(read.surprisal)]
    assert f"{len(known)} of {read.n_tokens} tokens" in view.read_text.summary.value
    assert html.escape(surprisal_words(known.mean())) in view.read_text.summary.value
    assert f"perplexity {math.exp(known.mean()):.4g}" in view.read_text.summary.value
    view.selection.token = 4
    assert text.selected == 4
    view.close()  # closes the read-text view with it: it lets go of the shared selection
    view.selection.token = 6
    assert text.selected == 4


def test_read_text_follows_and_sets_the_selected_token():
    read = analysed(n_generated=0)
    sel = views.Selection()
    view = views.read_text(read, sel)
    view.text.selected = 5  # a click in the browser
    assert sel.token == 5
    sel.token = 2
    assert view.text.selected == 2
    view.close()
    sel.token = 7
    assert view.text.selected == 2


def test_a_trace_with_no_known_surprisal_says_so():
    read = analysed(n_generated=0)
    read.surprisal[:] = np.nan
    view = views.read_text(read)
    assert "No surprisal known" in view.summary.value
    assert np.isnan(view.text.value_array).all()


def test_html_in_tokens_stays_text_in_the_surprisal_lines():
    trace = analysed()
    trace.tokens[int(np.nanargmax(trace.surprisal))] = XSS
    view = views.read_text(trace)
    assert XSS in view.text.tokens  # plain strings: the browser sets them with textContent
    for value in (view.surprising.value, view.summary.value, surprisal_legend()):
        assert "<img" not in value
    assert html.escape(XSS.replace(" ", "␣")) in view.surprising.value


def test_read_text_needs_no_torch(tmp_path):
    trace = analysed(n_generated=3)
    run_without_torch(trace, tmp_path, "from explorer import views\nviews.read_text(trace)\n"
                                       "v = views.stepper(trace); v.colour.value = 'surprisal'")


def test_a_long_trace_sends_its_surprisal_once(tiny_trace):
    """Moving the step in surprisal mode changes count and highlight, not the 4·T bytes of values."""
    view = stepper(tiny_trace)
    view.colour.value = "surprisal"
    sent = []
    view.text.observe(lambda c: sent.append(c["name"]), ["values", "count", "highlight"])
    view.step = 5
    assert "values" not in sent and {"count", "highlight"} <= set(sent)
