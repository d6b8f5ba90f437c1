"""What-if in the explorer, in Voilà, in headless Chromium, offline: a click on a candidate branches (the tree shows
two nodes, the text the forced token), a click on the parent's node shows the parent again, a head switched off
shows the numbers whatif.rescore gives, Restore all the step's own, and a run with heads off joins the tree.

One Voilà page for the module: the explorer of the default trace with the default model (SmolLM2) loaded in the
page's kernel. The test computes what the page should show with the same model in this process.
"""

from __future__ import annotations

import json

import pytest

from explorer import whatif
from explorer.views.whatif.branch_tree import tree_nodes
from explorer.views.frontend.tokens_html import visible
from voila_harness import OUTPUT, notebook_page, write_notebook

pytestmark = pytest.mark.browser

STEP = 3  # where the test branches and switches a head off
LAYER, HEAD = 5, 2

CELL = """
import explorer
from explorer.views.explorer_view import ExplorerView

lm = explorer.load_model(progress=False)
view = ExplorerView(explorer.load_trace(TRACE), lm=lm)
view.add_class("whatif-under-test")
display(view)
"""

TEXT = """(el) => ({highlight: +el.dataset.highlight,
    text: [...el.querySelectorAll('.token-text-box span')].filter(s => !s.hidden)
      .map(s => s.textContent.replaceAll('↵\\n', '\\n')).join(''),
    marked: el.querySelector('span.highlight').textContent.replaceAll('↵\\n', '\\n')})"""


@pytest.fixture(scope="module")
def trace(default_trace):
    return default_trace


@pytest.fixture(scope="module")
def page(tmp_path_factory, trace):
    folder = tmp_path_factory.mktemp("whatif")
    trace.save(folder / "default.trace")
    notebook = write_notebook(folder / "whatif.ipynb", [f"TRACE = {str(folder / 'default.trace')!r}", CELL])
    ready = ".whatif-under-test .stepper-view .token-text[data-draw-count]"
    with notebook_page(notebook, ready, viewport=(1280, 1400)) as (page, log):
        page.wait_for_selector(".token-text-box.candidates span", timeout=60_000)
        page.screenshot(path=str(OUTPUT / "whatif-load.png"), full_page=True)
        yield page, log
        page.screenshot(path=str(OUTPUT / "whatif-end.png"), full_page=True)
        assert log.page_errors == [] and log.our_blocked() == [] and log.dialogs == []


def view(page):
    return page.locator(".whatif-under-test").first


def main_text(page) -> dict:
    """The stepper's text (the first TokenText of the stepper), its highlight and the highlighted token."""
    return view(page).locator(".stepper-view .token-text").first.evaluate(TEXT)


def wait_highlight(page, position: int) -> None:
    page.wait_for_function(
        "(p) => document.querySelector('.whatif-under-test .stepper-view .token-text').dataset.highlight == p",
        arg=str(position))


def runner_up(step):
    return next((i, c) for i, c in enumerate(step.top_k) if c.token_id != step.token_id)


def test_a_click_on_a_candidate_branches_and_the_tree_shows_two_nodes(page, trace, default_lm):
    page, _ = page
    root = view(page)
    assert root.locator(".branch-tree").is_hidden()  # one trace: no tree
    root.locator(".token-text-box.chips span[data-index='%d']" % STEP).click()  # the strip: go to the step
    wait_highlight(page, trace.steps[STEP].position)
    page.wait_for_function(  # the step's candidates, in the model's order
        "(want) => JSON.stringify([...document.querySelectorAll("
        "'.whatif-under-test .token-text-box.candidates span')].map(s => s.textContent)) == want",
        arg=json.dumps([visible(c.token) for c in trace.steps[STEP].top_k], ensure_ascii=False, separators=(",", ":")))
    candidates = root.locator(".token-text-box.candidates span")
    index, candidate = runner_up(trace.steps[STEP])
    candidates.nth(index).click()
    page.wait_for_function("document.querySelectorAll('.whatif-under-test .branch-tree-node').length == 2",
                           timeout=60_000)
    expected = default_lm.branch(trace, STEP, candidate, progress=False)
    at = expected.steps[STEP].position
    wait_highlight(page, at)
    shown = main_text(page)
    assert shown["text"] == "".join(expected.tokens[: at + 1]) and shown["marked"] == candidate.token
    nodes = root.locator(".branch-tree-node")
    labels = nodes.locator(".branch-tree-label").all_text_contents()
    assert labels == [n["label"] for n in tree_nodes([trace, expected])]
    assert "current" in (nodes.nth(1).get_attribute("class") or "")
    assert nodes.nth(1).get_attribute("data-step") == str(STEP)
    assert f"branched at step {STEP}" in root.locator(".whatif-status").inner_text()
    root.screenshot(path=str(OUTPUT / "whatif-branch.png"))


def test_a_click_on_the_parent_node_shows_the_parent(page, trace):
    page, _ = page
    root = view(page)
    root.locator(".branch-tree-node[data-depth='0']").click()
    page.wait_for_selector(".whatif-under-test .branch-tree-node.current[data-depth='0']")
    at = trace.steps[STEP].position
    wait_highlight(page, at)  # the same step as before: the two can be compared
    shown = main_text(page)
    assert shown["text"] == "".join(trace.tokens[: at + 1]) and shown["marked"] == trace.steps[STEP].token
    assert root.locator(".stepper-view .token-text-box.chips span").count() == trace.n_generated


def after_numbers(page) -> dict:
    side = view(page).locator(".whatif-side[data-side='after']")
    return {
        "prob": float(view(page).locator(".whatif-token-prob[data-side='after']").get_attribute("data-prob")),
        "text": view(page).locator(".whatif-token-prob[data-side='after']").inner_text(),
        "rows": side.locator("tr").evaluate_all("rows => rows.map(r => "
                                                "[+r.dataset.tokenId, +r.dataset.prob, r.lastChild.textContent])"),
    }


def test_a_head_switched_off_shows_what_rescore_gives_and_restore_all_the_steps_own(page, trace, default_lm):
    page, _ = page
    root = view(page)
    pickers = root.locator(".stepper-view .widget-dropdown select")
    pickers.nth(0).select_option(label=str(LAYER))
    pickers.nth(1).select_option(label=f"head {HEAD}")
    button = root.locator("button.whatif-switch-off")
    page.wait_for_function("(t) => document.querySelector('.whatif-under-test button.whatif-switch-off')"
                           ".textContent.includes(t)", arg=f"Switch off head L{LAYER}.H{HEAD}")
    button.click()
    page.wait_for_selector(".whatif-under-test .whatif-change[data-pending='false'] .whatif-side[data-side='after']",
                           timeout=60_000)
    expected = whatif.rescore(default_lm, trace, STEP, [(LAYER, HEAD)])
    now = after_numbers(page)
    assert now["prob"] == pytest.approx(expected.prob, rel=1e-4)
    assert float(now["text"]) == pytest.approx(expected.prob, abs=1.5e-4)
    by_id = {c.token_id: c.prob for c in expected.top_k}
    assert {row[0] for row in now["rows"]} == set(by_id)
    for token_id, prob, text in now["rows"]:
        assert prob == pytest.approx(by_id[token_id], rel=1e-4) and float(text) == pytest.approx(prob, abs=1e-4)
    before = float(root.locator(".whatif-token-prob[data-side='before']").get_attribute("data-prob"))
    assert before == pytest.approx(trace.steps[STEP].prob, rel=1e-6)
    assert f"L{LAYER}.H{HEAD}" in root.locator(".whatif-heads-off").inner_text()
    root.locator(".whatif-panel").screenshot(path=str(OUTPUT / "whatif-heads-off.png"))

    root.locator("button.whatif-restore").click()
    page.wait_for_function("document.querySelector('.whatif-under-test .whatif-side-title:last-of-type') &&"
                           " [...document.querySelectorAll('.whatif-under-test .whatif-side-title')]"
                           ".some(t => t.textContent.startsWith('all heads on'))", timeout=30_000)
    now = after_numbers(page)
    assert now["prob"] == trace.steps[STEP].prob  # exactly the step's own: nothing is re-run
    assert [row[0] for row in now["rows"]] == [c.token_id for c in trace.steps[STEP].top_k]
    assert "none" in root.locator(".whatif-heads-off").inner_text()
    root.locator(".whatif-panel").screenshot(path=str(OUTPUT / "whatif-restored.png"))


def test_generate_with_heads_off_adds_a_run_to_the_tree(page, trace):
    page, _ = page
    root = view(page)
    root.locator("button.whatif-switch-off").click()
    page.wait_for_selector(".whatif-under-test .whatif-change[data-pending='false']", timeout=60_000)
    root.locator("button.whatif-generate").click()
    page.wait_for_function("document.querySelectorAll('.whatif-under-test .branch-tree-node').length == 3",
                           timeout=120_000)
    node = root.locator(".branch-tree-node").nth(2)
    assert node.locator(".branch-tree-label").inner_text() == f"heads off L{LAYER}.H{HEAD}"
    assert node.get_attribute("data-depth") == "0" and "current" in node.get_attribute("class")
    assert "generated" in root.locator(".whatif-status").inner_text()
    page.screenshot(path=str(OUTPUT / "whatif-tree.png"), full_page=True)
