"""The commitment (the first layer from which the logit lens ranks the next token first, up to the last layer) and
its strip, checked against a plain loop over the lens's own top-k lists."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest
from conftest import run_without_torch
from synthetic import synthetic_trace, with_analysis

from explorer.errors import ExplorerError, MissingDataError
from explorer.views.explorer_view import ExplorerView
from explorer.views.meaning.commitment_view import STOPS, CommitmentStrip, commitment_strip, layer_colour
from explorer.views.steps.stepper_view import stepper

XSS = "<img src=x onerror=alert(1)>"


def reference(trace) -> list[int]:
    """The commitment by its definition, one layer and one position at a time, through the lens's public top_k."""
    lens, out = trace.lens, []
    for p in lens.positions.tolist():
        if p + 1 >= trace.n_tokens:
            out.append(-1)
            continue
        target = trace.token_ids[p + 1]
        first = -1
        for layer in range(lens.n_layers):
            if all(lens.top_k(later, p)[0].token_id == target for later in range(layer, lens.n_layers)):
                first = layer
                break
        out.append(first)
    return out


def flickering(trace, seed: int = 0):
    """`trace` with its lens's top-1 made the next token or another one at random in each cell (p = 0.6), so that
    tokens are committed early, late, never, and some are first in a layer, then lost, then first again."""
    rng = np.random.default_rng(seed)
    lens = trace.lens
    nxt = np.array([trace.token_ids[p + 1] if p + 1 < trace.n_tokens else 0 for p in lens.positions])
    other = (nxt + 1 + rng.integers(0, 3, nxt.shape)) % (max(trace.token_ids) + 1)
    hit = rng.random(lens.top_ids.shape[:2]) < 0.6
    hit[-1] |= rng.random(hit.shape[1]) < 0.5  # most, not all, committed by the last layer
    hit[:, 0] = True  # the first column committed at layer 0, the second at the last layer only, the third never
    hit[:, 1] = np.arange(len(hit)) == len(hit) - 1
    hit[-1, 2] = False
    lens.top_ids[:, :, 0] = np.where(hit, nxt[None, :], other[None, :])
    return trace


def words(n_tokens: int, n_layers: int, vocab: int = 9, seed: int = 0):
    trace = synthetic_trace(n_tokens, n_layers=n_layers, seed=seed)
    trace.token_ids = [i % vocab for i in range(n_tokens)]
    trace.tokens = [XSS if i % vocab == 3 else f" w{i % vocab}" for i in range(n_tokens)]
    return trace


@pytest.fixture
def steps_trace():
    return flickering(with_analysis(words(60, 8, seed=1), n_generated=30, lens="steps", seed=1), seed=1)


@pytest.fixture
def all_trace():
    return flickering(with_analysis(words(50, 5, seed=2), n_generated=0, lens="all", seed=2), seed=2)


@pytest.mark.parametrize("which", ["steps_trace", "all_trace"])
def test_commitment_matches_the_plain_loop(which, request):
    trace = request.getfixturevalue(which)
    got = trace.commitment()
    assert got.dtype == np.int32 and got.shape == trace.lens.positions.shape
    expected = reference(trace)
    assert got.tolist() == expected
    # the cases the definition cares about all occur: early, at the last layer only, never, and a token that was
    # first in some layer before the commitment but lost it in between
    n = trace.lens.n_layers
    assert expected[:3] == [0, n - 1, -1]
    lost = [c for c, layer in enumerate(expected) if layer > 0 and trace.lens.top_ids[: layer - 1, c, 0].tolist()
            .count(trace.token_ids[int(trace.lens.positions[c]) + 1])]
    assert lost


def test_the_trace_end_is_never_committed(all_trace):
    end = all_trace.lens.column(all_trace.n_tokens - 1)
    assert all_trace.commitment()[end] == -1


def test_no_lens_is_a_clear_error_and_one_line_in_the_strip():
    trace = with_analysis(words(20, 2), n_generated=4, lens=None)
    with pytest.raises(MissingDataError, match="no logit lens") as info:
        trace.commitment()
    assert isinstance(info.value, ExplorerError)
    strip = commitment_strip(trace)
    assert "no logit lens" in strip.value and "ae-commitment-token" not in strip.value
    assert strip.value.count("<div") == 1 and strip.positions == []


def test_the_strip_shows_each_token_with_its_layer_colour_and_tooltip(steps_trace):
    strip = CommitmentStrip(steps_trace, generated_only=True)
    expected = reference(steps_trace)
    assert strip.positions == [s.position for s in steps_trace.steps]
    assert strip.layers == expected
    spans = re.findall(r"<span class='ae-commitment-token( never)?' data-position='(\d+)' data-layer='(-?\d+)' "
                       r"style='background:(rgb\([\d,]+\));[^']*' title='([^']*)'>([^<]*)</span>", strip.value)
    assert len(spans) == steps_trace.n_generated
    n = steps_trace.lens.n_layers
    for (never, position, layer, colour, title, text), step, want in zip(spans, steps_trace.steps, expected):
        assert (int(position), int(layer), bool(never)) == (step.position, want, want == -1)
        assert colour == layer_colour(want, n)
        assert html.unescape(text) == step.token.replace(" ", "␣")
        title = html.unescape(title)
        if want == -1:
            assert "never committed" in title
        else:
            assert f"first committed at layer {want} of {n}" in title
    assert "<img" not in strip.value and html.escape(XSS.replace(" ", "␣")) in strip.value


def test_colours_run_from_dark_to_light_and_never_is_white():
    n = 30
    assert layer_colour(0, n) == "rgb({},{},{})".format(*STOPS[0])
    assert layer_colour(n - 1, n) == "rgb({},{},{})".format(*STOPS[-1])
    brightness = [sum(map(int, re.findall(r"\d+", layer_colour(layer, n)))) for layer in range(n)]
    assert brightness == sorted(brightness) and len(set(brightness)) == n  # each layer its own, lighter, colour
    assert layer_colour(-1, n) == "rgb(255,255,255)" and layer_colour(0, 1) == layer_colour(0, n)


def test_the_stepper_and_the_lens_tab_show_the_strip(steps_trace):
    view = stepper(steps_trace)
    assert view.commitment in view.children and view.commitment.layers == reference(steps_trace)
    explorer = ExplorerView(steps_trace)
    explorer.show_tab("Logit lens")
    strip = explorer.tabs.children[explorer.tabs.selected_index].children[0].children[0]
    assert isinstance(strip, CommitmentStrip) and strip.layers == reference(steps_trace)


def test_the_commitment_needs_no_torch(steps_trace, tmp_path):
    run_without_torch(steps_trace, tmp_path, "from explorer.views import commitment_strip\n"
                      "s = commitment_strip(trace, generated_only=True)\n"
                      f"assert s.layers == {reference(steps_trace)!r}")
