"""The heatmap's kinds of position: "no_position" against trace.attention(..., kind="no_position"), "position_effect"
against raw − no_position on a diverging scale, a layer with absolute positions saying why instead of raising, the
distance profile against trace.distance_profile, and a learned sink's share as one more column."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from synthetic import rotary_positional, synthetic_trace
from test_views_attention import decode

from explorer.trace import Positional
from explorer.views import Selection
from explorer.views.attention import attention_data as ad
from explorer.views.attention.heatmap_view import heatmap, kinds_of


@pytest.fixture(scope="module")
def trace():
    return synthetic_trace(150, n_layers=3, n_heads=2, kv_heads=1, dim=8, seed=4, rotary=True)


def exact(view, name="window_exact") -> np.ndarray:
    return np.frombuffer(getattr(view, name), dtype="<f4").reshape(view.window_rows, -1)


def test_a_rotary_trace_offers_position_taken_out_and_its_effect(trace):
    assert kinds_of(trace) == ["raw", "no_position", "position_effect", "rollout"]
    assert kinds_of(synthetic_trace(20)) == ["raw", "rollout"]  # no positional term in any layer


def test_no_position_is_the_traces_own(trace):
    view = heatmap(trace, layer=2, head=1, kind="no_position", window_size=32)
    view.window_start, view.key_start = 50, 30
    free = trace.attention(2, 1, kind="no_position")
    assert view.shows == "2 1 no_position" and view.problem == "" and not view.signed
    assert not np.allclose(free, trace.attention(2, 1), atol=1e-3)  # taking position out changes something
    np.testing.assert_allclose(exact(view), free[50:82, 30:62], atol=1e-6)
    np.testing.assert_allclose(exact(view, "window_raw"), trace.attention(2, 1)[50:82, 30:62], atol=1e-6)
    assert view.scale == pytest.approx(float(free.max()), rel=1e-6)
    view.head = None  # the mean of the layer's heads, each with position taken out
    mean = np.mean([trace.attention(2, h, kind="no_position") for h in range(trace.n_heads)], axis=0)
    np.testing.assert_allclose(exact(view), mean[50:82, 30:62], atol=1e-6)


def test_position_effect_is_raw_minus_no_position_on_a_diverging_scale(trace):
    view = heatmap(trace, layer=1, head=0, kind="position_effect", window_size=32)
    view.window_start, view.key_start = 100, 90
    diff = trace.attention(1, 0) - trace.attention(1, 0, kind="no_position")
    assert view.shows == "1 0 position_effect" and view.signed
    np.testing.assert_allclose(exact(view), diff[100:132, 90:122], atol=1e-6)
    np.testing.assert_allclose(exact(view, "window_raw"), trace.attention(1, 0)[100:132, 90:122], atol=1e-6)
    assert (diff < -1e-3).any() and (diff > 1e-3).any()
    assert view.scale == pytest.approx(float(np.abs(diff).max()), rel=1e-5)
    codes = decode(view.window, (32, 32))
    window = diff[100:132, 90:122]
    expected = 128 + np.sign(window) * np.rint(127 * np.abs(window) / view.scale)
    assert np.abs(codes - expected).max() <= 1
    assert (codes[window < -0.05 * view.scale] < 128).all() and (codes[window > 0.05 * view.scale] > 128).all()
    # the overview keeps each block's largest change, of either sign
    f = view.overview_factor
    pooled = ad.max_abs_pool(diff, f)
    assert np.abs(decode(view.overview, pooled.shape) - ad.quantise_signed(pooled, view.scale).astype(int)).max() <= 1
    view.kind = "raw"
    assert not view.signed and view.shows == "1 0" and view.window_raw == b""


def test_a_layer_with_absolute_positions_says_why_and_keeps_its_drawing(trace):
    positional = rotary_positional(trace.n_tokens, 8)
    positional = dataclasses.replace(positional, layers=[
        {"kind": "rotary", "table": 0, "convention": "half"}, {"kind": "absolute"}, {"kind": "none"}])
    mixed = dataclasses.replace(trace, positional=positional)
    with pytest.raises(ValueError, match="no positional term"):
        mixed.attention(1, 0, kind="no_position")
    sel = Selection()
    view = heatmap(mixed, selection=sel, layer=0, head=0, kind="no_position", window_size=32)
    assert view.shows == "0 0 no_position" and view.problem == ""
    drawn = (view.overview, view.window, view.shows)
    sel.layer = 1  # absolute positions: nothing to take out
    assert view.layer == 1 and "no positional term" in view.problem and "added to the input" in view.problem
    assert (view.overview, view.window, view.shows) == drawn
    sent = []
    view.send = sent.append
    view._on_msg(view, {"kind": "block", "row": 3, "col": 1}, [])  # the block tooltip does not raise either
    assert sent == []
    view.kind = "position_effect"
    assert view.problem and view.shows == "0 0 no_position"
    view.kind = "raw"  # what the layer can give: drawn, the sentence gone
    assert view.problem == "" and view.shows == "1 0"
    view.kind = "no_position"
    sel.layer = 2  # NoPE: the raw pattern
    assert view.problem == "" and view.shows == "2 0 no_position"
    np.testing.assert_allclose(exact(view), mixed.attention(2, 0)[:32, :32], atol=1e-6)
    # the profile of the absolute layer has the raw line only
    sel.layer = 1
    profile = np.frombuffer(view.profile, dtype="<f4").reshape(2, view.profile_n)
    assert np.isfinite(profile[0]).all() and np.isnan(profile[1]).all() and view.profile_first[1] is None


def test_the_distance_profile_is_the_traces_and_follows_the_head(trace):
    sel = Selection()
    view = heatmap(trace, selection=sel, layer=0, head=1)
    for layer, head in [(0, 1), (2, 0)]:
        sel.layer, sel.head = layer, head
        raw = trace.distance_profile(layer, head, 64)
        free = trace.distance_profile(layer, head, 64, kind="no_position")
        profile = np.frombuffer(view.profile, dtype="<f4").reshape(2, view.profile_n)
        assert view.profile_of == f"{layer} {head}" and view.profile_n == 65
        np.testing.assert_allclose(profile[0], raw["weight"], atol=1e-7)
        np.testing.assert_allclose(profile[1], free["weight"], atol=1e-7)
        assert view.profile_first == pytest.approx([float(raw["first_token"]), float(free["first_token"])])
    view.kind = "position_effect"  # the kind drawn does not change the profile
    assert view.profile_of == "2 0"
    sel.head = None  # one head's profile only
    assert view.profile_of == "" and view.profile == b"" and view.profile_n == 0


def test_a_learned_sink_is_one_more_column(trace):
    layers = [dataclasses.replace(layer, sinks=np.array([1.5, -0.5], dtype=np.float32)) for layer in trace.layers]
    sunk = dataclasses.replace(trace, layers=layers)
    view = heatmap(sunk, layer=1, head=0, window_size=16)
    view.window_start = 40
    share = sunk.layers[1].sink_share(0, 40, 56)
    assert share.min() > 0
    np.testing.assert_allclose(np.frombuffer(view.window_sink_exact, dtype="<f4"), share, atol=1e-6)
    np.testing.assert_allclose(sunk.attention(1, 0)[40:56].sum(1) + share, 1, atol=1e-5)  # a row sums to 1 − share
    assert len(view.window_sink) == 16
    view.kind = "no_position"
    free = sunk._without_position(1).sink_share(0, 40, 56)
    np.testing.assert_allclose(np.frombuffer(view.window_sink_exact, dtype="<f4"), free, atol=1e-6)
    view.kind = "rollout"  # a sink is a head's: none in the rollout
    assert view.window_sink == b""
    plain = heatmap(trace, layer=1, head=0)
    assert plain.window_sink == b"" and plain.window_sink_exact == b""


def test_a_positional_without_a_layer_record_reads_the_model_wide_kind():
    t = synthetic_trace(30, rotary=True)
    assert t.positional.layer(0)["kind"] == "rotary"
    assert Positional("learned").layer(0)["kind"] == "absolute"
