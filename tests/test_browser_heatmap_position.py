"""The heatmap's kinds of position and its distance profile in Voilà, in headless Chromium, offline.

A tiny Llama's trace (rotary) saved to a file and shown as a heatmap: picking "position taken out" redraws the
canvas and the tooltip shows trace.attention(..., kind="no_position") at the cell; "position's effect" shows the
difference; the distance profile under the heatmap is drawn for the selected head, whole, and follows the head.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from voila_harness import OUTPUT, browser, served_page, write_notebook

import explorer

pytestmark = pytest.mark.browser

CELL = """
import explorer, ipywidgets as W
from explorer.views.attention.heatmap_view import heatmap

trace = explorer.load_trace({path!r})
where = W.Label(explorer.__file__)
where.add_class("py-explorer")
W.VBox([heatmap(trace, layer=1, head=2), where])
"""

CANVAS_SUM = """(sel) => { const c = document.querySelector(sel);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] + 2 * d[i + 1] + 3 * d[i + 2]; return s; }"""

DATA = "document.querySelector('.ae-heatmap').dataset"


@pytest.fixture(scope="module")
def chromium():
    with browser() as b:
        yield b


@pytest.fixture(scope="module")
def page(tiny_trace, tmp_path_factory, chromium):
    assert "no_position" in tiny_trace.kinds
    folder = tmp_path_factory.mktemp("position")
    tiny_trace.save(folder / "tiny.trace")
    notebook = write_notebook(folder / "position.ipynb", [CELL.format(path=str(folder / "tiny.trace"))])
    with served_page(chromium, notebook, ".ae-heatmap[data-draw-count]", viewport=(1300, 1400)) as (page, log):
        page.wait_for_function(f"{DATA}.profileOf === '1 2'")
        yield page, log


def hover_cell(page, trace, q: int, k: int) -> str:
    box = page.locator(".ae-window").bounding_box()
    n = trace.n_tokens
    page.mouse.move(box["x"] + 1, box["y"] + 1)  # off the cell first, so the move below is a new one
    page.mouse.move(box["x"] + (k + 0.5) * box["width"] / n, box["y"] + (q + 0.5) * box["height"] / n)
    return page.locator(".ae-heatmap .ae-tip").inner_text()


def number(tip: str, name: str) -> float:
    return float(re.search(rf"{re.escape(name)}\s+([-+0-9.e]+)", tip).group(1))


def test_the_kernel_imports_this_checkout(page):
    page, _ = page
    assert Path(page.locator(".py-explorer").inner_text()).resolve() == Path(explorer.__file__).resolve()


def test_position_taken_out_redraws_and_the_tooltip_shows_the_traces_weight(page, tiny_trace):
    page, _ = page
    before = page.evaluate("document.querySelector('.ae-window').toDataURL()")
    page.select_option(".ae-kind", "no_position")
    page.wait_for_function(f"{DATA}.kind === 'no_position'")
    assert page.evaluate("document.querySelector('.ae-window').toDataURL()") != before
    assert "rotary undone" in page.locator(".ae-kind-note").inner_text()
    gap = np.abs(tiny_trace.attention(1, 2) - tiny_trace.attention(1, 2, kind="no_position"))
    q, k = (int(x) for x in np.unravel_index(int(np.argmax(gap)), gap.shape))  # where position matters most
    tip = hover_cell(page, tiny_trace, q, k)
    free = float(tiny_trace.attention(1, 2, kind="no_position")[q, k])
    raw = float(tiny_trace.attention(1, 2)[q, k])
    assert abs(number(tip, "without position") - free) <= 1e-3
    assert abs(number(tip, "weight") - raw) <= 1e-3
    assert abs(free - raw) > 1e-3  # the two differ here, so the test tells them apart
    page.locator(".ae-heatmap").screenshot(path=str(OUTPUT / "heatmap_no_position.png"))


def test_position_effect_draws_the_difference(page, tiny_trace):
    page, _ = page
    page.select_option(".ae-kind", "position_effect")
    page.wait_for_function(f"{DATA}.kind === 'position_effect'")
    q, k = 14, 3
    tip = hover_cell(page, tiny_trace, q, k)
    diff = float(tiny_trace.attention(1, 2)[q, k] - tiny_trace.attention(1, 2, kind="no_position")[q, k])
    assert abs(number(tip, "position's effect") - diff) <= 1e-3
    assert page.evaluate(CANVAS_SUM, ".ae-window") > 0
    page.locator(".ae-heatmap").screenshot(path=str(OUTPUT / "heatmap_position_effect.png"))


def test_the_distance_profile_is_drawn_whole_and_follows_the_head(page, tiny_trace):
    page, _ = page
    assert page.evaluate(CANVAS_SUM, ".ae-profile-chart") > 0
    chart = page.locator(".ae-profile-chart").bounding_box()
    view = page.locator(".ae-heatmap").bounding_box()
    width = page.evaluate("document.documentElement.clientWidth")
    assert chart["width"] > 300 and chart["height"] > 100
    assert view["x"] <= chart["x"] and chart["x"] + chart["width"] <= min(view["x"] + view["width"], width)
    assert view["y"] <= chart["y"] and chart["y"] + chart["height"] <= view["y"] + view["height"]
    key = page.locator(".ae-profile-key").inner_text()
    first = tiny_trace.distance_profile(1, 2)["first_token"]
    assert "position taken out" in key
    assert abs(float(re.search(r"on the first position: ([-+0-9.e]+)", key).group(1)) - float(first)) <= 1e-3
    count = int(page.evaluate(f"{DATA}.profileDrawCount"))
    page.select_option(".ae-head", "0")
    page.wait_for_function(f"{DATA}.profileOf === '1 0' && +{DATA}.profileDrawCount > {count}")
    page.select_option(".ae-kind", "raw")
    page.wait_for_function(f"{DATA}.kind === 'raw' && {DATA}.head === '0'")
    page.screenshot(path=str(OUTPUT / "heatmap_profile_page.png"), full_page=True)


def test_no_errors(page):
    page, log = page
    assert log.page_errors == [] and log.our_console_errors() == [] and log.our_blocked() == []


SINK_CELL = """
import explorer
from explorer.views.attention.heatmap_view import heatmap
heatmap(explorer.load_trace({path!r}), layer=1, head=0, window_size=16)
"""


def test_a_learned_sink_shows_as_its_own_column(tmp_path, chromium):
    import dataclasses

    from synthetic import synthetic_trace

    trace = synthetic_trace(40, n_layers=2, n_heads=2, rotary=True, seed=5)
    trace = dataclasses.replace(trace, layers=[dataclasses.replace(layer, sinks=np.array([2.0, 0.0], dtype=np.float32))
                                               for layer in trace.layers])
    trace.save(tmp_path / "sinks.trace")
    notebook = write_notebook(tmp_path / "sinks.ipynb", [SINK_CELL.format(path=str(tmp_path / "sinks.trace"))])
    ready = ".ae-heatmap[data-draw-count] .ae-sink"
    with served_page(chromium, notebook, ready, viewport=(1300, 1000)) as (page, log):
        assert page.locator(".ae-sink").is_visible() and page.evaluate(CANVAS_SUM, ".ae-sink") > 0
        sink, window = page.locator(".ae-sink").bounding_box(), page.locator(".ae-window").bounding_box()
        assert sink["x"] > window["x"] + window["width"] and abs(sink["height"] - window["height"]) <= 3
        row = 7
        page.mouse.move(sink["x"] + sink["width"] / 2, sink["y"] + (row + 0.5) * sink["height"] / 16)
        tip = page.locator(".ae-heatmap .ae-tip").inner_text()
        share = float(trace.layers[1].sink_share(0, row, row + 1)[0])
        assert abs(float(re.search(r"learned sink ([-+0-9.e]+)", tip).group(1)) - share) <= 1e-3
        page.locator(".ae-heatmap").screenshot(path=str(OUTPUT / "heatmap_sink.png"))
        assert log.page_errors == [] and log.our_console_errors() == []
