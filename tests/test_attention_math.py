"""The attention-math view: its replayed numbers agree with the trace and with the model's own computation,
its stages draw what they say, it follows the shared selection, escapes tokens and needs no torch."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from explorer import textbook
from explorer.views import Selection
from explorer.views.attention.attention_math import MAX_KEYS, STAGES, attention_math, compute, shown_keys
from conftest import run_without_torch

HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def lm():
    return textbook.load()


@pytest.fixture(scope="module")
def copy_trace(lm):
    return lm.generate("3 1 4 1 5 9 2 |", max_new_tokens=7)


def test_replayed_weights_equal_the_traces_rows(tiny_trace):
    for layer in range(tiny_trace.n_layers):
        for head in range(tiny_trace.n_heads):
            for query in (0, 5, tiny_trace.n_tokens - 1):
                m = compute(tiny_trace, layer, head, query)
                np.testing.assert_allclose(m.weights[: query + 1], tiny_trace.attention_row(layer, head, query),
                                           atol=1e-6)
                assert np.all(m.weights[query + 1 :] == 0) and m.weights.sum() == pytest.approx(1)
                assert m.output is None  # values were not kept for this trace


def test_replayed_output_equals_the_textbook_models_own(lm, copy_trace):
    import torch

    with torch.no_grad():
        lm.model(torch.tensor([copy_trace.token_ids]))
    for layer, seen in enumerate(lm.model.internals()):
        for head in range(copy_trace.n_heads):
            for query in (0, 7, 14):
                m = compute(copy_trace, layer, head, query)
                np.testing.assert_allclose(m.scaled, seen.scores[0, head, query].numpy(), rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(m.output, seen.output[0, head, query].numpy(), atol=1e-5)


def _text(html: str) -> str:
    return re.sub(r"<[^>]+>", " ", html)


def test_every_stage_shows_its_numbers(copy_trace):
    view = attention_math(copy_trace, layer=1, head=0, query=10)
    m = compute(copy_trace, 1, 0, 10)
    seen = {}
    for stage in range(len(STAGES)):
        view.next.click() if stage else None
        assert view.stage.value == stage
        seen[STAGES[stage]] = _text(view.formula.value + view.drawing.value)
        assert STAGES[stage] in view.heading.value
    assert f"{m.query[0]:.2f}".replace("-", "−") in seen["query"] or f"{m.query[0]:.2f}" in seen["query"]
    best = int(np.argmax(m.weights))
    assert f"{m.dots[best]:.4f}" in seen["dot products"]
    assert "÷ √16 = ÷ 4" in seen["scale"] and f"{m.scaled[best]:.4f}" in seen["scale"]
    assert seen["causal mask"].count("−∞") >= 2 * (copy_trace.n_tokens - 11)  # the mask and the masked score
    assert f"{m.weights[best]:.4f}" in seen["softmax"]
    assert f"{m.output[0]:.2f}" in seen["weighted sum"]
    view.next.click()
    assert view.stage.value == len(STAGES) - 1  # the last step stays the last
    view.back.click()
    assert view.stage.value == len(STAGES) - 2


def test_the_copy_head_looks_at_the_source_digit(copy_trace):
    # query 10 holds the copy of the digit at 2, so it writes the digit at 3: the copy head puts its weight there
    view = attention_math(copy_trace, layer=1, head=0, query=10)
    view.stage.value = STAGES.index("softmax")
    weights = [float(x) for x in re.findall(r"<b>([01]\.\d{4})</b>", view.drawing.value)]
    assert int(np.argmax(weights)) == 3


def test_without_values_the_last_step_says_so(tiny_trace):
    view = attention_math(tiny_trace, layer=0, head=1)
    view.stage.value = len(STAGES) - 1
    assert "Values were not captured" in view.drawing.value and "keep_values=True" in view.drawing.value


def test_follows_and_updates_the_selection(copy_trace):
    sel = Selection(layer=1, head=2, token=12)
    view = attention_math(copy_trace, selection=sel)
    assert (view.layer.value, view.head.value, view.query.value) == (1, 2, 12)
    sel.layer, sel.head, sel.token = 0, 3, 9
    assert (view.layer.value, view.head.value, view.query.value) == (0, 3, 9)
    assert "position 9" in view.heading.value
    view.query.value = 4
    view.head.value = 1
    assert (sel.token, sel.head) == (4, 1)
    sel.head = None  # the mean of heads has no single computation: the view keeps its head
    assert view.head.value == 1


def test_default_query_is_the_one_that_wrote_the_first_new_token(copy_trace, lm):
    assert attention_math(copy_trace).query.value == copy_trace.n_prompt - 1
    assert attention_math(lm.trace("1 2 3")).query.value == 2


def test_tokens_are_shown_as_text(copy_trace):
    hostile = dataclasses.replace(copy_trace, tokens=[HOSTILE, "</script>", *copy_trace.tokens[2:]])
    view = attention_math(hostile, layer=0, head=0, query=5)
    for stage in range(len(STAGES)):
        view.stage.value = stage
        html = view.heading.value + view.formula.value + view.drawing.value
        assert HOSTILE not in html and "</script>" not in html
    assert "&lt;img␣src=x␣onerror=alert(1)&gt;" in view.drawing.value  # spaces made visible


def test_long_traces_draw_a_bounded_number_of_keys(tiny_trace):
    long = dataclasses.replace(tiny_trace)
    m = compute(long, 0, 0, long.n_tokens - 5)
    keys = shown_keys(m, long.n_tokens - 5, limit=8)
    assert len(keys) <= 8 and long.n_tokens - 5 in keys
    assert int(np.argmax(m.weights)) in keys
    assert any(k > long.n_tokens - 5 for k in keys)  # some the mask hides, so the mask has something to show
    assert len(shown_keys(m, 3)) == min(long.n_tokens, MAX_KEYS)


def test_a_weights_only_layer_says_it_cannot_be_replayed():
    from conftest import make_tiny_lm

    trace = make_tiny_lm("gpt_neo").trace("hello")
    view = attention_math(trace)
    assert "Cannot replay" in view.drawing.value


def test_the_view_needs_no_torch(copy_trace, tmp_path):
    run_without_torch(copy_trace, tmp_path, (
        "from explorer.views.attention.attention_math import attention_math\n"
        "view = attention_math(trace, layer=1, head=0)\n"
        "for s in range(7): view.stage.value = s"
    ))


def test_a_head_out_of_range_in_the_selection_is_clamped(tiny_trace):
    last = tiny_trace.n_heads - 1
    sel = Selection(layer=9, head=50, token=3)
    view = attention_math(tiny_trace, selection=sel)
    assert (view.layer.value, view.head.value) == (tiny_trace.n_layers - 1, last)
    sel.head, sel.layer = 1, 0
    sel.head, sel.layer = 99, 40
    assert (view.layer.value, view.head.value) == (tiny_trace.n_layers - 1, last)
    assert f"head {last}" in view.heading.value


@pytest.fixture(scope="module")
def window_trace():
    from conftest import make_tiny_lm

    return make_tiny_lm("mistral").trace("a sliding window")  # window 4, 17 tokens


def test_the_mask_formula_names_the_sliding_window(window_trace, tiny_trace):
    assert window_trace.layers[0].sliding_window == 4
    view = attention_math(window_trace, layer=0, head=0, query=10)
    view.stage.value = STAGES.index("causal mask")
    formula = _text(view.formula.value)
    assert "j > 10" in formula and "j ≤ 6" in formula and "window of 4" in formula
    assert compute(window_trace, 0, 0, 10).allowed.tolist() == [6 < j <= 10 for j in range(window_trace.n_tokens)]
    plain = attention_math(tiny_trace, layer=0, head=0, query=10)
    plain.stage.value = STAGES.index("causal mask")
    assert "j > 10" in _text(plain.formula.value) and "window" not in _text(plain.formula.value)
    early = attention_math(window_trace, layer=0, head=0, query=2)
    early.stage.value = STAGES.index("causal mask")
    assert "j > 2" in _text(early.formula.value) and "−∞ if j > 2 or" not in _text(early.formula.value)
