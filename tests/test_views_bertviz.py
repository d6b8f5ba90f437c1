"""bertviz views offline: the params hold the trace's weights for the window, the payload is sent once and
escaped, the page needs no network and no torch, and its size stays bounded."""

from __future__ import annotations

import copy
import html
import json
import re
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from explorer.views import Selection
from explorer.views.attention import bertviz_offline as bv
from synthetic import smollm2_shaped_trace

HOSTILE = ["<img src=x onerror=alert(1)>", "</script>", "a&amp;b", "\u2028", '"attn":null']
PARAMS = re.compile(r'<script type="application/json" id="([^"]+)">(.*?)</script>', re.S)


def page_params(page: str) -> dict:
    """The one JSON block of a page, parsed, with the weights scaled back to probabilities."""
    blocks = PARAMS.findall(page)
    assert len(blocks) == 1
    params = json.loads(blocks[0][1])
    for d in params["attention"]:
        d["attn"] = np.array(d["attn"], dtype=np.float64) / params["attn_scale"]
    return params


class Tags(HTMLParser):
    """Start tags a browser's tokenizer would see (script and style bodies are raw text to it, as here)."""

    def __init__(self):
        super().__init__()
        self.tags, self.attrs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.append(dict(attrs))


def tags(text: str) -> Tags:
    parser = Tags()
    parser.feed(text)
    parser.close()
    return parser


@pytest.fixture(scope="module")
def hostile_trace(tiny_trace):
    trace = copy.copy(tiny_trace)
    trace.tokens = list(tiny_trace.tokens)
    for i, token in enumerate(HOSTILE):
        trace.tokens[3 + 2 * i] = token
    trace.tokens[tiny_trace.n_prompt] = HOSTILE[0]  # the caption quotes the first generated token
    return trace


@pytest.mark.parametrize("view", ["head_view", "model_view"])
def test_params_hold_the_trace_weights_of_the_window(tiny_trace, view):
    layers, heads, start, stop = [1], [3, 0], 5, 17
    page = getattr(bv, f"{view}_html")(tiny_trace, layers=layers, heads=heads, start=start, stop=stop)
    params = page_params(page)
    (data,) = params["attention"]
    expected = np.stack([np.stack([tiny_trace.attention(l, h)[start:stop, start:stop] for h in heads])
                         for l in layers])
    assert data["attn"].shape == expected.shape
    np.testing.assert_allclose(data["attn"], expected, atol=0.5e-4 + 1e-7)
    window = [bv.display_token(t) for t in tiny_trace.tokens[start:stop]]
    assert data["left_text"] == data["right_text"] == window
    assert params["include_layers"] == layers
    assert f'<div id="{params["root_div_id"]}">' in page
    if view == "model_view":
        assert params["include_heads"] == heads and params["total_heads"] == tiny_trace.n_heads
    else:
        assert "Layer: <select" in page


def test_rows_are_restricted_or_renormalised_and_the_caption_says_which(tiny_trace):
    start, stop = 6, 20
    plain = bv.BertvizPage(tiny_trace, "head_view", layers=[0], heads=[1], start=start, stop=stop)
    renorm = bv.BertvizPage(tiny_trace, "head_view", layers=[0], heads=[1], start=start, stop=stop, renormalize=True)
    rows = tiny_trace.attention(0, 1)[start:stop, start:stop].astype(np.float64)
    kept = rows.sum(axis=1)
    plain_attn = page_params(plain.html())["attention"][0]["attn"][0, 0]
    renorm_attn = page_params(renorm.html())["attention"][0]["attn"][0, 0]
    np.testing.assert_allclose(plain_attn.sum(axis=1), kept, atol=stop * 1e-4)
    assert kept.min() < 0.99  # the cut-off tokens held weight
    np.testing.assert_allclose(renorm_attn, rows / kept[:, None], atol=0.5e-4 + 1e-7)
    assert "do not sum to 1" in plain.caption and f"{kept.mean():.0%} of their weight on average" in plain.caption
    assert "renormalised to sum to 1" in renorm.caption
    assert "each sums to 1" in bv.BertvizPage(tiny_trace, "head_view", start=0, stop=10).caption


def test_windows(tiny_trace):
    n = tiny_trace.n_tokens
    assert bv.resolve_window(tiny_trace, None, None, 8) == (n - 8, n)  # the end: generated part and before
    assert bv.resolve_window(tiny_trace, None, None, 500) == (0, n)
    assert bv.resolve_window(tiny_trace, 4, None, 8) == (4, 12)
    assert bv.resolve_window(tiny_trace, None, 10, 8) == (2, 10)
    with pytest.raises(ValueError, match="more than max_tokens=8"):
        bv.resolve_window(tiny_trace, 0, 9, 8)
    with pytest.raises(IndexError, match="out of range"):
        bv.resolve_window(tiny_trace, 3, n + 1, 64)
    with pytest.raises(IndexError, match="heads"):
        bv.head_view_html(tiny_trace, heads=[tiny_trace.n_heads])
    with pytest.raises(ValueError, match="decimals"):
        bv.head_view_html(tiny_trace, decimals=9)


def test_payload_appears_once_and_nothing_comes_from_a_cdn(tiny_trace):
    page = bv.head_view_html(tiny_trace, start=2, stop=20)
    params = PARAMS.search(page).group(2)
    first_row = params[params.index('"attn":[[[') + len('"attn":[[['):].split("]")[0]
    assert len(first_row) > 8 and page.count(first_row) == 1
    assert page.count('"left_text"') == 1 and "PYTHON_PARAMS" not in page
    assert "cdnjs" not in page and "require.config" not in page
    parsed = tags(page)
    assert not any("src" in a or "href" in a for a in parsed.attrs)  # nothing loads from anywhere
    assert parsed.tags.count("script") == 2  # the JSON block and the one inline program
    assert "default-src 'none'" in page


def test_hostile_tokens_stay_data(hostile_trace):
    start = 1
    page = bv.head_view_html(hostile_trace, start=start, stop=hostile_trace.n_tokens)
    parsed = tags(page)
    assert "img" not in parsed.tags
    assert set(parsed.tags) <= {"html", "head", "meta", "title", "style", "body", "p", "div", "span", "select",
                                "script"}
    assert "</script><img" not in page and "<img" not in page
    params = page_params(page)
    assert params["attention"][0]["left_text"] == [bv.display_token(t) for t in hostile_trace.tokens[start:]]
    # the widget: one sandboxed iframe whose srcdoc is the page itself
    widget = bv.head_view(hostile_trace, start=start, stop=hostile_trace.n_tokens)
    outer = tags(widget.value)
    assert outer.tags == ["iframe"] and outer.attrs[0]["sandbox"] == "allow-scripts"
    inner = outer.attrs[0]["srcdoc"]
    assert "img" not in tags(inner).tags
    assert page_params(inner)["attention"][0]["left_text"] == params["attention"][0]["left_text"]


def test_views_never_import_torch(hostile_trace, tmp_path):
    path = tmp_path / "hostile.trace"
    hostile_trace.save(path)
    code = f"""
import sys, explorer
from explorer import views
trace = explorer.load_trace({str(path)!r})
views.head_view(trace, selection=views.Selection()); views.model_view(trace)
from explorer.views.attention.bertviz_offline import head_view_html, model_view_html
head_view_html(trace); model_view_html(trace)
print(sorted(m for m in ("torch", "transformers", "bertviz", "bertviz.util") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_page_size_stays_bounded_for_smollm2_shape():
    trace = smollm2_shaped_trace(64, sink=1)  # 64 tokens x 30 layers x 9 heads, diffuse: few zeros, a worst case
    page = bv.head_view_html(trace)
    print(f"\nhead_view 64 tokens x 30 layers x 9 heads: {len(page) / 1e6:.2f} MB")
    assert len(page_params(page)["attention"][0]["attn"].ravel()) == 64 * 64 * 30 * 9
    assert len(page) < 4e6
    model = bv.BertvizPage(trace, "model_view")  # the default window shrinks to what it can draw
    n = model.stop - model.start
    assert 30 * 9 * n * n <= bv.MAX_MODEL_VIEW_LINES < 30 * 9 * (n + 1) ** 2
    assert f"The window is {n} tokens" in model.caption
    with pytest.raises(ValueError, match="pick fewer layers= or heads="):
        bv.model_view_html(trace, start=0, stop=64)
    assert len(bv.model_view_html(trace, layers=[0, 1], heads=[0, 1, 2], start=0, stop=64)) < 1e6
    bigger = smollm2_shaped_trace(72, sink=1, seed=1)
    with pytest.raises(ValueError, match="more than 1,200,000"):
        bv.head_view_html(bigger, start=0, stop=72, max_tokens=72)
    shrunk = bv.BertvizPage(bigger, "head_view", max_tokens=72)
    assert 30 * 9 * (shrunk.stop - shrunk.start) ** 2 <= bv.MAX_WEIGHTS


def test_head_view_follows_the_selection(tiny_trace):
    selection = Selection(layer=1, head=2)
    widget = bv.head_view(tiny_trace, heads=[0, 2], selection=selection)

    def shown():
        params = page_params(html.unescape(tags(widget.value).attrs[0]["srcdoc"]))
        return params["layer"], params["heads"]

    assert shown() == (1, [1])  # head 2 is the second of the heads shown
    selection.layer, selection.head = 0, None
    assert shown() == (0, None)
    selection.head = 3  # not among the heads shown: all shown heads stay on
    assert shown() == (0, None)


def test_display_token_and_missing_assets():
    assert bv.display_token("a\nb\tc") == "a↵b⇥c"
    with pytest.raises(bv.OfflineAssetError, match="pip install no-such-dist"):
        bv._package_js("no-such-dist", "x.js", "x")
