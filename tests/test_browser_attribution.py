"""The attribution grid in Voilà, in headless Chromium: each cell's value and colour are the trace's share of that
head at the selected step, a new step redraws it, the grid fits, and a click on a head opens it in the heatmap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_tiny_lm
from voila_harness import OUTPUT, notebook_page, write_notebook

pytestmark = pytest.mark.browser

CELL = """
import explorer, traitlets, ipywidgets as W
from explorer.views import show

view = show(explorer.load_trace(TRACE))
sel = view.selection
box = W.IntText(description="step", continuous_update=False)
box.add_class("set-step")
traitlets.link((sel, "step"), (box, "value"))
state = W.Label()
state.add_class("py-state")
report = lambda *_: setattr(state, "value", f"layer={sel.layer} head={sel.head} step={sel.step} "
                                            f"tab={view.tabs.get_title(view.tabs.selected_index)}")
sel.observe(report)
view.tabs.observe(report, "selected_index")
report()
view.show_tab("Attribution")
display(W.VBox([view, box, state]))
"""


@pytest.fixture(scope="module")
def trace_and_page(tmp_path_factory):
    folder = tmp_path_factory.mktemp("attribution")
    lm = make_tiny_lm("gpt2")
    trace = lm.generate("<b>Hi</b> there", max_new_tokens=6, progress=False)  # HTML in the tokens
    trace.save(folder / "a.trace")
    notebook = write_notebook(folder / "attribution.ipynb", [f"TRACE = {str(folder / 'a.trace')!r}", CELL])
    with notebook_page(notebook, ".ae-attribution[data-draw-count]") as (page, log):
        yield trace, page, log


def shown(page) -> dict:
    """Every cell: (layer, head or 'mlp') → (value, background)."""
    cells = page.locator(".ae-attribution-cell").evaluate_all(
        "els => els.map(e => [e.dataset.layer, e.dataset.head, +e.dataset.value, getComputedStyle(e).backgroundColor])")
    return {(int(layer), head): (value, colour) for layer, head, value, colour in cells}


def test_each_cell_is_the_heads_share_in_its_colour_and_the_grid_fits(trace_and_page):
    trace, page, log = trace_and_page
    cells = shown(page)
    shares = trace.logit_attribution(0)
    assert len(cells) == trace.n_layers * (trace.n_heads + 1)
    for (layer, head), (value, colour) in cells.items():
        want = shares.mlp[layer] if head == "mlp" else shares.heads[layer, int(head)]
        assert value == pytest.approx(float(want), rel=1e-6, abs=1e-9)
        red, _, blue = (int(c) for c in colour[4:-1].split(","))
        if abs(want) > 1e-3 * np.abs(shares.heads).max():
            assert (red > blue) == (want > 0), (layer, head, want, colour)  # red up, blue down
    title = page.locator(".ae-attribution-title").text_content()
    assert title == f"Which heads wrote “{trace.steps[0].token}” (step 0)"
    grid = page.locator(".ae-attribution-grid").bounding_box()
    assert grid["x"] >= 0 and grid["x"] + grid["width"] <= page.viewport_size["width"]
    assert page.locator(".ae-attribution img, .ae-attribution b").count() == 0 and log.dialogs == []
    page.locator(".ae-attribution").screenshot(path=str(OUTPUT / "attribution-grid.png"))


def test_another_step_redraws_the_grid_with_its_shares(trace_and_page):
    trace, page, _ = trace_and_page
    page.locator(".set-step input").fill("4")
    page.locator(".set-step input").press("Enter")
    page.wait_for_function(
        f"document.querySelector('.ae-attribution').dataset.title.includes({json.dumps('(step 4)')})")
    shares = trace.logit_attribution(4)
    for (layer, head), (value, _) in shown(page).items():
        want = shares.mlp[layer] if head == "mlp" else shares.heads[layer, int(head)]
        assert value == pytest.approx(float(want), rel=1e-6, abs=1e-9)


def test_a_click_on_a_head_selects_it_and_opens_the_heatmap(trace_and_page):
    _, page, _ = trace_and_page
    page.locator(".ae-attribution-cell[data-layer='1'][data-head='2']").click()
    page.wait_for_function("document.querySelector('.py-state').textContent.includes('layer=1 head=2')")
    page.wait_for_function("document.querySelector('.py-state').textContent.includes('tab=Heatmap')")
    page.locator(".ae-heatmap canvas.ae-window").first.wait_for(timeout=30_000)
    page.screenshot(path=str(OUTPUT / "attribution-opened-heatmap.png"))
