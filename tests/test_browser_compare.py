"""The compare view in Voilà, in headless Chromium, offline: two tiny traces of prompts that differ by one word
(token runs), and two traces of different tokenizers and model shapes (by text). Tests read what the browser shows:
canvas pixels, the method sentence, the tooltip against numpy, the marked steps, and that nothing is cut off.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import make_tiny_lm
from explorer.alignment import align, difference, step_pairs
from explorer.views.frontend.tokens_html import visible
from test_compare import CAT, DOG, make_pair_lm
from voila_harness import OUTPUT, browser, offline_page, voila_server, write_notebook

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"

CELL = """
import explorer, ipywidgets as W
a, b, c = (explorer.load_trace(p) for p in {paths!r})
one = explorer.compare(a, b, layer=1, head=2)
one.add_class("cmp-words")
two = explorer.compare(a, c, layer=1, window_size=8)
two.add_class("cmp-text")
W.VBox([one, two])
"""

CANVAS_SUM = """(sel) => { const c = document.querySelector(sel);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] + 2 * d[i + 1] + 3 * d[i + 2]; return s; }"""

# the colour of the difference's cell (i, j) on the canvas, as [r, g, b]
PIXEL = """([sel, i, j, n]) => { const c = document.querySelector(sel), s = c.width / n;
  const at = (k) => Math.floor((k + 0.5) * s);
  return [...c.getContext('2d').getImageData(at(j), at(i), 1, 1).data].slice(0, 3); }"""


def js_fmt(w: float) -> str:
    """compare.js's number format: 3 significant digits, exponent notation below 1e-3."""
    if w == 0:
        return "0"
    if abs(w) < 1e-3:
        mantissa, exponent = f"{w:.2e}".split("e")
        return f"{mantissa}e{int(exponent):+d}"
    return f"{w:#.3g}".rstrip(".")


@pytest.fixture(scope="module")
def traces():
    lm = make_tiny_lm("llama")
    a = lm.generate(CAT, max_new_tokens=10, progress=False)
    b = lm.generate(DOG, max_new_tokens=10, temperature=1.0, seed=1, progress=False)
    c = make_pair_lm().generate(CAT, max_new_tokens=6, progress=False)
    tokens = list(a.tokens)
    tokens[2] = XSS  # a hostile token, unmatched in nothing: it must show as text
    return dataclasses.replace(a, tokens=tokens), b, c


@pytest.fixture(scope="module")
def page(traces, tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare")
    paths = []
    for name, trace in zip("abc", traces):
        trace.save(folder / f"{name}.trace")
        paths.append(str(folder / f"{name}.trace"))
    notebook = write_notebook(folder / "compare.ipynb", [CELL.format(paths=paths)])
    with browser() as chromium, voila_server(notebook) as url:
        page, log = offline_page(chromium, viewport=(1280, 1400))
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_selector(".cmp-words[data-draw-count]", timeout=180_000)
        page.wait_for_selector(".cmp-text[data-draw-count]")
        yield page, log
        page.screenshot(path=str(OUTPUT / "compare_voila_end.png"), full_page=True)


def test_both_heatmaps_and_the_difference_draw(page):
    page, _ = page
    page.screenshot(path=str(OUTPUT / "compare_voila_load.png"), full_page=True)
    for view in (".cmp-words", ".cmp-text"):
        for panel in ("a", "b", "diff"):
            assert page.evaluate(CANVAS_SUM, f"{view} .ae-cmp-{panel}") > 0, (view, panel)
    page.locator(".cmp-words").screenshot(path=str(OUTPUT / "compare_voila_words.png"))
    page.locator(".cmp-text").screenshot(path=str(OUTPUT / "compare_voila_text.png"))


def test_the_method_sentence_shows(page, traces):
    page, _ = page
    a, b, c = traces
    words = page.locator(".cmp-words .ae-cmp-method")
    assert words.get_attribute("data-method") == "token runs"
    assert words.inner_text() == align(a, b).sentence
    text = page.locator(".cmp-text .ae-cmp-method")
    assert text.get_attribute("data-method") == "text"
    assert text.inner_text().startswith("By text only: different tokenizers")
    assert "same relative depth" in page.locator(".cmp-text .ae-cmp-note").inner_text()
    assert page.locator(".cmp-text .ae-cmp-head").is_disabled()


def test_a_difference_cell_shows_the_numpy_difference(page, traces):
    page, _ = page
    a, b, _ = traces
    al = align(a, b)
    rows = [i for i, _ in al.pairs]
    cols = [j for _, j in al.pairs]
    delta = a.attention(1, 2)[rows][:, rows] - b.attention(1, 2)[cols][:, cols]
    m = len(al.pairs)
    q, k = int(np.argmax(np.abs(delta).max(axis=1))), 0  # the row holding the largest difference, key 0
    k = int(np.argmax(np.abs(delta[q, : q + 1])))
    box = page.locator(".cmp-words .ae-cmp-diff").bounding_box()
    page.mouse.move(box["x"] + (k + 0.5) * box["width"] / m, box["y"] + (q + 0.5) * box["height"] / m)
    tip = page.locator(".cmp-words .ae-tip")
    text = tip.inner_text()
    assert f"query  A {rows[q]} “" in text and f"B {cols[q]} “" in text
    assert text.endswith(f"A−B {js_fmt(float(delta[q, k]))}"), text
    assert f"A {js_fmt(float(a.attention(1, 2)[rows[q], rows[k]]))}" in text
    page.locator(".cmp-words").screenshot(path=str(OUTPUT / "compare_voila_tooltip.png"))
    # the largest difference is the deepest colour: red if A is higher, blue if B is
    r, g, bl = page.evaluate(PIXEL, [".cmp-words .ae-cmp-diff", q, k, m])
    assert (r > bl) if delta[q, k] > 0 else (bl > r)
    assert min(r, g, bl) < 120


def test_the_steps_that_chose_differently_are_marked(page, traces):
    page, _ = page
    a, b, _ = traces
    differing = [p.index for p in step_pairs(a, b, align(a, b)) if p.differs]
    assert differing  # B was sampled: some of its choices differ
    marks = page.locator(".cmp-words .ae-cmp-differs")
    assert [int(m.get_attribute("data-step")) for m in marks.all()] == differing
    first = differing[0]
    svg = page.locator(".cmp-words .ae-cmp-steps svg").bounding_box()
    mark = marks.first.locator("circle").first.bounding_box()
    page.mouse.move(mark["x"] + mark["width"] / 2, mark["y"] + mark["height"] / 2)
    tip = page.locator(".cmp-words .ae-tip").inner_text()
    sa, sb = a.steps[first], b.steps[first]
    assert tip.startswith(f"step {first}\n") and "chose differently" in tip
    assert f"p = {sa.prob:.3f}" in tip and f"p = {sb.prob:.3f}" in tip
    assert svg["width"] > 300
    page.locator(".cmp-words .ae-cmp-steps").screenshot(path=str(OUTPUT / "compare_voila_steps.png"))


def test_nothing_is_cut_off(page):
    page, _ = page
    for view in (".cmp-words", ".cmp-text"):
        outer = page.locator(view).bounding_box()
        assert outer["x"] + outer["width"] <= 1280
        parts = page.locator(f"{view} .ae-cmp-panel, {view} .ae-cmp-legend, {view} .ae-cmp-steps svg").all()
        assert len(parts) == 6
        for part in parts:
            box = part.bounding_box()
            assert box["x"] >= outer["x"] - 1 and box["x"] + box["width"] <= outer["x"] + outer["width"] + 1, view
        scroll = page.evaluate(f"(e => [e.scrollWidth, e.clientWidth])(document.querySelector('{view}'))")
        assert scroll[0] <= scroll[1] + 1


def test_a_narrow_page_wraps_the_panels_instead_of_cutting_them(page):
    page, _ = page
    page.set_viewport_size({"width": 760, "height": 1400})
    try:
        page.wait_for_function("document.querySelector('.cmp-words').clientWidth < 760")
        page.wait_for_timeout(300)  # the resize observer's redraw
        outer = page.locator(".cmp-words").bounding_box()
        for part in page.locator(".cmp-words .ae-cmp-panel, .cmp-words .ae-cmp-legend").all():
            box = part.bounding_box()
            assert box["x"] + box["width"] <= outer["x"] + outer["width"] + 1
        page.locator(".cmp-words").screenshot(path=str(OUTPUT / "compare_voila_narrow.png"))
    finally:
        page.set_viewport_size({"width": 1280, "height": 1400})


def test_switching_head_and_log_scale_redraws(page):
    page, _ = page
    before = page.evaluate("document.querySelector('.cmp-words .ae-cmp-diff').toDataURL()")
    page.select_option(".cmp-words .ae-cmp-head", "-1")
    page.wait_for_function("document.querySelector('.cmp-words').dataset.shows === '1 mean'")
    assert page.evaluate("document.querySelector('.cmp-words .ae-cmp-diff').toDataURL()") != before
    linear = page.evaluate("document.querySelector('.cmp-words .ae-cmp-a').toDataURL()")
    page.locator(".cmp-words .ae-cmp-log").check()
    page.wait_for_function(f"document.querySelector('.cmp-words .ae-cmp-a').toDataURL() !== {linear!r}")
    assert "log" in page.locator(".cmp-words .ae-cmp-legend").first.inner_text()
    page.locator(".cmp-words").screenshot(path=str(OUTPUT / "compare_voila_log.png"))


def test_a_window_of_matched_positions_moves_with_its_sliders(page, traces):
    page, _ = page
    a, _, c = traces
    al = align(a, c)
    m = len(al.pairs)
    view = page.locator(".cmp-text")
    assert m > 8 and view.get_attribute("data-window-at") == "0 0 8 8"
    assert page.locator(".cmp-text .ae-cmp-size").is_visible() is False  # 12 pairs: no larger window to pick
    page.locator(".cmp-text .ae-cmp-rows").focus()
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    page.wait_for_function("document.querySelector('.cmp-text').dataset.windowAt === '3 0 8 8'")
    labels = page.locator(".cmp-text .ae-cmp-diff").locator("xpath=..").locator(".ae-cmp-row-label")
    first = al.pairs[3]
    assert labels.first.get_attribute("title") == f"A #{first[0]}, B #{first[1]}"
    d = difference(a, c, al, 1)  # the mean of heads at the same relative depth: B's layer 2 of 3
    box = page.locator(".cmp-text .ae-cmp-diff").bounding_box()
    page.mouse.move(box["x"] + 0.5 * box["width"] / 8, box["y"] + 5.5 * box["height"] / 8)  # pair 3 + 5, key pair 0
    tip = page.locator(".cmp-text .ae-tip").inner_text()
    assert tip.endswith(f"A−B {js_fmt(float(d.delta[8, 0]))}"), tip
    view.screenshot(path=str(OUTPUT / "compare_voila_text_window.png"))


def test_hostile_tokens_show_as_text_and_no_errors(page):
    page, log = page
    labels = page.locator(".cmp-words .ae-cmp-row-label").all_text_contents()
    assert visible(XSS) in labels
    assert page.locator(".ae-compare img, .ae-compare script").count() == 0
    assert log.dialogs == []
    assert log.our_blocked() == []
    assert log.page_errors == []
    assert log.our_console_errors() == []
