"""A head's queries and keys in one picture: the alignment leaves every softmax row as `trace.attention` has it, the
projection is numpy's PCA, bad choices are clear errors, and the view draws what the map says."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import make_tiny_lm, run_without_torch
from synthetic import synthetic_trace

from explorer.errors import ExplorerError, MissingDataError, SelectionError
from explorer.trace import WeightsLayer
from explorer.views import Selection
from explorer.views.explorer_view import ExplorerView
from explorer.views.meaning.query_key_view import query_key, query_key_figure, token_colours

XSS = "<img src=x onerror=alert(1)>"


def aligned(trace, layer: int, head: int):
    """The head's queries and keys [T, d] as the map says it moved them: queries·c, keys/c + t (float64)."""
    qk = trace.query_key_map(layer, head)
    store = trace.layers[layer]
    group = store.n_heads // store.key.shape[0]
    q = store.query[head].astype(np.float64) * qk.scale
    k = store.key[head // group].astype(np.float64) / qk.scale + qk.shift.astype(np.float64)
    return qk, q, k


def plain_softmax_rows(q, k, scaling: float, window: int | None) -> np.ndarray:
    """softmax(q·kᵀ·scaling) over the keys each row may see (causal, a sliding window), written out."""
    n = len(q)
    out = np.zeros((n, n))
    for i in range(n):
        keys = [j for j in range(i + 1) if window is None or i - j < window]
        scores = np.array([q[i] @ k[j] for j in keys]) * scaling
        weights = np.exp(scores - scores.max())
        out[i, keys] = weights / weights.sum()
    return out


@pytest.fixture
def trace():
    t = synthetic_trace(48, n_layers=3, n_heads=4, kv_heads=2, dim=16, seed=4)
    t.layers[1].sliding_window = 7
    t.tokens[5] = XSS
    return t


def test_alignment_leaves_every_softmax_row_unchanged(trace):
    for layer in range(2):
        for head in range(trace.n_heads):
            qk, q, k = aligned(trace, layer, head)
            assert qk.moved and qk.scale != 1.0
            np.testing.assert_allclose(q.mean(0), k.mean(0), atol=1e-5)  # the centroids coincide
            np.testing.assert_allclose(np.linalg.norm(q, axis=1).mean(),  # and, before the move, the mean norms
                                       np.linalg.norm(k - qk.shift, axis=1).mean(), rtol=1e-6)
            rows = plain_softmax_rows(q, k, trace.layers[layer].scaling, trace.layers[layer].sliding_window)
            np.testing.assert_allclose(rows, trace.attention(layer, head), atol=2e-6)


def test_a_layer_with_a_soft_cap_or_sinks_is_scaled_only(trace):
    trace.layers[0] = dataclasses.replace(trace.layers[0], softcap=2.0)
    trace.layers[2] = dataclasses.replace(trace.layers[2], sinks=np.full(trace.n_heads, 1.5, dtype=np.float32))
    for layer in (0, 2):
        qk, q, k = aligned(trace, layer, 1)
        assert not qk.moved and not qk.shift.any()
        store = trace.layers[layer]
        same = dataclasses.replace(store, query=np.repeat(q[None], 4, 0).astype(np.float32),
                                   key=np.repeat(k[None], 2, 0).astype(np.float32))
        np.testing.assert_allclose(same.rows(1, 0, trace.n_tokens), trace.attention(layer, 1), atol=2e-6)
    # moving the keys here would change the rows: the reason it is not done
    store = trace.layers[0]
    qk, q, k = aligned(trace, 0, 1)
    shifted = dataclasses.replace(store, query=np.repeat(q[None], 4, 0).astype(np.float32),
                                  key=np.repeat((k + q.mean(0) - k.mean(0))[None], 2, 0).astype(np.float32))
    assert np.abs(shifted.rows(1, 0, trace.n_tokens) - trace.attention(0, 1)).max() > 1e-3


def test_rotary_model_rows_unchanged():
    lm_trace = make_tiny_lm("llama").generate("Hello, world", max_new_tokens=6, temperature=0.0, progress=False)
    assert lm_trace.positional.kind == "rotary"
    for layer in range(lm_trace.n_layers):
        for head in range(lm_trace.n_heads):
            _, q, k = aligned(lm_trace, layer, head)
            rows = plain_softmax_rows(q, k, lm_trace.layers[layer].scaling, lm_trace.layers[layer].sliding_window)
            np.testing.assert_allclose(rows, lm_trace.attention(layer, head), atol=1e-5)


def test_the_projection_is_numpys_pca(trace):
    qk, q, k = aligned(trace, 1, 3)
    points = np.concatenate([q, k])
    centred = points - points.mean(0)
    values, vectors = np.linalg.eigh(np.cov(centred.T))  # ascending
    expected = centred @ vectors[:, ::-1][:, :2]
    got = np.concatenate([qk.queries, qk.keys])
    for axis in range(2):
        sign = np.sign(got[:, axis] @ expected[:, axis])
        np.testing.assert_allclose(got[:, axis], sign * expected[:, axis], atol=1e-4)
    np.testing.assert_allclose(qk.explained, values[::-1][:2] / values.sum(), rtol=1e-5)
    assert qk.queries.shape == qk.keys.shape == (trace.n_tokens, 2)


@pytest.mark.parametrize(("layer", "head", "words"), [
    (3, 0, "layer 3 is out of range: this trace has layers 0..2"), (-1, 0, "layer -1 is out of range"),
    (0, 4, "head 4 is out of range: this trace has heads 0..3"), ("1", 0, "layer must be a whole number"),
    (0, 1.5, "head must be a whole number"), (0, None, "head must be a whole number")])
def test_a_bad_layer_or_head_is_a_clear_error(trace, layer, head, words):
    with pytest.raises(SelectionError, match=words) as info:
        trace.query_key_map(layer, head)
    assert isinstance(info.value, ExplorerError)
    if head is not None:  # the view's head None is the selection's
        with pytest.raises(SelectionError, match=words):
            query_key(trace, layer=layer, head=head)


def test_a_layer_kept_as_weights_says_so(trace):
    packed = np.concatenate([trace.attention(0, h)[np.tril_indices(trace.n_tokens)][None] for h in range(4)])
    trace.layers[0] = WeightsLayer(packed=packed)
    with pytest.raises(MissingDataError, match="keeps attention weights only"):
        trace.query_key_map(0, 1)
    view = query_key(trace, layer=0, head=1)
    assert "keeps attention weights only" in view.problem.value and view.plot_box.children == ()
    view.layer.value = 1  # another layer draws again
    assert view.problem.value == "" and len(view.plot_box.children) == 1


def test_the_figure_draws_every_query_and_key_with_its_token(trace):
    qk = trace.query_key_map(2, 1)
    fig = query_key_figure(trace, 2, 1)
    queries, keys = fig.data
    assert (queries.name, keys.name) == ("queries", "keys") and queries.type == keys.type == "scattergl"
    assert queries.marker.symbol != keys.marker.symbol  # told apart by shape as well as by the legend
    np.testing.assert_array_equal(np.c_[queries.x, queries.y], qk.queries)
    np.testing.assert_array_equal(np.c_[keys.x, keys.y], qk.keys)
    assert list(queries.customdata) == list(range(trace.n_tokens)) == list(queries.marker.color)
    assert queries.text[5] == "&lt;img␣src=x␣onerror=alert(1)&gt;"  # plotly shows the entities as the characters
    assert queries.text[7] == "␣t7" and "layer 2, head 1" in fig.layout.title.text
    by_token = query_key_figure(trace, 2, 1, colour_by="token").data[0].marker.color
    assert list(by_token) == token_colours(trace.token_ids)
    with pytest.raises(ValueError, match="colour_by must be one of"):
        query_key_figure(trace, 2, 1, colour_by="size")


def test_token_colours_are_one_a_token():
    colours = token_colours([5, 9, 5, 2, 9])
    assert colours[0] == colours[2] and colours[1] == colours[4] and len({colours[0], colours[1], colours[3]}) == 3


def test_pickers_follow_and_set_the_selection(trace):
    sel = Selection(layer=1, head=None)
    view = query_key(trace, sel)
    assert (view.layer.value, view.head.value) == (1, 0)  # the mean of heads shows head 0
    view.head.value = 3
    assert (sel.layer, sel.head) == (1, 3) and "layer 1, head 3" in view.figure.layout.title.text
    sel.layer = 2
    assert view.layer.value == 2 and "layer 2, head 3" in view.figure.layout.title.text
    view.colour.value = "token"
    assert list(view.figure.data[1].marker.color) == token_colours(trace.token_ids)
    view.close()
    sel.layer = 0  # a closed view follows no more
    assert view.layer.value == 2


def test_the_explorer_has_a_queries_and_keys_tab(trace):
    explorer = ExplorerView(trace)
    explorer.show_tab("Queries & keys")
    (view,) = explorer.tabs.children[explorer.tabs.selected_index].children
    assert view.selection is explorer.selection and explorer.message.value == ""
    titles = [t for t, _ in explorer.builders]
    assert titles.index("Queries & keys") > titles.index("Logit lens")  # in the meaning group, after the lens


def test_the_view_needs_no_torch(trace, tmp_path):
    run_without_torch(trace, tmp_path, "from explorer.views import query_key\nv = query_key(trace, layer=1, head=2)\n"
                      "assert len(v.figure.data[0].x) == trace.n_tokens")
