"""The heatmap and the heads map in Voilà, and the standalone HTML page from file://, in headless Chromium, offline.

One Voilà page for the module: a tiny GQA trace whose tokens hold HTML, shown as a heads map and a heatmap that
share a Selection, with a label that prints the Python side of that selection. Tests read what the browser
shows: canvas pixels, label text, the tooltip, and the Python state as the page reflects it.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from explorer.views.export import standalone_html
from explorer.views.frontend.tokens_html import visible
from voila_harness import OUTPUT, browser, offline_page, served_page, write_notebook

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"
SCRIPT = "</script><script>alert(2)</script>"

CELL = """
import explorer, ipywidgets as W
from explorer.views import Selection
from explorer.views.attention.heatmap_view import heatmap
from explorer.views.attention.heads_map_view import heads_map

trace = explorer.load_trace({path!r})
sel = Selection()
state = W.Label()
state.add_class("py-state")
show = lambda *_: setattr(state, "value", f"layer={{sel.layer}} head={{sel.head}} token={{sel.token}}")
sel.observe(show)
show()
W.VBox([heads_map(trace, selection=sel), heatmap(trace, selection=sel, head=0), state])
"""

CANVAS_SUM = """(sel) => { const c = document.querySelector(sel);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] + 2 * d[i + 1] + 3 * d[i + 2]; return s; }"""


def js_fmt(w: float) -> str:
    """The tooltip's number format (heatmap.js fmt): 3 significant digits."""
    if w == 0:
        return "0"
    if abs(w) < 1e-3:
        mantissa, exponent = f"{w:.2e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{w:#.3g}".rstrip(".")


@pytest.fixture(scope="module")
def trace(tiny_trace):
    tokens = list(tiny_trace.tokens)
    tokens[2], tokens[tiny_trace.n_prompt + 1] = XSS, SCRIPT
    return dataclasses.replace(tiny_trace, tokens=tokens)


@pytest.fixture(scope="module")
def chromium():
    with browser() as b:
        yield b


@pytest.fixture(scope="module")
def page(trace, tmp_path_factory, chromium):
    folder = tmp_path_factory.mktemp("attention")
    trace.save(folder / "hostile.trace")
    notebook = write_notebook(folder / "attention.ipynb", [CELL.format(path=str(folder / "hostile.trace"))])
    with served_page(chromium, notebook, ".ae-heatmap[data-draw-count]", viewport=(1300, 1400)) as (page, log):
        page.wait_for_selector(".ae-heads-map[data-draw-count]")
        page.wait_for_selector(".py-state")
        yield page, log
        page.screenshot(path=str(OUTPUT / "attention_voila_end.png"), full_page=True)


def heatmap_data(page) -> dict:
    return page.evaluate("({...document.querySelector('.ae-heatmap').dataset})")


def wait_py_state(page, text: str) -> None:
    page.wait_for_function(f"document.querySelector('.py-state').textContent.includes({json.dumps(text)})")


def test_heatmap_and_heads_map_draw(page, trace):
    page, _ = page
    page.screenshot(path=str(OUTPUT / "attention_voila_load.png"), full_page=True)
    assert page.evaluate(CANVAS_SUM, ".ae-window") > 0
    assert page.evaluate(CANVAS_SUM, ".ae-overview") > 0
    assert page.evaluate(CANVAS_SUM, ".ae-thumbs") > 0
    assert page.locator(".ae-row-label").count() == trace.n_tokens
    assert page.locator(".ae-stats tr").count() == 1 + trace.n_layers * trace.n_heads


def test_switching_head_changes_the_canvas(page):
    page, _ = page
    page.select_option(".ae-head", "1")
    page.wait_for_function("document.querySelector('.ae-heatmap').dataset.head === '1'")
    before = page.evaluate("document.querySelector('.ae-window').toDataURL()")
    page.select_option(".ae-head", "2")
    page.wait_for_function("document.querySelector('.ae-heatmap').dataset.head === '2'")
    wait_py_state(page, "head=2")
    assert page.evaluate("document.querySelector('.ae-window').toDataURL()") != before
    page.locator(".ae-heatmap").screenshot(path=str(OUTPUT / "attention_voila_head2.png"))


def test_tooltip_shows_the_true_weight(page, trace):
    page, _ = page
    page.select_option(".ae-layer", "1")
    page.select_option(".ae-head", "3")
    page.wait_for_function("(d => d.layer === '1' && d.head === '3')(document.querySelector('.ae-heatmap').dataset)")
    box = page.locator(".ae-window").bounding_box()
    n = trace.n_tokens
    q, k = 9, 4
    page.mouse.move(box["x"] + (k + 0.5) * box["width"] / n, box["y"] + (q + 0.5) * box["height"] / n)
    tip = page.locator(".ae-heatmap .ae-tip")
    weight = float(trace.attention(1, 3)[q, k])
    assert f"query {q} “{visible(trace.tokens[q])}”" in tip.inner_text()
    assert tip.inner_text().endswith("weight " + js_fmt(weight))
    page.locator(".ae-heatmap").screenshot(path=str(OUTPUT / "attention_voila_tooltip.png"))
    # the overview asks Python for the exact value (one token a cell here)
    ov = page.locator(".ae-overview").bounding_box()
    page.mouse.move(ov["x"] + (k + 0.5) * ov["width"] / n, ov["y"] + (q + 0.5) * ov["height"] / n)
    page.wait_for_function("!document.querySelector('.ae-heatmap .ae-tip').textContent.includes('…')")
    assert "largest weight: " + js_fmt(weight) in tip.inner_text()


def test_clicking_labels_and_cells_selects_tokens(page, trace):
    page, _ = page
    page.locator(".ae-row-label[data-pos='5']").click()
    wait_py_state(page, "token=5")
    assert f"selected token 5 “{visible(trace.tokens[5])}”" in page.locator(".ae-readout").inner_text()
    page.locator(".ae-col-label[data-pos='3']").click()
    wait_py_state(page, "token=3")
    box = page.locator(".ae-window").bounding_box()
    n = trace.n_tokens
    page.mouse.click(box["x"] + 1.5 * box["width"] / n, box["y"] + 11.5 * box["height"] / n)  # row 11, column 1
    wait_py_state(page, "token=11")
    page.wait_for_function("document.querySelector('.ae-readout').textContent.includes('selected token 11 ')")


def test_clicking_a_thumbnail_opens_that_head(page):
    page, _ = page
    g = json.loads(page.locator(".ae-heads-map").get_attribute("data-geometry"))
    box = page.locator(".ae-thumbs").bounding_box()
    layer, head = 1, 2
    page.mouse.click(box["x"] + g["left"] + head * g["cw"] + g["px"] / 2, box["y"] + g["top"] + layer * g["ch"] + g["px"] / 2)
    page.wait_for_function("(d => d.layer === '1' && d.head === '2')(document.querySelector('.ae-heatmap').dataset)")
    wait_py_state(page, "layer=1 head=2")
    assert page.locator(".ae-head").input_value() == "2" and page.locator(".ae-layer").input_value() == "1"
    page.locator(".ae-stats tr[data-layer='0'][data-head='3']").click()  # a row of the table too
    page.wait_for_function("(d => d.layer === '0' && d.head === '3')(document.querySelector('.ae-heatmap').dataset)")
    page.locator(".ae-heads-map").screenshot(path=str(OUTPUT / "attention_voila_heads_map.png"))


def test_statistics_table_sorts(page, trace):
    page, _ = page
    page.locator(".ae-stats th[data-key='first']").click()  # a statistic sorts largest first
    shown = [(int(r.get_attribute("data-layer")), int(r.get_attribute("data-head")))
             for r in page.locator(".ae-stats tr[data-layer]").all()]
    first = {(layer, head): float(trace.attention(layer, head)[1:, 0].mean())
             for layer in range(trace.n_layers) for head in range(trace.n_heads)}
    values = [first[k] for k in shown]
    assert len(shown) == len(first)
    assert all(a >= b - 1e-5 for a, b in zip(values, values[1:]))  # the table holds 6 decimals


def test_hostile_tokens_show_as_text(page, trace):
    page, log = page
    labels = page.locator(".ae-row-label").all_text_contents()
    assert visible(XSS) in labels and visible(SCRIPT) in labels
    assert page.locator(".ae-heatmap img, .ae-heads-map img, .ae-heatmap script").count() == 0
    assert log.dialogs == []


def test_no_outside_requests_and_no_errors(page):
    page, log = page
    assert log.our_blocked() == []
    assert log.page_errors == []
    assert log.our_console_errors() == []


def test_standalone_page_draws_and_steps_offline(trace, tmp_path, chromium):
    path = standalone_html(trace, tmp_path / "attention.html", layer=1, head=0)
    page, log = offline_page(chromium, viewport=(1300, 1300))
    page.route(lambda url: url.startswith("file://"), lambda r: r.continue_())  # the page itself, nothing else
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready]")
    assert page.evaluate(CANVAS_SUM, ".ae-window") > 0
    before = page.evaluate("document.querySelector('.ae-window').toDataURL()")
    page.select_option(".ae-head", "3")
    page.wait_for_function("document.querySelector('.ae-heatmap').dataset.head === '3'")
    assert page.evaluate("document.querySelector('.ae-window').toDataURL()") != before
    # step through: the text grows by the new token, marked; the readout gives its probability
    slider = page.locator(".ae-step-slider")
    slider.focus()
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    step = trace.steps[3]
    stepper = page.evaluate("({...document.querySelector('.ae-stepper').dataset})")
    assert (int(stepper["step"]), int(stepper["position"])) == (3, step.position)
    assert page.locator(".ae-step-text").text_content() == "".join(trace.tokens[: step.position + 1])
    assert f"probability {js_fmt(step.prob)}, rank {step.rank}" in page.locator(".ae-step-token").text_content()
    assert page.locator(".ae-step-topk tr").count() == 1 + len(step.top_k)
    # the attention that chose the token, shaded on the text: its largest weight is the darkest token
    row = trace.step_attention(3, 1, 3)
    alphas = page.evaluate("[...document.querySelectorAll('.ae-step-text span')].slice(0, -1)"
                           ".map(s => +(s.style.background.match(/rgba\\([^)]*,\\s*([\\d.]+)\\)/) || [0, 0])[1])")
    assert max(range(len(alphas)), key=alphas.__getitem__) == int(row.argmax())
    assert visible(XSS) in page.locator(".ae-row-label").all_text_contents()
    assert page.locator("img").count() == 0
    page.screenshot(path=str(OUTPUT / "attention_standalone.png"), full_page=True)
    # the kinds: value-weighted (α·‖v W_O‖ of this head) and the rollout, each hovered against numpy
    n, q, k = trace.n_tokens, 9, 4
    expected = {"norm": float(trace.attention(1, 3, kind="norm")[q, k]),
                "rollout": float(trace.attention_flow("rollout")[q, k])}
    for kind, value in expected.items():
        page.select_option(".ae-kind", kind)
        page.wait_for_function(f"document.querySelector('.ae-heatmap').dataset.kind === {kind!r}")
        box = page.locator(".ae-window").bounding_box()
        page.mouse.move(box["x"] + (k + 0.5) * box["width"] / n, box["y"] + (q + 0.5) * box["height"] / n)
        assert page.locator(".ae-heatmap .ae-tip").inner_text().endswith(js_fmt(value)), kind
        page.locator(".ae-heatmap").screenshot(path=str(OUTPUT / f"attention_standalone_{kind}.png"))
    assert log.dialogs == [] and log.page_errors == [] and log.console_errors == []
    assert log.blocked == [] and math.isfinite(step.prob)


ZERO_WINDOWS_CELL = """
import explorer, ipywidgets as W
from explorer.views.attention.heatmap_view import heatmap

view = heatmap(explorer.load_trace({path!r}), window_size=16)
state = W.Label()
state.add_class("py-window")
show = lambda *_: setattr(state, "value", f"window={{view.window_start}},{{view.key_start}}")
view.observe(show, ["window_start", "key_start"])
show()
W.VBox([view, state])
"""


def test_moving_the_window_redraws_even_when_its_bytes_do_not_change(tmp_path, chromium):
    from conftest import make_tiny_lm

    trace = make_tiny_lm("llama").trace("x" * 39)  # 40 tokens: a 16-token window can sit wholly above the diagonal
    trace.save(tmp_path / "long.trace")
    cell = ZERO_WINDOWS_CELL.format(path=str(tmp_path / "long.trace"))
    notebook = write_notebook(tmp_path / "zero_windows.ipynb", [cell])
    with served_page(chromium, notebook, ".ae-heatmap[data-draw-count]", viewport=(1300, 1200)) as (page, log):
        box = page.locator(".ae-overview").bounding_box()
        n = trace.n_tokens  # one token an overview cell

        def click_overview(row: int, col: int, expect: tuple[int, int]) -> None:
            page.mouse.click(box["x"] + (col + 0.5) * box["width"] / n, box["y"] + (row + 0.5) * box["height"] / n)
            page.wait_for_function("document.querySelector('.py-window').textContent === "
                                   + json.dumps(f"window={expect[0]},{expect[1]}"))

        def first_labels() -> tuple[str, str]:
            return (page.locator(".ae-row-label").first.get_attribute("data-pos"),
                    page.locator(".ae-col-label").first.get_attribute("data-pos"))

        click_overview(8, 30, (1, 23))  # every key after every query: all masked, all-zero bytes
        page.wait_for_function("document.querySelector('.ae-heatmap').dataset.keyStart === '23'")
        assert first_labels() == ("1", "23")
        overview_before = page.evaluate("document.querySelector('.ae-overview').toDataURL()")
        click_overview(10, 32, (3, 24))  # all masked again: the same bytes, another place
        page.wait_for_function("(d => d.windowStart === '3' && d.keyStart === '24')"
                               "(document.querySelector('.ae-heatmap').dataset)", timeout=10_000)
        assert first_labels() == ("3", "24")
        assert page.evaluate("document.querySelector('.ae-overview').toDataURL()") != overview_before
        assert log.page_errors == [] and log.our_console_errors() == []


def test_a_window_move_sends_where_the_window_is_even_when_its_bytes_repeat():
    from conftest import make_tiny_lm
    from explorer.views.attention.heatmap_view import heatmap

    view = heatmap(make_tiny_lm("llama").trace("x" * 39), window_size=16)
    view.set_state({"window_start": 1, "key_start": 23})  # as the browser sends it: all masked
    zeros = view.window
    sent = []
    send_state = view.send_state
    view.send_state = lambda key=None: (sent.append(set(key or ())), send_state(key))
    view.set_state({"window_start": 3, "key_start": 24})  # all masked again: the same bytes
    assert view.window == zeros and not any(zeros)
    assert sent and sent[-1] - {"window_start", "key_start"}  # the browser hears of the move with the data
