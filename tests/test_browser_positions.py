"""The Positions tab of models whose layers differ, in Voilà, in headless Chromium, offline: Gemma 3 (rotary with
base 10,000 on local layers and 1,000,000 on global ones) and SmolLM3 (NoPE layers). A click on the strip switches
the picture to that layer's own table; a NoPE layer shows its sentence and no plot; nothing is cut off."""

from __future__ import annotations

import pytest

import explorer
from test_architectures import PROMPT, Ids
from tiny_models import tiny_model
from voila_harness import OUTPUT, notebook_page, write_notebook

pytestmark = pytest.mark.browser

CELL = """
import explorer
from ipywidgets import HTML, VBox
from explorer.views.positions.positional_view import positional

def case(name, view):
    box = VBox([HTML("<h3>" + name + "</h3>"), view])
    box.add_class("case-" + name)
    return box

VBox([case("gemma", positional(explorer.load_trace(GEMMA))), case("smollm", positional(explorer.load_trace(SMOLLM)))])
"""


def inside(page, selector: str) -> None:
    width = page.evaluate("document.documentElement.clientWidth")
    for element in page.locator(selector).all():
        box = element.bounding_box()
        assert box is not None and box["width"] > 10 and box["x"] >= 0 and box["x"] + box["width"] <= width + 1, box


def caption(page, case: str) -> str:
    return page.locator(f".case-{case} .positional-view > .widget-html").nth(1).inner_text()


def test_the_layer_strip_switches_the_picture(tmp_path):
    traces = {}
    for name, family in (("gemma", "gemma3_text"), ("smollm", "smollm3")):
        traces[name] = explorer.wrap(tiny_model(family), Ids(), name=family).trace(PROMPT)
        traces[name].save(tmp_path / f"{name}.trace")
    source = CELL.replace("GEMMA", repr(str(tmp_path / "gemma.trace"))).replace(
        "SMOLLM", repr(str(tmp_path / "smollm.trace")))
    notebook = write_notebook(tmp_path / "positions.ipynb", [source])
    with notebook_page(notebook, ".case-smollm .positional-view .ae-layer-strip button", viewport=(1200, 1600)) as (
            page, log):
        gemma = traces["gemma"].positional
        plot = ".case-gemma .positional-view .main-svg"
        for layer in range(traces["gemma"].n_layers):
            if layer > 0:  # layer 0 shows first; another layer's picture replaces its plot
                shown = page.locator(plot).first.element_handle()
                page.locator(".case-gemma .ae-layer-button").nth(layer).click()
                page.wait_for_function("el => !el.isConnected", arg=shown, timeout=30_000)
            theta = f"base {gemma.layer(layer)['theta']:g}"
            page.wait_for_function(
                "([sel, text]) => document.querySelector(sel).innerText.includes(text)",
                arg=[".case-gemma .positional-view", theta], timeout=30_000)
            page.locator(".case-gemma .positional-view .heatmaplayer image").first.wait_for(timeout=30_000)
            assert f"layer {layer}: rotary" in caption(page, "gemma")
            inside(page, plot)
            page.locator(".case-gemma .positional-view").screenshot(path=str(OUTPUT / f"positions-gemma-{layer}.png"))
        kinds = traces["smollm"].positional.layer_kinds
        nope = kinds.index("none")
        page.locator(".case-smollm .ae-layer-button").nth(nope).click()
        page.wait_for_function("sel => document.querySelector(sel).innerText.includes('NoPE')",
                               arg=".case-smollm .positional-view", timeout=30_000)
        page.wait_for_function("sel => !document.querySelector(sel).querySelector('.main-svg')",
                               arg=".case-smollm .positional-view", timeout=30_000)
        assert "causal mask" in caption(page, "smollm")
        inside(page, ".case-smollm .ae-layer-strip")
        page.locator(".case-smollm .positional-view").screenshot(path=str(OUTPUT / "positions-smollm-nope.png"))
        assert log.page_errors == []
