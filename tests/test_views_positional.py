"""The positional view: what it plots equals arrays computed here independently from the trace."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from explorer.trace import Positional
from explorer.views.positions.positional_view import (
    MAX_SIZE,
    positional,
    relative_scores,
    rotary_layout,
    rotary_tables,
    thin,
)

from conftest import make_tiny_lm


@pytest.fixture(scope="module")
def gpt2_trace():
    return make_tiny_lm("gpt2").generate("Hello, world", max_new_tokens=4, temperature=0.0, progress=False)


@pytest.fixture(scope="module")
def neox_trace():
    return make_tiny_lm("gpt_neox").trace("partial rotary")


def numpy_cosine(x):
    norms = np.sqrt((x.astype(np.float64) ** 2).sum(1))
    return np.array([[a @ b / (na * nb) for b, nb in zip(x, norms)] for a, na in zip(x.astype(np.float64), norms)])


def closed_form_score(q, k, inv_freq, distance, scaling=1.0):
    """(R_m q)·(R_n k) from the formula, d = m − n: R_m q · R_n k = q · R_(n−m) k, which per plane is
    (q1k1 + q2k2) cos(dθ) + (q1k2 − q2k1) sin(dθ)."""
    h = inv_freq.size
    q1, q2, k1, k2 = q[:h], q[h:], k[:h], k[h:]
    angle = np.outer(distance, inv_freq.astype(np.float64))
    return scaling**2 * ((q1 * k1 + q2 * k2) * np.cos(angle) + (q1 * k2 - q2 * k1) * np.sin(angle)).sum(1)


def test_learned_heatmap_and_similarity_equal_numpy(gpt2_trace):
    view = positional(gpt2_trace)
    table = gpt2_trace.positional.embeddings
    heat, sim = view.figure.data
    np.testing.assert_allclose(np.asarray(heat.z), table, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(sim.z), numpy_cosine(table), atol=1e-6)
    assert list(heat.y) == list(range(table.shape[0])) and list(heat.x) == list(range(table.shape[1]))
    assert "Learned" in view.description.value and "cosine similarity" in view.caption.value
    # drawn by plotly's mime renderer from the same figure (plotly.js is not sent per figure)
    shown = view.plot.outputs[0]["data"]["application/vnd.plotly.v1+json"]
    assert [t["type"] for t in shown["data"]] == ["heatmap", "heatmap"]
    assert shown["data"][1]["z"]["dtype"] == "f4" and view.plot_box.children == (view.plot,)


def test_big_tables_are_thinned_to_real_rows(gpt2_trace):
    rng = np.random.default_rng(1)
    table = rng.standard_normal((2048, 576)).astype(np.float32)
    big = dataclasses.replace(gpt2_trace, positional=Positional("learned", {"embeddings": table}, {}, "Learned: test."))
    heat, sim = positional(big).figure.data
    rows, cols = np.asarray(heat.y), np.asarray(heat.x)
    assert len(rows) <= MAX_SIZE and len(cols) <= MAX_SIZE and rows[0] == 0 and rows[-1] == 2047
    np.testing.assert_array_equal(np.asarray(heat.z), table[np.ix_(rows, cols)])
    np.testing.assert_allclose(np.asarray(sim.z), numpy_cosine(table[rows]), atol=1e-6)
    assert list(thin(10)) == list(range(10)) and len(thin(2048)) == MAX_SIZE


def test_sinusoidal_table_and_similarity(gpt2_trace):
    pos, dim = np.arange(40)[:, None], 16
    i = np.arange(dim // 2)[None, :]
    table = np.zeros((40, dim), np.float32)
    table[:, 0::2], table[:, 1::2] = np.sin(pos / 10000 ** (2 * i / dim)), np.cos(pos / 10000 ** (2 * i / dim))
    trace = dataclasses.replace(gpt2_trace, positional=Positional("sinusoidal", {"table": table}, {}, "Sinusoidal."))
    view = positional(trace)
    np.testing.assert_allclose(np.asarray(view.figure.data[1].z), numpy_cosine(table), atol=1e-6)
    # the similarity of the textbook table depends only on the distance: constant along each diagonal
    sim = np.asarray(view.figure.data[1].z)
    for d in range(1, 10):
        diagonal = np.diagonal(sim, d)
        assert np.ptp(diagonal) < 1e-5


def test_rotary_tables_match_the_models_own_cos_and_sin(tiny_trace, neox_trace):
    for trace in (tiny_trace, neox_trace):
        pos = trace.positional
        half = pos.inv_freq.size
        cos, sin = rotary_tables(pos, trace.n_tokens)
        np.testing.assert_allclose(cos, pos.cos[:, :half], atol=1e-5)
        np.testing.assert_allclose(sin, pos.sin[:, :half], atol=1e-5)
        view = positional(trace)
        n_positions, _, _ = rotary_layout(trace.n_tokens)
        rows = np.asarray(view.figure.data[0].y)
        plotted_cos = np.asarray(view.figure.data[0].z)
        np.testing.assert_allclose(plotted_cos[rows < trace.n_tokens], pos.cos[rows[rows < trace.n_tokens], :half],
                                   atol=1e-5)
        assert rows[-1] == n_positions - 1


def test_rotary_score_depends_only_on_distance(tiny_trace, neox_trace):
    for trace in (tiny_trace, neox_trace):
        pos = trace.positional
        _, max_distance, anchors = rotary_layout(trace.n_tokens)
        view = positional(trace)
        curves = [np.asarray(t.y, dtype=np.float64) for t in view.figure.data[2:]]
        assert len(curves) == len(anchors) == 3
        rng = np.random.default_rng(0)  # the view's documented q and k: seed 0, q drawn first
        q, k = rng.standard_normal(2 * pos.inv_freq.size), rng.standard_normal(2 * pos.inv_freq.size)
        reference = closed_form_score(q, k, pos.inv_freq, np.arange(max_distance + 1),
                                      pos.params.get("attention_scaling", 1.0))
        for curve in curves:
            np.testing.assert_allclose(curve, reference, rtol=1e-4, atol=1e-4)
        # and the same pair of distances from other (m, n) pairs gives the same score
        scores = relative_scores(pos, [40, 90, 200], 40)
        np.testing.assert_allclose(scores[0], scores[1], atol=1e-9)
        np.testing.assert_allclose(scores[0], scores[2], atol=1e-9)


def test_no_positional_encoding_is_a_sentence(tiny_trace):
    trace = dataclasses.replace(tiny_trace, positional=Positional("none", description="No positional encoding."))
    view = positional(trace)
    assert view.figure is None and view.plot is None and view.plot_box.children == ()
    assert "No positional encoding" in view.description.value


def test_description_is_escaped(tiny_trace):
    trace = dataclasses.replace(tiny_trace, positional=dataclasses.replace(
        tiny_trace.positional, description="<img src=x onerror=alert(1)>"))
    value = positional(trace).description.value
    assert "<img" not in value and "&lt;img" in value


@pytest.fixture(scope="module")
def layered():
    """Traces of models whose layers differ: Gemma 3 (two rotary bases), SmolLM3 (NoPE layers), BLOOM (ALiBi)."""
    import explorer
    from test_architectures import PROMPT, Ids
    from tiny_models import tiny_model

    return {family: explorer.wrap(tiny_model(family), Ids(), name=family).trace(PROMPT)
            for family in ("gemma3_text", "smollm3", "bloom")}


def test_the_strip_picks_each_layers_own_rotary_base(layered):
    trace = layered["gemma3_text"]
    view = positional(trace)
    assert [b.description for b in view.buttons] == [str(i) for i in range(trace.n_layers)]
    thetas = []
    for layer in range(trace.n_layers):
        view.buttons[layer].click()
        assert view.layer == layer and "ae-selected" in view.buttons[layer]._dom_classes
        record = trace.positional.layer(layer)
        inv_freq = 1.0 / record["theta"] ** (np.arange(0, record["rotary_dim"], 2) / record["rotary_dim"])
        cos = np.asarray(view.figure.data[0].z)  # cos(position × θ_i), positions × frequencies
        np.testing.assert_allclose(cos, np.cos(np.arange(cos.shape[0])[:, None] * inv_freq[None, :]), atol=1e-5)
        assert f"base {record['theta']:g}" in view.caption.value
        thetas.append(record["theta"])
    assert len(set(thetas)) == 2


def test_a_nope_layer_is_a_sentence_and_alibi_heads_are_lines_of_their_slopes(layered):
    trace = layered["smollm3"]
    view = positional(trace)
    nope = trace.positional.layer_kinds.index("none")
    view.buttons[nope].click()
    assert view.figure is None and view.plot_box.children == () and "causal mask" in view.caption.value
    trace = layered["bloom"]
    view = positional(trace)
    slopes = trace.positional.layer(0)["slopes"]
    assert len(view.figure.data) == trace.n_heads
    for head, line in enumerate(view.figure.data):
        np.testing.assert_allclose(np.asarray(line.y), -slopes[head] * np.asarray(line.x), rtol=1e-5)
