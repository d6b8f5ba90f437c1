"""The heatmap's kinds: value-weighted attention against α·‖v W_O‖ from the trace's own arrays, and rollout against
trace.attention_flow() and a product of the layers' mean attention, computed once and blind to layer and head."""

from __future__ import annotations

import math

import numpy as np
import pytest

from explorer import analysis
from explorer.views import Selection
from explorer.views.attention.heatmap_view import heatmap
from synthetic import synthetic_trace, with_analysis
from test_views_attention import decode, linear_codes, naive_max_pool


@pytest.fixture(scope="module")
def trace():
    return with_analysis(synthetic_trace(120, n_layers=3, n_heads=2, kv_heads=1, seed=2), n_generated=8)


def exact(view) -> np.ndarray:
    return np.frombuffer(view.window_exact, dtype="<f4").reshape(view.window_rows, view.window_cols)


def test_value_weighted_is_attention_times_value_norms(trace):
    view = heatmap(trace, layer=1, head=1, kind="norm", window_size=32)
    view.window_start, view.key_start = 40, 20
    weighted = trace.attention(1, 1) * trace.value_norms[1, 1][None, :]
    assert view.shows == "1 1 norm" and view.kinds == ["raw", "norm", "rollout"]
    np.testing.assert_allclose(exact(view), weighted[40:72, 20:52], rtol=1e-5, atol=1e-7)
    assert weighted.max() > 1  # not probabilities: the colours scale to the largest value instead
    assert view.scale == pytest.approx(float(weighted.max()), rel=1e-6)
    assert np.abs(decode(view.overview, weighted.shape) - linear_codes(weighted, weighted.max())).max() <= 1
    view.head = None  # the layer's mean of the value-weighted heads
    mean = np.mean([trace.attention(1, h) * trace.value_norms[1, h][None, :] for h in range(trace.n_heads)], axis=0)
    np.testing.assert_allclose(exact(view), mean[40:72, 20:52], rtol=1e-5, atol=1e-7)
    view.kind = "raw"  # back to the weights, same layer and head
    assert view.shows == "1 mean"
    np.testing.assert_allclose(exact(view), trace.attention(1, None)[40:72, 20:52], atol=1e-6)


def test_the_block_tooltip_answers_in_the_kind_drawn(trace, monkeypatch):
    view = heatmap(trace, layer=2, head=0, kind="norm")
    sent = []
    monkeypatch.setattr(view, "send", sent.append)
    view._on_msg(view, {"kind": "block", "row": 90, "col": 7}, [])
    weighted = trace.attention(2, 0) * trace.value_norms[2, 0][None, :]
    assert sent[-1]["of"] == "norm" and sent[-1]["weight"] == pytest.approx(float(weighted[90, 7]), rel=1e-6)


def rollout_by_hand(trace) -> np.ndarray:
    n = trace.n_tokens
    flow = np.eye(n)
    for layer in range(trace.n_layers):
        mean = np.mean([trace.attention(layer, h).astype(float) for h in range(trace.n_heads)], axis=0)
        flow = (0.5 * mean + 0.5 * np.eye(n)) @ flow
    return flow


def test_rollout_is_the_attention_flow_computed_once_whatever_the_head(trace, monkeypatch):
    flow = trace.attention_flow("rollout")
    np.testing.assert_allclose(flow, rollout_by_hand(trace), atol=1e-5)
    calls = []
    rollout = analysis.rollout
    monkeypatch.setattr(analysis, "rollout", lambda *a, **k: calls.append(1) or rollout(*a, **k))
    sel = Selection()
    view = heatmap(trace, selection=sel, layer=0, head=1, window_size=32)
    busy = []
    view.observe(lambda c: busy.append(c["new"]), "busy")
    view.kind = "rollout"
    assert view.shows == "rollout"
    np.testing.assert_allclose(exact(view), flow[:32, :32], atol=1e-6)
    assert np.abs(decode(view.overview, flow.shape) - linear_codes(flow, flow.max())).max() <= 1
    assert busy[0].startswith("computing the rollout") and busy[-1] == ""
    assert [b for b in busy if ": layer" in b] == [f"computing the rollout: layer {i} of 3…" for i in (1, 2, 3)]
    before = (view.overview, view.window)
    sel.layer, sel.head = 2, 0  # layer and head do not apply to the rollout
    assert view.shows == "rollout" and (view.overview, view.window) == before
    view.window_start = view.key_start = 60
    np.testing.assert_allclose(exact(view), flow[60:92, 60:92], atol=1e-6)
    view.kind = "raw"
    assert view.shows == "2 0"
    view.kind = "rollout"
    assert len(calls) == 1  # kept on the view


def test_rollout_of_a_long_trace_is_max_pooled_in_the_overview():
    trace = synthetic_trace(600, n_layers=2, n_heads=2)
    view = heatmap(trace, kind="rollout")
    pooled = naive_max_pool(trace.attention_flow(), 3)
    assert view.overview_factor == 3 and view.overview_n == 200
    assert np.abs(decode(view.overview, pooled.shape) - linear_codes(pooled, pooled.max())).max() <= 1


def test_a_trace_without_value_norms_offers_no_value_weighted_attention():
    trace = synthetic_trace(50)
    assert trace.value_norms is None
    view = heatmap(trace, layer=1, head=0)
    assert view.kinds == ["raw", "rollout"]
    view.kind = "norm"  # as a browser might send it anyway
    assert view.kind == "raw" and view.shows == "1 0"
    with pytest.raises(ValueError, match="no value norms"):
        heatmap(trace, kind="norm")
    with pytest.raises(ValueError, match="kind must be one of"):
        heatmap(trace, kind="gradient")
    assert math.isfinite(view.scale)
