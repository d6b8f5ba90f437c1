"""The logit lens in Voilà, in headless Chromium, offline.

One Voilà page for the module: the explorer of a generated trace whose lens covers its steps (its "Logit lens" tab
opened), with boxes that set the selection from elsewhere and a label that prints the Python side of it; a lens of
2,048 positions × 30 layers in a 900-pixel box; the explorer of a trace without a lens. Tests read what the browser
shows (cell text, the tooltip, colours, boxes) and compare it with the trace's lens arrays.
"""

from __future__ import annotations

import json
import re

import pytest

from explorer.views.frontend.tokens_html import visible
from synthetic import synthetic_trace, with_analysis
from voila_harness import OUTPUT, notebook_page, write_notebook

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"

CELL = """
import explorer, traitlets, ipywidgets as W
from explorer.views import Selection, lens, show

def case(name, *children):
    box = W.VBox([W.HTML("<h3>" + name + "</h3>"), *children])
    box.add_class("case-" + name)
    return box

def state_label(sel, name):
    label = W.Label()
    label.add_class(name)
    report = lambda *_: setattr(label, "value", f"layer={sel.layer} step={sel.step} token={sel.token}")
    sel.observe(report)
    report()
    return label

steps = show(explorer.load_trace(STEPS))
sel = steps.selection
elsewhere = [W.IntText(description="step", continuous_update=False), W.IntText(description="layer", continuous_update=False)]
for box, name in zip(elsewhere, ["step", "layer"]):
    box.add_class("set-" + name)
    traitlets.link((sel, name), (box, "value"))
display(case("steps", steps, W.HBox(elsewhere), state_label(sel, "py-state")))

long_sel = Selection()
long_view = lens(explorer.load_trace(LONG), long_sel)
display(case("long", W.Box([long_view], layout=W.Layout(width="900px")), state_label(long_sel, "py-long")))
display(case("none", show(explorer.load_trace(NONE))))
"""


def words_trace(n_tokens: int, n_layers: int, vocab: int, seed: int):
    """A synthetic trace whose tokens repeat `vocab` words, one of them HTML, so that a random lens is quick to make
    and its top-1 tokens often are the token that came next."""
    trace = synthetic_trace(n_tokens, n_layers=n_layers, seed=seed)
    trace.token_ids = [i % vocab for i in range(n_tokens)]
    trace.tokens = [XSS if i % vocab == 3 else f" w{i % vocab}" for i in range(n_tokens)]
    return trace


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lens")
    made = {
        "steps": with_analysis(words_trace(40, 6, vocab=8, seed=1), n_generated=12, lens="steps", seed=1),
        "long": with_analysis(words_trace(2048, 30, vocab=300, seed=2), n_generated=6, lens="all", seed=2),
        "none": with_analysis(words_trace(20, 2, vocab=8, seed=3), n_generated=4, lens=None),
    }
    for name, trace in made.items():
        trace.save(folder / f"{name}.trace")
    return folder, made


@pytest.fixture(scope="module")
def page(traces):
    folder, _ = traces
    paths = "\n".join(f"{name.upper()} = {str(folder / f'{name}.trace')!r}" for name in ["steps", "long", "none"])
    notebook = write_notebook(folder / "lens.ipynb", [paths, CELL])
    with notebook_page(notebook, ".case-long .ae-lens[data-draw-count]", viewport=(1280, 1100)) as (page, log):
        for name in ["steps", "none"]:
            page.locator(f".case-{name}").get_by_role("tab", name="Logit lens").click()
            page.wait_for_selector(f".case-{name} .ae-lens[data-draw-count]", timeout=60_000)
        page.wait_for_selector(".case-steps .ae-lens-cell")
        page.screenshot(path=str(OUTPUT / "lens-load.png"), full_page=True)
        yield page, log
        page.screenshot(path=str(OUTPUT / "lens-end.png"), full_page=True)


def cell(page, case: str, layer: int, column: int):
    return page.locator(f".case-{case} .ae-lens-cell[data-layer='{layer}'][data-column='{column}']")


def wait_state(page, label: str, text: str) -> None:
    page.wait_for_function(f"document.querySelector('.{label}').textContent.includes({json.dumps(text)})")


def shown_cells(page, case: str) -> list[tuple[int, int, str]]:
    return page.locator(f".case-{case} .ae-lens-cell").evaluate_all(
        "els => els.map(e => [+e.dataset.layer, +e.dataset.column, e.textContent])")


def test_every_cell_shows_its_top1_token(page, traces):
    page, log = page
    trace = traces[1]["steps"]
    lz = trace.lens
    cells = shown_cells(page, "steps")
    assert len(cells) == lz.n_layers * len(lz.positions)  # 12 steps fit: every column drawn
    for layer, column, text in cells:
        assert text == visible(lz.top_k(layer, int(lz.positions[column]))[0].token)
    assert any(text == visible(XSS) for *_, text in cells)  # HTML in a token shows as its characters
    assert page.locator(".ae-lens img").count() == 0 and log.dialogs == []
    # columns: the step under the grid, the token it produced above
    col = page.locator(".case-steps .ae-lens-col[data-column='4']")
    assert col.locator(".ae-lens-label").text_content() == "step 4"
    assert col.locator(".ae-lens-target").text_content() == visible(trace.steps[4].token)
    # bold where the top-1 token is the one that came next, that is where its rank is 1
    bold = page.locator(".case-steps .ae-lens-cell.hit").evaluate_all(
        "els => els.map(e => [+e.dataset.layer, +e.dataset.column])")
    ranked_first = [[layer, c] for layer in range(lz.n_layers) for c in range(len(lz.positions))
                    if lz.next_rank[layer, c] == 1]
    assert sorted(bold) == sorted(ranked_first) and bold


def test_layer_0_is_at_the_bottom(page, traces):
    page, _ = page
    n_layers = traces[1]["steps"].n_layers
    tops = [cell(page, "steps", layer, 0).bounding_box()["y"] for layer in range(n_layers)]
    assert all(below > above for below, above in zip(tops, tops[1:]))  # each layer above the one before
    labels = [page.locator(f".case-steps .ae-lens-layer-label[data-layer='{layer}']").bounding_box()["y"]
              for layer in (0, n_layers - 1)]
    assert labels[0] > labels[1]
    under = page.locator(".case-steps .ae-lens-col[data-column='0'] .ae-lens-label").bounding_box()
    assert under["y"] >= tops[0] + cell(page, "steps", 0, 0).bounding_box()["height"] - 1  # step labels underneath


def inside(inner: dict, outer: dict, slack: float = 1.0) -> bool:
    return (inner["x"] >= outer["x"] - slack and inner["y"] >= outer["y"] - slack
            and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + slack
            and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + slack)


@pytest.mark.parametrize("case", ["steps", "long"])
def test_the_grid_fits_its_box(page, case):
    page, _ = page
    view = page.locator(f".case-{case} .ae-lens")
    box = view.bounding_box()
    parent = view.evaluate("e => { const r = e.parentElement.getBoundingClientRect();"
                           " return {x: r.x, y: r.y, width: r.width, height: r.height}; }")
    assert inside(box, parent)
    scroller = page.locator(f".case-{case} .ae-lens-scroller")
    assert inside(scroller.bounding_box(), box)
    sizes = scroller.evaluate("e => [e.scrollHeight, e.clientHeight, e.scrollWidth, e.clientWidth]")
    assert sizes[0] <= sizes[1]  # nothing cut off at the bottom: labels under the grid included
    first = page.locator(f".case-{case} .ae-lens-col").first.locator(".ae-lens-label").bounding_box()
    assert inside(first, scroller.bounding_box())
    if case == "long":
        assert box["width"] <= 900 and sizes[2] > sizes[3]  # a wide lens scrolls inside its box


def shown(token: str) -> str:
    """A token as the tooltip shows it: whitespace made visible, cut at 40 characters."""
    text = visible(token)
    return text if len(text) <= 40 else text[:39] + "…"


def tip_lines(page, case: str, layer: int, column: int) -> list[str]:
    cell(page, case, layer, column).hover()
    page.wait_for_function(f"(t => t.dataset.cell === '{layer},{column}' && t.dataset.ready === '1')"
                           f"(document.querySelector('.case-{case} .ae-lens-tip'))")
    return page.locator(f".case-{case} .ae-lens-tip").text_content().split("\n")


@pytest.mark.parametrize("layer, column", [(0, 2), (5, 11), (3, 7)])
def test_hover_lists_the_top_k_and_the_next_tokens_probability(page, traces, layer, column):
    page, _ = page
    trace = traces[1]["steps"]
    position = int(trace.lens.positions[column])
    lines = tip_lines(page, "steps", layer, column)
    assert lines[0] == f"layer {layer} · position {position} · step {column}"
    top = [re.match(r"\s*(\d+)\. “(.*)”\s+(\S+)$", line) for line in lines[3:-1]]
    expected = trace.lens.top_k(layer, position)
    assert [(int(m[1]), m[2]) for m in top] == [(i + 1, shown(c.token)) for i, c in enumerate(expected)]
    assert [float(m[3]) for m in top] == pytest.approx([c.prob for c in expected], rel=6e-3)
    m = re.match(r"next token “(.*)”: p (\S+), rank (\d+)$", lines[-1])
    assert m[1] == shown(trace.tokens[position + 1])
    assert float(m[2]) == pytest.approx(trace.lens.next_token_prob(layer, position), rel=6e-3)
    assert int(m[3]) == trace.lens.next_token_rank(layer, position)
    tip, at = page.locator(".case-steps .ae-lens-tip").bounding_box(), cell(page, "steps", layer, column).bounding_box()
    viewport = page.viewport_size
    assert inside(tip, {"x": 0, "y": 0, "width": viewport["width"], "height": viewport["height"]})  # never cut off
    assert abs(tip["x"] - (at["x"] + at["width"] / 2)) < tip["width"] + 30  # by the pointer
    assert abs(tip["y"] - (at["y"] + at["height"] / 2)) < tip["height"] + 30
    if (layer, column) == (3, 7):
        view = page.locator(".case-steps .ae-lens").bounding_box()
        bottom = max(view["y"] + view["height"], tip["y"] + tip["height"]) + 4
        page.screenshot(path=str(OUTPUT / "lens-tooltip.png"),
                        clip={"x": view["x"], "y": view["y"], "width": view["width"], "height": bottom - view["y"]})


def test_a_click_selects_the_layer_and_step_in_the_kernel(page):
    page, _ = page
    cell(page, "steps", 2, 4).click()
    wait_state(page, "py-state", "layer=2 step=4")
    page.wait_for_selector(".case-steps .ae-lens-cell.selected[data-layer='2'][data-column='4']")
    assert page.locator(".case-steps .ae-lens-cell.selected").count() == 1
    assert page.locator(".case-steps .ae-lens-layer-label.selected").text_content() == "L2"


def wait_boxes_settled(page) -> None:
    """Wait until the step and layer boxes show the selection the label prints. The label can print a new selection
    before the kernel's update of a box is sent (its observer of the layer runs before the box's of the step): a
    late update would overwrite what is typed into that box before Enter commits it."""
    page.wait_for_function("""() => {
        const [, layer, step] = document.querySelector('.py-state').textContent.match(/layer=(\\d+) step=(\\d+)/);
        const box = name => document.querySelector(`.case-steps .set-${name} input`).value;
        return box('layer') === layer && box('step') === step;
    }""")


def test_a_selection_made_elsewhere_is_highlighted(page):
    page, _ = page
    wait_boxes_settled(page)
    for name, value, state in [("step", "9", "step=9"), ("layer", "5", "layer=5 step=9")]:
        page.locator(f".case-steps .set-{name} input").fill(value)
        page.locator(f".case-steps .set-{name} input").press("Enter")
        wait_state(page, "py-state", state)
        wait_boxes_settled(page)
    page.wait_for_selector(".case-steps .ae-lens-cell.selected[data-layer='5'][data-column='9']")
    assert page.locator(".case-steps .ae-lens-col.selected").get_attribute("data-column") == "9"
    page.mouse.move(0, 0)
    page.locator(".case-steps").screenshot(path=str(OUTPUT / "lens-selected.png"))


def luminance(css: str) -> float:
    r, g, b = (int(x) for x in re.findall(r"\d+", css)[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def colours(page, case: str) -> dict[tuple[int, int], str]:
    shown = page.locator(f".case-{case} .ae-lens-cell").evaluate_all(
        "els => els.map(e => [+e.dataset.layer, +e.dataset.column, getComputedStyle(e).backgroundColor])")
    return {(layer, column): colour for layer, column, colour in shown}


def assert_brighter_with_probability(drawn: dict, probs) -> None:
    """Viridis grows lighter with its value: cells sorted by probability must be sorted by luminance."""
    order = sorted(drawn, key=lambda lc: probs[lc])
    lights = [luminance(drawn[lc]) for lc in order]
    assert all(b >= a - 1.0 for a, b in zip(lights, lights[1:]))
    assert lights[-1] - lights[0] > 50


def test_colours_follow_the_next_token_or_the_top1_probability(page, traces):
    page, _ = page
    lens = traces[1]["steps"].lens
    assert_brighter_with_probability(colours(page, "steps"), {(l, c): lens.next_prob[l, c] for l, c in colours(page, "steps")})
    page.locator(".case-steps .ae-lens-colour-by").select_option("top")
    page.wait_for_function("document.querySelector('.case-steps .ae-lens').dataset.colourBy === 'top'")
    assert_brighter_with_probability(colours(page, "steps"), {(l, c): lens.top_probs[l, c, 0] for l, c in colours(page, "steps")})
    page.locator(".case-steps .ae-lens-colour-by").select_option("next")
    page.wait_for_function("document.querySelector('.case-steps .ae-lens').dataset.colourBy === 'next'")


def test_a_long_lens_draws_only_what_is_in_view_and_scrolls(page, traces):
    page, _ = page
    lz = traces[1]["long"].lens
    view = page.locator(".case-long .ae-lens")
    assert page.locator(".case-long .ae-lens-col").count() < 40  # of 2,048
    assert page.locator(".case-long .ae-lens-overview").is_visible()
    page.locator(".case-long .ae-lens-scroller").evaluate("e => { e.scrollLeft = e.scrollWidth; }")
    page.wait_for_function("document.querySelector('.case-long .ae-lens').dataset.lastColumn === '2047'")
    last = cell(page, "long", 29, 2047)
    assert last.text_content() == visible(lz.top_k(29, 2047)[0].token)
    assert "end" in last.get_attribute("class")  # the trace's last position: no next token, drawn neutral
    assert inside(last.bounding_box(), page.locator(".case-long .ae-lens-scroller").bounding_box())
    assert page.locator(".case-long .ae-lens-col").count() < 40
    # the overview: a click in its middle brings the middle of the lens into view
    ov = page.locator(".case-long .ae-lens-overview").bounding_box()
    page.mouse.click(ov["x"] + 44 + (ov["width"] - 44) / 2, ov["y"] + ov["height"] / 2)
    page.wait_for_function("(d => +d.firstColumn < 1024 && +d.lastColumn > 1024)"
                           "(document.querySelector('.case-long .ae-lens').dataset)")
    middle = int(view.get_attribute("data-first-column")) + 6
    cell(page, "long", 0, middle).click()
    wait_state(page, "py-long", f"layer=0 step=0 token={int(lz.positions[middle])}")
    lines = tip_lines(page, "long", 0, middle)
    assert lines[0] == f"layer 0 · position {int(lz.positions[middle])}"  # all mode: no step
    page.mouse.move(0, 0)
    view.screenshot(path=str(OUTPUT / "lens-long.png"))


def test_a_trace_without_a_lens_says_how_to_get_one(page):
    page, _ = page
    message = page.locator(".case-none .ae-lens-message")
    assert message.is_visible()
    text = message.text_content()
    assert 'lm.generate(prompt, lens="steps")' in text and 'lm.trace(text, lens="all")' in text
    assert page.locator(".case-none .ae-lens-cell").count() == 0


def test_no_outside_requests_and_no_errors(page):
    page, log = page
    assert log.our_blocked() == []
    assert log.page_errors == []
    assert log.our_console_errors() == []
