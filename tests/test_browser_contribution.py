"""The contribution graph in Voilà, in headless Chromium: the edges it draws are the graph's above the threshold,
the slider changes what is drawn, a new step redraws it, and 512 tokens draw within the page's width."""

from __future__ import annotations

import json

import pytest
from conftest import ByteTokenizer, make_tiny_lm, tiny_config
from voila_harness import OUTPUT, notebook_page, write_notebook

pytestmark = pytest.mark.browser

CELL = """
import explorer, traitlets, ipywidgets as W
from explorer.views import Selection, contribution

trace = explorer.load_trace(TRACE)
sel = Selection()
view = contribution(trace, sel)
box = W.IntText(description="step", continuous_update=False)
box.add_class("set-step")
traitlets.link((sel, "step"), (box, "value"))
view.add_class("case-short")
long = contribution(explorer.load_trace(LONG))
long.add_class("case-long")
display(W.VBox([view, box, W.Box([long], layout=W.Layout(width="1000px"))]))
"""


@pytest.fixture(scope="module")
def traces_and_page(tmp_path_factory):
    folder = tmp_path_factory.mktemp("contribution")
    lm = make_tiny_lm("llama")
    short = lm.generate("Hello, world", max_new_tokens=6, progress=False, keep_values=True)
    import torch
    import transformers as tf

    import explorer

    config = tiny_config("llama")
    config.max_position_embeddings = 1024
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = None
    wide = explorer.wrap(model, ByteTokenizer(), name="tiny-llama-1024")
    text = "".join(chr(33 + i % 90) for i in range(505))
    long = wide.generate(text, max_new_tokens=8, progress=False, keep_values=True)  # 514 tokens with <bos>
    short.save(folder / "short.trace")
    long.save(folder / "long.trace")
    notebook = write_notebook(folder / "contribution.ipynb", [
        f"TRACE = {str(folder / 'short.trace')!r}\nLONG = {str(folder / 'long.trace')!r}", CELL])
    with notebook_page(notebook, ".case-long[data-draw-count]") as (page, log):
        page.wait_for_selector(".case-short[data-draw-count]")
        yield short, long, page, log


def drawn(page, case: str) -> int:
    return int(page.locator(f".case-{case}").get_attribute("data-edges"))


def test_the_edges_drawn_are_the_graphs_strongest_and_the_slider_changes_them(traces_and_page):
    short, _, page, log = traces_and_page
    graph = short.contribution_graph(0)
    assert drawn(page, "short") == len([e for e in graph.strongest(0.1) if e[2] != 0])
    page.locator(".case-short").screenshot(path=str(OUTPUT / "contribution-short.png"))
    page.locator(".case-short .ae-contribution-threshold").fill("0.6")
    page.wait_for_function("document.querySelector('.case-short').dataset.edges === " +
                           json.dumps(str(len([e for e in graph.strongest(0.6) if e[2] != 0]))))
    assert log.page_errors == []


def test_another_step_redraws_its_own_graph(traces_and_page):
    short, _, page, _ = traces_and_page
    page.locator(".set-step input").fill("5")
    page.locator(".set-step input").press("Enter")
    page.wait_for_function("document.querySelector('.case-short').dataset.title.includes('(step 5)')")
    threshold = float(page.locator(".case-short .ae-contribution-threshold").input_value())
    graph = short.contribution_graph(5)
    assert drawn(page, "short") == len([e for e in graph.strongest(threshold) if e[2] != 0])


def test_512_tokens_draw_every_strong_edge_within_the_page(traces_and_page):
    _, long, page, _ = traces_and_page
    assert long.n_tokens >= 512
    graph = long.contribution_graph(0)
    assert drawn(page, "long") == len([e for e in graph.strongest(0.1) if e[2] != 0])
    canvas = page.locator(".case-long canvas").bounding_box()
    assert canvas["height"] <= 940 and canvas["x"] + canvas["width"] <= page.viewport_size["width"]
    page.locator(".case-long").screenshot(path=str(OUTPUT / "contribution-512.png"))
