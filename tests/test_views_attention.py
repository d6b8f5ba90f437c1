"""The heatmap, the heads map and their export, checked against arrays computed independently from the trace."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re

import numpy as np
import pytest

from explorer.views import Selection
from explorer.views.attention import attention_data as ad
from explorer.views.export import standalone_html, to_json
from explorer.views.attention.heads_map_view import heads_map
from explorer.views.attention.heatmap_view import heatmap
from conftest import run_without_torch
from synthetic import synthetic_trace

XSS = "<img src=x onerror=alert(1)>"
SCRIPT = "</script><script>alert(2)</script>&amp;"


def naive_max_pool(m: np.ndarray, f: int) -> np.ndarray:
    out = np.zeros((math.ceil(m.shape[0] / f), math.ceil(m.shape[1] / f)), dtype=np.float32)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = m[i * f : (i + 1) * f, j * f : (j + 1) * f].max()
    return out


def decode(data: bytes, shape) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).reshape(shape).astype(int)


def linear_codes(w: np.ndarray, scale: float) -> np.ndarray:
    return np.array([[min(255, round(255 * float(x) / scale)) for x in row] for row in w])


# --- the numpy helpers


@pytest.mark.parametrize("factor", [1, 2, 3, 7])
def test_max_pool_matches_a_loop(factor):
    m = np.random.default_rng(factor).random((23, 17)).astype(np.float32)
    assert np.array_equal(ad.max_pool(m, factor), naive_max_pool(m, factor))


def test_quantise_linear_and_log():
    w = np.array([0.0, 1e-6, 1e-4, 0.003, 0.2, 0.5, 0.8], dtype=np.float32)
    assert ad.quantise(w, 0.8).tolist() == [min(255, round(255 * float(x) / 0.8)) for x in w]
    expected = [0 if x == 0 else max(0, min(255, round(255 * (1 + math.log10(float(x) / 0.8) / 4)))) for x in w]
    assert np.abs(ad.quantise(w, 0.8, log_decades=4).astype(int) - expected).max() <= 1
    assert ad.quantise(w, 0.8, log_decades=4)[-1] == 255 and ad.quantise(w, 0.8, log_decades=4)[0] == 0


def test_pooled_head_reads_in_chunks_and_matches_the_whole_matrix(monkeypatch):
    trace = synthetic_trace(300)
    monkeypatch.setattr(ad, "CHUNK_ROWS", 64)  # several chunks, none a multiple of the block size
    for factor in (1, 3, 7):
        assert np.allclose(ad.pooled_head(trace, 1, 0, factor), naive_max_pool(trace.attention(1, 0), factor),
                           atol=1e-6)


# --- the heatmap


def test_heatmap_window_bytes_are_the_quantised_weights(tiny_trace):
    view = heatmap(tiny_trace, layer=1, head=2, window_size=8)
    view.window_start, view.key_start = 5, 3
    a = tiny_trace.attention(1, 2)
    assert view.scale == pytest.approx(float(a.max()))
    block = a[5:13, 3:11]
    assert (view.window_rows, view.window_cols) == block.shape
    assert np.abs(decode(view.window, block.shape) - linear_codes(block, a.max())).max() <= 1
    exact = np.frombuffer(view.window_exact, dtype="<f4").reshape(block.shape)
    assert np.allclose(exact, block, rtol=1e-5, atol=1e-7)


def test_heatmap_overview_is_the_max_pooled_head(tiny_trace):
    view = heatmap(tiny_trace, layer=0, head=1)
    a = tiny_trace.attention(0, 1)
    assert view.overview_factor == 1 and view.overview_n == tiny_trace.n_tokens
    assert np.abs(decode(view.overview, a.shape) - linear_codes(a, a.max())).max() <= 1

    big = synthetic_trace(600)  # 600 tokens -> blocks of 3 for a 256-cell overview
    view = heatmap(big, layer=1, head=1, log_scale=True)
    pooled = naive_max_pool(big.attention(1, 1), 3)
    assert view.overview_factor == 3 and view.overview_n == 200
    expected = [[0 if x == 0 else max(0, min(255, round(255 * (1 + math.log10(float(x) / pooled.max()) / 4))))
                 for x in row] for row in pooled]
    assert np.abs(decode(view.overview, pooled.shape) - np.array(expected)).max() <= 1


def test_heatmap_mean_of_heads_and_window_at_the_end(tiny_trace):
    view = heatmap(tiny_trace, layer=1, window_size=16)
    assert view.head is None
    mean = np.mean([tiny_trace.attention(1, h) for h in range(tiny_trace.n_heads)], axis=0)
    view.window_start = 10**6  # clamped: the window ends at the last token
    start = tiny_trace.n_tokens - 16
    assert view.window_start == start
    view.key_start = start
    exact = np.frombuffer(view.window_exact, dtype="<f4").reshape(16, 16)
    assert np.allclose(exact, mean[start:, start:], atol=1e-6)


def test_heatmap_tooltip_message_answers_with_the_exact_block_maximum(monkeypatch):
    trace = synthetic_trace(600)
    view = heatmap(trace, layer=0, head=0)
    sent = []
    monkeypatch.setattr(view, "send", sent.append)
    view._on_msg(view, {"kind": "block", "row": 100, "col": 2}, [])
    block = trace.attention(0, 0)[300:303, 6:9]
    reply = sent[-1]
    assert reply["weight"] == pytest.approx(float(block.max()), rel=1e-6)
    assert trace.attention(0, 0)[reply["query"], reply["key"]] == pytest.approx(reply["weight"], rel=1e-6)
    view._on_msg(view, {"kind": "block", "row": 10**6, "col": 0}, [])  # out of range: no answer
    assert len(sent) == 1


def test_selection_round_trips_between_heads_map_and_heatmap(tiny_trace):
    sel = Selection()
    hmap, view = heads_map(tiny_trace, selection=sel), heatmap(tiny_trace, selection=sel)
    before, shown = view.overview, []
    view.observe(lambda change: shown.append(change["new"]), "shows")
    with hmap.hold_trait_notifications():  # what a click on a thumbnail sets from the browser, in one message
        hmap.layer, hmap.head = 1, 3
    assert (sel.layer, sel.head) == (1, 3) and (view.layer, view.head) == (1, 3)
    assert shown == ["1 3"]  # computed once for the pair, not for layer 1 with the old head first
    a = tiny_trace.attention(1, 3)
    assert view.overview != before
    assert np.abs(decode(view.overview, a.shape) - linear_codes(a, a.max())).max() <= 1
    view.head = None  # the heatmap's own picker
    assert sel.head is None and hmap.head is None
    view.selected_token = 7  # a click on a label
    assert sel.token == 7
    view.head = 99  # a browser may send anything: kept in range
    assert view.head == tiny_trace.n_heads - 1


def test_selecting_a_token_outside_the_window_moves_the_window():
    trace = synthetic_trace(300)
    sel = Selection()
    view = heatmap(trace, selection=sel, window_size=32)
    sel.token = 200
    assert view.window_start <= 200 < view.window_start + 32 and view.key_start == view.window_start
    exact = np.frombuffer(view.window_exact, dtype="<f4").reshape(32, 32)
    s = view.window_start
    assert np.allclose(exact, trace.attention(0, None)[s : s + 32, s : s + 32], atol=1e-6)


# --- the heads map


def test_heads_map_statistics_and_thumbnails(tiny_trace):
    view = heads_map(tiny_trace, thumb_px=8, log_scale=False)
    t = tiny_trace.n_tokens
    f = math.ceil(t / 8)  # blocks that bring t tokens down to at most 8 cells
    assert f > 1 and view.thumb_factor == f and view.thumb_n == math.ceil(t / f)
    thumbs = decode(view.thumbs, (tiny_trace.n_layers, tiny_trace.n_heads, view.thumb_n, view.thumb_n))
    for layer in range(tiny_trace.n_layers):
        for head in range(tiny_trace.n_heads):
            a = tiny_trace.attention(layer, head).astype(np.float64)
            rows = range(1, t)
            entropy = np.mean([-sum(p * math.log(p) for p in a[i, : i + 1] if p > 0) for i in rows])
            assert view.stats["entropy"][layer][head] == pytest.approx(entropy, rel=1e-4)
            assert view.stats["previous"][layer][head] == pytest.approx(np.mean([a[i, i - 1] for i in rows]), rel=1e-4)
            assert view.stats["first"][layer][head] == pytest.approx(np.mean([a[i, 0] for i in rows]), rel=1e-4)
            pooled = naive_max_pool(a.astype(np.float32), f)
            assert np.abs(thumbs[layer, head] - linear_codes(pooled, pooled.max())).max() <= 1


def test_heads_map_log_toggle_resends_thumbnails(tiny_trace):
    view = heads_map(tiny_trace, log_scale=False)
    linear = view.thumbs
    view.log_scale = True
    assert view.thumbs != linear
    t = tiny_trace.n_tokens  # fewer than 48: one token a cell
    pooled = tiny_trace.attention(1, 0)
    codes = decode(view.thumbs, (tiny_trace.n_layers, tiny_trace.n_heads, t, t))[1, 0]
    lower = np.tril_indices(t)
    expected = np.clip(np.rint(255 * (1 + np.log10(pooled[lower] / pooled.max()) / 3)), 0, 255)
    assert np.abs(codes[lower] - expected).max() <= 1


# --- export


def test_to_json_of_both_views(tiny_trace):
    view = heatmap(tiny_trace, layer=1, head=0, window_size=8)
    view.window_start, view.key_start = 4, 0
    data = json.loads(json.dumps(to_json(view)))
    a = tiny_trace.attention(1, 0)[4:12, 0:8]
    assert data["layer"] == 1 and data["head"] == 0 and data["tokens"] == tiny_trace.tokens
    assert data["query_tokens"] == tiny_trace.tokens[4:12]
    assert np.allclose(data["weights"], a, rtol=1e-3, atol=1e-9)
    hmap = heads_map(tiny_trace)
    table = json.loads(json.dumps(to_json(hmap)))["heads"]
    assert len(table) == tiny_trace.n_layers * tiny_trace.n_heads
    row = next(r for r in table if (r["layer"], r["head"]) == (1, 2))
    a = tiny_trace.attention(1, 2)
    assert row["first"] == pytest.approx(float(a[1:, 0].mean()), rel=1e-4)
    with pytest.raises(TypeError):
        to_json(object())


def test_standalone_html_embeds_escaped_data(tiny_trace, tmp_path):
    tokens = list(tiny_trace.tokens)
    tokens[2], tokens[tiny_trace.n_prompt] = XSS, SCRIPT
    trace = dataclasses.replace(tiny_trace, tokens=tokens)
    path = standalone_html(trace, tmp_path / "page.html", layer=1, head=2, max_tokens=16)
    page = path.read_text()
    assert XSS not in page and "</script><script>alert" not in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", page, flags=re.S)
    assert len(scripts) == 3  # data, heatmap.js, export.js: no token ended a script early
    raw = re.search(r'<script type="application/json" id="attention-data">(.*?)</script>', page, re.S).group(1)
    assert "<" not in raw and ">" not in raw
    data = json.loads(raw)
    assert data["text"] == tokens[:16] and (data["layer"], data["head"]) == (1, 2)
    packed = np.frombuffer(base64.b64decode(data["attention"]), dtype="<f4")
    packed = packed.reshape(trace.n_layers, trace.n_heads + 1, 16 * 17 // 2)
    lower = np.tril_indices(16)
    assert np.allclose(packed[1, 2], trace.attention(1, 2)[:16, :16][lower], atol=1e-7)
    mean = np.mean([trace.attention(0, h) for h in range(trace.n_heads)], axis=0)
    assert np.allclose(packed[0, trace.n_heads], mean[:16, :16][lower], atol=1e-6)
    assert [s["position"] for s in data["steps"]] == [s.position for s in trace.steps if s.position < 16]


def test_views_import_no_torch(tiny_trace, tmp_path):
    run_without_torch(tiny_trace, tmp_path, (
        "import explorer.views.attention.heatmap_view as a, explorer.views.attention.heads_map_view as b\n"
        "import explorer.views.export as e\n"
        "a.heatmap(trace); b.heads_map(trace)\n"
        "e.standalone_html(trace, 'p.html')"
    ))
