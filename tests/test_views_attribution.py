"""The attribution view (Python side): what it sends for a step is the trace's attribution of that step, it follows
the selection, a click selects the head and opens it, and a trace without attribution says why."""

from __future__ import annotations

import numpy as np
from conftest import make_tiny_lm

from explorer.views import Selection
from explorer.views.explorer_view import ExplorerView
from explorer.views.meaning.attribution_view import NO_ATTRIBUTION, PENDING, AttributionView


def test_the_grid_is_the_steps_attribution_and_follows_the_selected_step():
    trace = make_tiny_lm("llama").generate("Hello, world", max_new_tokens=5, progress=False)
    selection = Selection()
    view = AttributionView(trace, selection)
    for step in (0, 3, 4):
        selection.step = step
        shares = trace.logit_attribution(step)
        grid = np.frombuffer(view.values, dtype="<f4").reshape(view.n_layers, view.n_heads + 1)
        np.testing.assert_array_equal(grid[:, :-1], shares.heads)
        np.testing.assert_array_equal(grid[:, -1], shares.mlp)
        assert f"step {step}" in view.title and trace.steps[step].token in view.title
        parts = dict(view.summary)
        assert parts["logit"] == shares.logit
        assert abs(sum(v for k, v in parts.items() if k != "logit") - shares.logit) < 1e-3  # the parts add up
        up = [r for r in view.ranked if r[1] > 0]
        assert [r[1] for r in up] == sorted(shares.heads[shares.heads > 0].tolist(), reverse=True)[:5]


def test_a_click_on_a_head_selects_it_and_opens_the_heatmap_there():
    trace = make_tiny_lm("llama").generate("Hello, world", max_new_tokens=5, progress=False)
    explorer = ExplorerView(trace)
    explorer.selection.step = 2
    explorer.show_tab("Attribution")
    (view,) = explorer.tabs.children[explorer.tabs.selected_index].children
    assert isinstance(view, AttributionView)
    view._on_msg(view, {"kind": "open", "layer": 1, "head": 3}, [])
    assert (explorer.selection.layer, explorer.selection.head, explorer.selection.step) == (1, 3, 2)
    assert explorer.tabs.get_title(explorer.tabs.selected_index) == "Heatmap"
    assert (view.layer, view.head) == (1, 3)  # the highlight follows
    view._on_msg(view, {"kind": "open", "layer": 9, "head": 0}, [])  # out of range: nothing changes
    view._on_msg(view, {"kind": "open", "layer": "x"}, [])
    assert (explorer.selection.layer, explorer.selection.head) == (1, 3)


def test_a_trace_without_attribution_says_why_and_one_waiting_for_its_lens_says_it_comes():
    lm = make_tiny_lm("llama")
    bare = lm.generate("Hello", max_new_tokens=3, lens=None, progress=False)
    assert AttributionView(bare).message == NO_ATTRIBUTION
    bare.lens_pending = True
    assert AttributionView(bare).message == PENDING


def test_the_stepper_links_to_the_attribution_of_its_step():
    trace = make_tiny_lm("llama").generate("Hello, world", max_new_tokens=5, progress=False)
    explorer = ExplorerView(trace)
    (stepper,) = explorer.tabs.children[0].children
    stepper.slider.value = 3
    stepper.which_heads.click()
    assert explorer.tabs.get_title(explorer.tabs.selected_index) == "Attribution"
    (view,) = explorer.tabs.children[explorer.tabs.selected_index].children
    assert "(step 3)" in view.title
    bare = ExplorerView(make_tiny_lm("llama").generate("Hello", max_new_tokens=3, lens=None, progress=False))
    assert not hasattr(bare.tabs.children[0].children[0], "which_heads")  # nothing to link to


def test_the_contribution_view_sends_the_steps_graph_and_follows_the_step():
    from explorer.views.meaning.contribution_view import ContributionView

    trace = make_tiny_lm("llama").generate("Hello, world", max_new_tokens=5, progress=False, keep_values=True)
    selection = Selection()
    view = ContributionView(trace, selection)
    for step in (0, 3):
        selection.step = step
        graph = trace.contribution_graph(step)
        edges = np.frombuffer(view.edges, dtype="<f4").reshape(view.n_layers, view.n_tokens)
        np.testing.assert_array_equal(edges, graph.edges)
        np.testing.assert_array_equal(np.frombuffer(view.residual, dtype="<f4"), graph.residual)
        assert view.tokens == trace.tokens[: graph.position + 1] and f"(step {step})" in view.title
    bare = make_tiny_lm("llama").generate("Hello", max_new_tokens=3, lens=None, progress=False)
    assert ContributionView(bare).message == NO_ATTRIBUTION
