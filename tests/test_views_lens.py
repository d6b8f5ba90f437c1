"""The logit lens view, Python side: what it sends equals the trace's lens arrays; hover and click messages; the
selection both ways; a trace without a lens; a 2,048-position lens stays small and quick."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from conftest import run_without_torch
from explorer.views import Selection
from explorer.views.explorer_view import ExplorerView, _tabs
from explorer.views.meaning.commitment_view import CommitmentStrip
from explorer.views.meaning.lens_view import LensView, lens
from synthetic import synthetic_trace, with_analysis


def small_vocabulary(n_tokens: int, n_layers: int, vocab: int = 40, seed: int = 0):
    """A synthetic trace whose tokens repeat `vocab` words, so that its random lens is quick to make."""
    trace = synthetic_trace(n_tokens, n_layers=n_layers, seed=seed)
    trace.token_ids = [i % vocab for i in range(n_tokens)]
    trace.tokens = [f" w{i % vocab}" if i % vocab != 7 else "\n<b>x</b>" for i in range(n_tokens)]
    return trace


@pytest.fixture
def steps_trace():
    return with_analysis(small_vocabulary(30, n_layers=4), n_generated=8, lens="steps", seed=1)


@pytest.fixture
def all_trace():
    return with_analysis(small_vocabulary(25, n_layers=3), n_generated=0, lens="all", seed=2)


def decoded(view: LensView) -> dict[str, np.ndarray]:
    """The view's binary traits as arrays, as the browser reads them."""
    shape = (view.n_layers, view.n_columns)
    return {
        "top1": np.frombuffer(view.top1, dtype=f"<u{view.top1_width}").reshape(shape),
        "next_code": np.frombuffer(view.next_code, dtype=np.uint8).reshape(shape),
        "top1_code": np.frombuffer(view.top1_code, dtype=np.uint8).reshape(shape),
        "next_index": np.frombuffer(view.next_index, dtype="<i4"),
    }


def code(p: float) -> int:
    return 255 if math.isnan(p) else int(round(254 * min(max(p, 0.0), 1.0)))


@pytest.mark.parametrize("name", ["steps_trace", "all_trace"])
def test_every_cell_sends_the_lens_top1_and_probabilities(name, request):
    trace = request.getfixturevalue(name)
    view, data, lz = lens(trace), decoded(lens(trace)), trace.lens
    assert (view.n_layers, view.n_columns) == (trace.n_layers, len(lz.positions))
    for layer in range(lz.n_layers):
        for c, position in enumerate(lz.positions):
            best = lz.top_k(layer, int(position))[0]
            assert view.words[data["top1"][layer, c]] == best.token
            assert data["top1_code"][layer, c] == code(best.prob)
            assert data["next_code"][layer, c] == code(lz.next_token_prob(layer, int(position)))


def test_the_last_position_has_no_next_token(all_trace):
    data, last = decoded(lens(all_trace)), all_trace.n_tokens - 1
    assert all_trace.lens.positions[-1] == last
    assert (data["next_code"][:, -1] == 255).all() and (data["next_code"][:, :-1] != 255).all()
    assert lens(all_trace).target_labels[-1] == ""


def test_next_index_marks_the_cells_whose_top1_came_next(steps_trace):
    view, data = lens(steps_trace), decoded(lens(steps_trace))
    lz = steps_trace.lens
    for c, position in enumerate(lz.positions):
        came = steps_trace.token_ids[position + 1]
        right = [layer for layer in range(lz.n_layers) if lz.top_ids[layer, c, 0] == came]
        marked = [layer for layer in range(lz.n_layers) if data["top1"][layer, c] == data["next_index"][c]]
        assert marked == right
        assert right == [layer for layer in range(lz.n_layers) if lz.next_token_rank(layer, int(position)) == 1]
    assert view.mode == "steps"


def test_columns_are_labelled_by_step_or_by_token(steps_trace, all_trace):
    steps_view, all_view = lens(steps_trace), lens(all_trace)
    assert steps_view.column_labels == [f"step {s.index}" for s in steps_trace.steps]
    assert steps_view.target_labels == [s.token for s in steps_trace.steps]  # the token each column produced
    assert all_view.mode == "all"
    assert all_view.column_labels == [all_trace.tokens[p] for p in all_trace.lens.positions]
    assert all_view.target_labels[:-1] == all_trace.tokens[1:]


def test_a_generated_trace_with_every_position_is_shown_by_position():
    trace = with_analysis(small_vocabulary(20, n_layers=2), n_generated=5, lens="all")
    view = lens(trace)
    assert view.mode == "all" and view.n_columns == trace.n_tokens
    assert view.steps[trace.steps[2].position - 1] == 2 and view.steps[0] is None


@pytest.mark.parametrize("name", ["steps_trace", "all_trace"])
def test_hover_message_answers_the_cells_top_k(name, request):
    trace = request.getfixturevalue(name)
    view, sent = lens(trace), []
    view.send = sent.append
    lz = trace.lens
    for layer, c in [(0, 0), (lz.n_layers - 1, len(lz.positions) - 1), (1, 2)]:
        view._on_msg(view, {"kind": "cell", "layer": layer, "column": c}, [])
        msg, position = sent[-1], int(lz.positions[c])
        assert (msg["layer"], msg["column"], msg["position"]) == (layer, c, position)
        assert msg["top"] == [[t.token, pytest.approx(t.prob)] for t in lz.top_k(layer, position)]
        assert msg["token"] == trace.tokens[position]
        if position + 1 < trace.n_tokens:
            assert msg["next"] == trace.tokens[position + 1]
            assert msg["next_prob"] == pytest.approx(lz.next_token_prob(layer, position))
            assert msg["next_rank"] == lz.next_token_rank(layer, position)
        else:
            assert msg["next"] is None and msg["next_prob"] is None and msg["next_rank"] is None
    n = len(sent)
    for bad in [{"kind": "cell", "layer": 99, "column": 0}, {"kind": "cell", "layer": 0}, "cell", {"kind": "x"}]:
        view._on_msg(view, bad, [])
    assert len(sent) == n


def test_a_click_sets_the_layer_and_step(steps_trace):
    sel = Selection()
    view = lens(steps_trace, selection=sel)
    view._on_msg(view, {"kind": "pick", "layer": 2, "column": 5}, [])
    assert (sel.layer, sel.step) == (2, 5)
    assert steps_trace.steps[sel.step].position - 1 == steps_trace.lens.positions[5]
    assert (view.layer, view.column) == (2, 5)  # the highlight follows
    view._on_msg(view, {"kind": "pick", "layer": 40, "column": 1}, [])  # out of range: nothing
    assert (sel.layer, sel.step) == (2, 5)


def test_a_click_sets_the_layer_and_token(all_trace):
    sel = Selection()
    view = lens(all_trace, selection=sel)
    view._on_msg(view, {"kind": "pick", "layer": 1, "column": 17}, [])
    assert (sel.layer, sel.token) == (1, int(all_trace.lens.positions[17]))
    assert (view.layer, view.column) == (1, 17)


def test_the_highlight_follows_a_selection_made_elsewhere(steps_trace, all_trace):
    sel = Selection()
    steps_view, all_view = lens(steps_trace, selection=sel), lens(all_trace, selection=sel)
    sel.step, sel.layer = 3, 2
    assert (steps_view.layer, steps_view.column) == (2, 3)
    assert all_view.layer == 2  # clamped into its 3 layers
    sel.layer = 3
    assert (steps_view.layer, all_view.layer) == (3, 2)
    sel.token = 11
    assert all_view.column == all_trace.lens.column(11)
    sel.step = 99  # no such step: nothing highlighted
    assert steps_view.column == -1
    steps_view.close()
    sel.step = 1
    assert steps_view.column == -1  # a closed view lets go of the selection


def test_a_trace_without_a_lens_says_how_to_get_one():
    view = lens(with_analysis(small_vocabulary(10, n_layers=2), lens=None))
    assert 'lm.generate(prompt, lens="steps")' in view.message and 'lm.trace(text, lens="all")' in view.message
    assert "\n" not in view.message
    assert view.n_layers == 0 and view.top1 == b"" and repr(view) == "LensView(no lens)"
    view._on_msg(view, {"kind": "pick", "layer": 0, "column": 0}, [])  # nothing to pick, nothing breaks


def test_a_long_lens_builds_quickly_and_sends_little():
    trace = with_analysis(small_vocabulary(2048, n_layers=30, vocab=300), n_generated=6, lens="all")
    started = time.perf_counter()
    view = lens(trace)
    elapsed = time.perf_counter() - started
    binary = len(view.top1) + len(view.next_code) + len(view.top1_code) + len(view.next_index)
    assert (view.n_layers, view.n_columns) == (30, 2048)
    assert elapsed < 1.0, elapsed
    assert binary <= 30 * 2048 * 4 + 2048 * 4  # 2 bytes of index and 2 of colour a cell
    first = decoded(view)["top1"]
    assert view.words[first[29, 2047]] == trace.lens.top_k(29, 2047)[0].token


def test_the_explorer_has_a_logit_lens_tab(steps_trace):
    titles = [title for title, _ in _tabs()]
    assert titles.index("Logit lens") > titles.index("All heads")
    explorer = ExplorerView(steps_trace)
    explorer.tabs.selected_index = titles.index("Logit lens")
    (tab,) = explorer.tabs.children[titles.index("Logit lens")].children
    strip, view = tab.children
    assert isinstance(strip, CommitmentStrip) and strip.trace is explorer.trace
    assert isinstance(view, LensView) and view.selection is explorer.selection
    assert explorer.message.value == ""


def test_the_view_needs_no_torch(steps_trace, tmp_path):
    run_without_torch(steps_trace, tmp_path, "from explorer.views import lens\nv = lens(trace)\n"
                      "assert v.n_columns == len(trace.steps) and v.words")
