"""The standalone page's analysis: surprisal, logit lens and head atlas embedded equal the trace's arrays, escaped."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from explorer.trace import WeightsLayer
from explorer.views.export import first_tokens, standalone_html
from synthetic import synthetic_trace, with_analysis

XSS = "<img src=x onerror=alert(1)>"
SCRIPT = "</script><script>alert(2)</script>"


def repeating_trace(n: int = 40, n_generated: int = 12, vocab: int = 14, lens: str | None = "steps"):
    """A synthetic trace whose tokens repeat (so duplicate and induction scores exist), with HTML in a prompt
    token, a generated token and a lens word."""
    trace = synthetic_trace(n, n_layers=3, n_heads=4, kv_heads=2, dim=8)
    trace.token_ids = [i % vocab for i in range(n)]
    trace.tokens = [f" w{i}" for i in trace.token_ids]
    trace.tokens = [XSS if i == 3 else SCRIPT if i == 3 + vocab else t for i, t in enumerate(trace.tokens)]
    trace = with_analysis(trace, n_generated=n_generated, lens=lens)
    if trace.lens is not None:
        trace.lens.words[int(trace.lens.top_ids[-1, 0, 0])] = XSS
    return trace


def page_data(path) -> dict:
    raw = re.search(r'<script type="application/json" id="attention-data">(.*?)</script>', path.read_text(), re.S)
    assert "<" not in raw.group(1) and ">" not in raw.group(1)
    return json.loads(raw.group(1))


def as_array(values) -> np.ndarray:
    """JSON numbers as floats, None (not known) as NaN."""
    return np.array(values, dtype=float)  # None -> nan


def test_surprisal_in_the_page_is_the_traces(tmp_path):
    trace = repeating_trace()
    trace.surprisal[5:8] = np.nan
    data = page_data(standalone_html(trace, tmp_path / "p.html"))
    s = data["analysis"]["surprisal"]
    np.testing.assert_allclose(as_array(s["values"]), trace.surprisal, rtol=5e-4)  # NaN where NaN
    assert s["values"][0] is None and s["values"][6] is None
    assert s["full"] > 0 and len(s["rgb"]) == 3


def test_lens_in_the_page_is_the_traces_at_the_positions_shown(tmp_path):
    trace = repeating_trace(lens="all")
    n = 24
    data = page_data(standalone_html(trace, tmp_path / "p.html", max_tokens=n))
    lens, page = trace.lens, data["analysis"]["lens"]
    columns = np.flatnonzero(lens.positions < n)
    assert page["positions"] == lens.positions[columns].tolist() == list(range(n))
    np.testing.assert_array_equal(page["top_ids"], lens.top_ids[:, columns])
    np.testing.assert_allclose(page["top_probs"], lens.top_probs[:, columns], rtol=5e-4)
    np.testing.assert_allclose(as_array(page["next_prob"]), lens.next_prob[:, columns], rtol=5e-4)
    np.testing.assert_array_equal(page["next_rank"], lens.next_rank[:, columns])
    assert page["next_tokens"] == [trace.tokens[p + 1] for p in lens.positions[columns]]
    for layer in (0, trace.n_layers - 1):  # the words are what top_k gives
        for c, p in enumerate(page["positions"]):
            assert [page["words"][str(i)] for i in page["top_ids"][layer][c]] == [w for w, _, _ in lens.top_k(layer, p)]


def test_lens_at_the_trace_end_has_no_next_token(tmp_path):
    trace = repeating_trace(lens="all")
    page = page_data(standalone_html(trace, tmp_path / "p.html"))["analysis"]["lens"]
    assert page["positions"][-1] == trace.n_tokens - 1
    assert page["next_tokens"][-1] is None and all(row[-1] is None for row in page["next_prob"])


def test_atlas_is_the_traces_head_scores(tmp_path):
    trace = repeating_trace()
    data = page_data(standalone_html(trace, tmp_path / "p.html"))
    atlas, scores = data["analysis"]["atlas"], trace.head_scores()
    assert atlas["n_tokens"] == trace.n_tokens and atlas["names"] == list(scores)
    for name, a in scores.items():
        assert not np.isnan(a).any()  # repeated tokens: every score is defined
        np.testing.assert_allclose(as_array(atlas["scores"][name]), a, rtol=5e-4, atol=1e-7)


def test_atlas_of_a_longer_trace_is_over_the_tokens_the_page_holds(tmp_path):
    trace = repeating_trace(n=40)
    n = 20
    atlas = page_data(standalone_html(trace, tmp_path / "p.html", max_tokens=n))["analysis"]["atlas"]
    assert atlas["n_tokens"] == n
    for layer in range(trace.n_layers):  # independent: from the whole trace's attention, rows 1..n-1
        for head in range(trace.n_heads):
            a = trace.attention(layer, head)[:n, :n]
            previous = np.mean([a[i, i - 1] for i in range(1, n)])
            first = a[1:, 0].mean()
            assert atlas["scores"]["previous_token"][layer][head] == pytest.approx(previous, rel=5e-4)
            assert atlas["scores"]["first_token"][layer][head] == pytest.approx(first, rel=5e-4)


def test_first_tokens_keeps_the_attention_of_those_tokens():
    trace = repeating_trace(n=30)
    cut = first_tokens(trace, 17)
    assert cut.n_tokens == 17 and cut.tokens == trace.tokens[:17] and all(s.position < 17 for s in cut.steps)
    for layer in range(trace.n_layers):
        np.testing.assert_allclose(cut.attention(layer, 1), trace.attention(layer, 1)[:17, :17], atol=1e-6)
    # a trace that keeps weights, not queries and keys: the packed rows of the first 17 tokens
    lower = np.tril_indices(trace.n_tokens)
    weights = [WeightsLayer(np.stack([trace.attention(layer, h)[lower] for h in range(trace.n_heads)]))
               for layer in range(trace.n_layers)]
    packed = first_tokens(dataclasses.replace(trace, layers=weights), 17)
    np.testing.assert_allclose(packed.attention(2, 3), trace.attention(2, 3)[:17, :17], atol=1e-6)
    assert first_tokens(trace, trace.n_tokens) is trace


def test_html_in_tokens_and_lens_words_is_escaped(tmp_path):
    trace = repeating_trace(lens="all")
    path = standalone_html(trace, tmp_path / "p.html")
    text = path.read_text()
    assert XSS not in text and "</script><script>alert" not in text
    assert len(re.findall(r"<script[^>]*>(.*?)</script>", text, flags=re.S)) == 3  # no token ended a script
    data = page_data(path)
    assert data["text"][3] == XSS and XSS in data["analysis"]["lens"]["words"].values()
    assert SCRIPT in data["analysis"]["lens"]["next_tokens"]


def test_sections_the_trace_lacks_are_left_out(tmp_path):
    trace = repeating_trace(lens=None)
    trace.surprisal[:] = np.nan
    analysis = page_data(standalone_html(trace, tmp_path / "p.html"))["analysis"]
    assert analysis["surprisal"] is None and analysis["lens"] is None and analysis["atlas"] is not None
    steps_lens = repeating_trace(n=40, n_generated=12)  # the lens covers positions 27.. only
    assert page_data(standalone_html(steps_lens, tmp_path / "q.html", max_tokens=20))["analysis"]["lens"] is None
