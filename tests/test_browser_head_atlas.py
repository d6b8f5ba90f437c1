"""The head atlas and the heatmap's kinds in Voilà, in headless Chromium, offline.

One Voilà page for the module: the explorer of a 1,200-token, 12-layer read trace with value norms (its head scores take
a few seconds, so the progress bar shows), a label that prints the Python selection and the open tab, a heatmap
of a trace without value norms, and an atlas over texts (means ± their standard deviation, from a file of arrays). Tests type queries, sort, click a row and switch the heatmap's kind, and compare
what the browser shows with the trace's own arrays, computed here, outside the kernel.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from explorer.analysis import SCORES
from synthetic import synthetic_trace, with_analysis
from test_browser_attention import js_fmt
from voila_harness import OUTPUT, notebook_page, write_notebook

pytestmark = pytest.mark.browser

CELL = """
import explorer, ipywidgets as W
from explorer.views import heatmap, show

def case(name, *children):
    box = W.VBox([W.HTML("<h3>" + name + "</h3>"), *children])
    box.add_class("case-" + name)
    return box

ex = show(explorer.load_trace(NORMS))
sel = ex.selection
state = W.Label()
state.add_class("py-state")
report = lambda *_: setattr(state, "value",
                            f"layer={sel.layer} head={sel.head} tab={ex.builders[ex.tabs.selected_index or 0][0]}")
sel.observe(report)
ex.tabs.observe(report, "selected_index")
report()
display(case("norms", ex, state))
display(case("plain", heatmap(explorer.load_trace(PLAIN), layer=1, head=0)))

import numpy as np
from explorer import HeadAtlasOverTexts, analysis, views
with np.load(TEXTS, allow_pickle=False) as f:
    parts = {part: {n: f[part + "_" + n] for n in analysis.SCORES} for part in ("mean", "std", "n")}
over = HeadAtlasOverTexts(**parts, n_texts=32, n_layers=6, n_heads=3, n_tokens=[101] * 32, model="made-up",
                          source="32 sequences of 50 random tokens, each read twice (seed 0)")
display(case("texts", views.head_atlas(over)))
"""

ATLAS = ".case-norms .ae-atlas"
TEXTS = ".case-texts .ae-atlas"


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("atlas")
    norms = synthetic_trace(1200, n_layers=12, n_heads=4, kv_heads=2, dim=16, seed=1)
    norms.token_ids = [i % 37 for i in range(norms.n_tokens)]  # repeats: every score has rows
    # a read trace (lm.trace(text)), the atlas's usual input: no steps, so the stepper has no head picker of its own
    made = {"norms": with_analysis(norms, n_generated=0, lens=None, seed=1), "plain": synthetic_trace(40, seed=2)}
    for name, trace in made.items():
        trace.save(folder / f"{name}.trace")
    return folder, made


@pytest.fixture(scope="module")
def scores(traces):
    return traces[1]["norms"].head_scores()


@pytest.fixture(scope="module")
def over_texts(traces) -> dict[str, dict[str, np.ndarray]]:
    """Made-up scores over 32 texts, 6 layers × 3 heads, saved for the page: induction in 30 of the texts."""
    rng = np.random.default_rng(4)
    parts = {"mean": {n: rng.random((6, 3)).astype(np.float32) for n in SCORES},
             "std": {n: (0.3 * rng.random((6, 3))).astype(np.float32) for n in SCORES},
             "n": {n: np.full((6, 3), 30 if n == "induction" else 32) for n in SCORES}}
    np.savez(traces[0] / "texts.npz", **{f"{part}_{n}": a for part, values in parts.items() for n, a in values.items()})
    return parts


@pytest.fixture(scope="module")
def page(traces, over_texts):
    folder, _ = traces
    paths = "\n".join(f"{name.upper()} = {str(folder / f'{name}.trace')!r}" for name in ["norms", "plain"])
    paths += f"\nTEXTS = {str(folder / 'texts.npz')!r}"
    notebook = write_notebook(folder / "atlas.ipynb", [paths, CELL])
    with notebook_page(notebook, ".case-plain .ae-heatmap[data-draw-count]", viewport=(1280, 1100)) as (page, log):
        yield page, log
        page.screenshot(path=str(OUTPUT / "head-atlas-end.png"), full_page=True)


def rows(page) -> list[tuple[int, int]]:
    """(layer, head) of the rows shown, top to bottom."""
    found = page.locator(f"{ATLAS} tr[data-layer]").evaluate_all("els => els.map(e => [+e.dataset.layer, +e.dataset.head])")
    return [tuple(r) for r in found]


def heads(mask: np.ndarray) -> set[tuple[int, int]]:
    return {(int(layer), int(head)) for layer, head in np.argwhere(mask)}


def atlas_data(page) -> dict:
    return page.evaluate(f"({{...document.querySelector('{ATLAS}').dataset}})")


def query(page, text: str, refused: bool = False) -> None:
    """Type a query and press Enter; wait for Python's answer: rows for it, or the message of a refusal."""
    page.fill(f"{ATLAS} .ae-atlas-query", text)
    page.press(f"{ATLAS} .ae-atlas-query", "Enter")
    if refused:
        page.wait_for_function(f"document.querySelector('{ATLAS}').dataset.error === '1'")
    else:
        page.wait_for_function(f"(d => d.error === '0' && d.query === {json.dumps(text)})"
                               f"(document.querySelector('{ATLAS}').dataset)")


def wait_state(page, text: str) -> None:
    page.wait_for_function(f"document.querySelector('.py-state').textContent.includes({json.dumps(text)})")


def test_the_atlas_shows_progress_then_every_head_with_its_scores(page, traces, scores):
    page, _ = page
    trace = traces[1]["norms"]
    page.locator(".case-norms").get_by_role("tab", name="Head atlas").click()
    page.wait_for_function(f"(p => p && p.value >= 1 && p.offsetParent !== null)"
                           f"(document.querySelector('{ATLAS} .ae-atlas-progress progress'))", timeout=60_000)
    assert "computing the head scores of 1200 tokens" in page.locator(f"{ATLAS} .ae-atlas-progress").inner_text()
    page.locator(ATLAS).screenshot(path=str(OUTPUT / "head-atlas-progress.png"))
    page.wait_for_selector(f"{ATLAS}[data-ready='1']", timeout=120_000)
    assert not page.locator(f"{ATLAS} .ae-atlas-progress").is_visible()
    n = trace.n_layers * trace.n_heads
    assert page.locator(f"{ATLAS} .ae-atlas-count").inner_text() == f"{n} of {n} heads"
    assert rows(page) == [(l, h) for l in range(trace.n_layers) for h in range(trace.n_heads)]
    header = page.locator(f"{ATLAS} th").all_inner_texts()
    assert [t.split(" ")[0] for t in header] == ["layer", "head", *scores]
    table = page.locator(f"{ATLAS} tr[data-layer]").evaluate_all(
        "els => els.map(e => [...e.children].map(td => td.textContent))")
    for (layer, head), cells in zip(rows(page), table):
        assert cells[:2] == [str(layer), str(head)]
        for name, text in zip(scores, cells[2:]):
            assert len(text.split(".")[1]) == 3  # three decimals
            assert float(text) == pytest.approx(float(scores[name][layer, head]), abs=5.1e-4)
    page.locator(ATLAS).screenshot(path=str(OUTPUT / "head-atlas-all.png"))


def test_queries_filter_the_rows_and_bad_ones_are_refused(page, scores):
    page, _ = page
    layer, head = np.indices(scores["first_token"].shape)
    threshold = float(np.median(scores["first_token"][:8]))
    mask = (scores["first_token"] > threshold) & (layer < 8)
    query(page, f"first_token > {threshold} and layer < 8")
    assert set(rows(page)) == heads(mask) and len(rows(page)) == mask.sum()
    assert page.locator(f"{ATLAS} .ae-atlas-count").inner_text() == f"{mask.sum()} of 48 heads"
    kept = rows(page)
    query(page, "induction >", refused=True)
    assert "Cannot read this query" in page.locator(f"{ATLAS} .ae-atlas-message").inner_text()
    assert rows(page) == kept  # the last table stays
    page.locator(ATLAS).screenshot(path=str(OUTPUT / "head-atlas-refused.png"))
    # typing alone (no Enter) sends the query after a pause
    p, s = float(np.quantile(scores["previous_token"], 0.7)), float(np.quantile(scores["self"], 0.8))
    mask = (scores["previous_token"] > p) | (scores["self"] > s)
    page.fill(f"{ATLAS} .ae-atlas-query", "")
    page.locator(f"{ATLAS} .ae-atlas-query").press_sequentially(f"previous_token > {p} or self > {s}")
    page.wait_for_function(f"document.querySelector('{ATLAS}').dataset.query.startsWith('previous_token > {p} or self > ')")
    assert atlas_data(page)["query"] == f"previous_token > {p} or self > {s}"
    assert set(rows(page)) == heads(mask) and page.locator(f"{ATLAS} .ae-atlas-message").inner_text() == ""


def test_a_header_click_sorts_and_a_second_reverses(page, scores):
    page, _ = page
    query(page, "layer >= 6")
    shown = [(l, h) for l in range(6, 12) for h in range(4)]
    induction = lambda lh: float(scores["induction"][lh])  # noqa: E731
    sorted_by = "(d => d.sortBy === 'induction' && d.descending === '{}')(document.querySelector('" + ATLAS + "').dataset)"
    page.locator(f"{ATLAS} th[data-key='induction']").click()  # a score: largest first
    page.wait_for_function(sorted_by.format(1))
    assert page.locator(f"{ATLAS} th[data-key='induction']").inner_text().endswith("▼")
    assert rows(page) == sorted(shown, key=lambda lh: (-induction(lh), lh))
    page.locator(f"{ATLAS} th[data-key='induction']").click()
    page.wait_for_function(sorted_by.format(0))
    assert page.locator(f"{ATLAS} th[data-key='induction']").inner_text().endswith("▲")
    assert rows(page) == sorted(shown, key=lambda lh: (induction(lh), lh))
    assert not any(math.isnan(induction(lh)) for lh in shown)


def test_clicking_a_row_opens_that_head_in_the_heatmap_tab(page, traces):
    page, _ = page
    layer, head = rows(page)[-1]  # the most inductive head of layers 6..11
    page.locator(f"{ATLAS} tr[data-layer='{layer}'][data-head='{head}']").click()
    wait_state(page, f"layer={layer} head={head} tab=Heatmap")
    heatmap = page.locator(".case-norms .ae-heatmap")
    page.wait_for_function(f"(d => d && d.layer === '{layer}' && d.head === '{head}')"
                           "(document.querySelector('.case-norms .ae-heatmap')?.dataset)", timeout=60_000)
    assert heatmap.is_visible() and not page.locator(ATLAS).is_visible()
    assert page.locator(".case-norms").get_by_role("tab", name="Heatmap").get_attribute("aria-selected") == "true"
    assert page.locator(".case-norms .ae-layer").input_value() == str(layer)
    assert page.locator(".case-norms .ae-head").input_value() == str(head)
    page.locator(".case-norms").get_by_role("tab", name="Head atlas").click()  # back: the row is highlighted
    selected = page.locator(f"{ATLAS} tr.selected")
    assert (selected.get_attribute("data-layer"), selected.get_attribute("data-head")) == (str(layer), str(head))
    page.locator(".case-norms").get_by_role("tab", name="Heatmap").click()


def hover_tip(page, q: int, k: int) -> str:
    box = page.locator(".case-norms .ae-window").bounding_box()
    cell = box["width"] / 64  # the default 64-token window of a 1,200-token trace
    page.mouse.move(box["x"] + (k + 0.5) * cell, box["y"] + (q + 0.5) * cell)
    return page.locator(".case-norms .ae-heatmap .ae-tip").inner_text()


def test_the_heatmap_switches_to_value_weighted_and_rollout(page, traces):
    page, _ = page
    trace = traces[1]["norms"]
    data = lambda: page.evaluate("({...document.querySelector('.case-norms .ae-heatmap').dataset})")  # noqa: E731
    layer, head = int(data()["layer"]), int(data()["head"])
    canvas = "document.querySelector('.case-norms .ae-window').toDataURL()"
    before = page.evaluate(canvas)
    page.select_option(".case-norms .ae-kind", "norm")
    page.wait_for_function("document.querySelector('.case-norms .ae-heatmap').dataset.kind === 'norm'")
    assert (int(data()["layer"]), int(data()["head"])) == (layer, head)
    assert page.evaluate(canvas) != before
    assert "α·‖vW_O‖" in page.locator(".case-norms .ae-heatmap").inner_text()  # the legend
    assert "Not probabilities" in page.locator(".case-norms .ae-kind-note").inner_text()
    weighted = trace.attention(layer, head) * trace.value_norms[layer, head][None, :]
    assert hover_tip(page, 9, 4).endswith("α·‖vW_O‖ " + js_fmt(float(weighted[9, 4])))
    page.locator(".case-norms .ae-heatmap").screenshot(path=str(OUTPUT / "head-atlas-heatmap-norm.png"))
    norm = page.evaluate(canvas)

    page.select_option(".case-norms .ae-kind", "rollout")
    page.wait_for_function("document.querySelector('.case-norms .ae-heatmap').dataset.kind === 'rollout'",
                           timeout=60_000)
    assert page.evaluate(canvas) not in (before, norm)
    assert page.locator(".case-norms .ae-layer").is_disabled() and page.locator(".case-norms .ae-head").is_disabled()
    assert "do not apply" in page.locator(".case-norms .ae-kind-note").inner_text()
    flow = trace.attention_flow("rollout")
    assert hover_tip(page, 20, 3).endswith("rollout " + js_fmt(float(flow[20, 3])))
    page.locator(".case-norms .ae-heatmap").screenshot(path=str(OUTPUT / "head-atlas-heatmap-rollout.png"))
    page.select_option(".case-norms .ae-kind", "raw")  # back to the weights: the pickers work again
    page.wait_for_function("document.querySelector('.case-norms .ae-heatmap').dataset.kind === 'raw'")
    assert page.evaluate(canvas) == before and not page.locator(".case-norms .ae-layer").is_disabled()


def test_without_value_norms_value_weighted_is_greyed_out_saying_why(page):
    page, _ = page
    option = page.locator(".case-plain .ae-kind option[value='norm']")
    assert option.is_disabled()
    assert "(no norms)" in option.inner_text() and "no value norms" in option.get_attribute("title")
    assert "no value norms" in page.locator(".case-plain .ae-kind").get_attribute("title")
    page.locator(".case-plain .ae-heatmap").screenshot(path=str(OUTPUT / "head-atlas-heatmap-plain.png"))


def test_an_atlas_over_texts_says_so_and_shows_each_mean_with_its_spread(page, over_texts):
    page, _ = page
    page.wait_for_selector(f"{TEXTS}[data-ready='1']")
    title = page.locator(f"{TEXTS} .ae-atlas-title")
    assert title.is_visible()
    assert title.inner_text() == "Head scores over 32 texts: 32 sequences of 50 random tokens, each read twice (seed 0)"
    assert "over 32 texts" not in page.locator(".case-norms").inner_text()  # one trace: no such title
    assert not page.locator(f"{ATLAS} .ae-atlas-title").is_visible()
    assert "standard deviation over the texts" in page.locator(f"{TEXTS} .ae-atlas-help").inner_text()
    mean, std = over_texts["mean"], over_texts["std"]
    found = page.locator(f"{TEXTS} tr[data-layer]").evaluate_all(
        "els => els.map(e => [+e.dataset.layer, +e.dataset.head, ...[...e.children].slice(2).map(td => "
        "[td.firstChild.textContent, td.querySelector('.ae-atlas-spread')?.textContent, td.title])])")
    assert [tuple(r[:2]) for r in found] == [(l, h) for l in range(6) for h in range(3)]
    for layer, head, *cells in found:
        for name, (shown, spread, tip) in zip(SCORES, cells):
            m, s = float(mean[name][layer, head]), float(std[name][layer, head])
            assert float(shown) == pytest.approx(m, abs=5.1e-4)
            assert spread.startswith(" ±") and float(spread[2:]) == pytest.approx(s, abs=5.1e-4)
            over = "30 of 32 texts (the others have no row for it)" if name == "induction" else "32 texts"
            assert tip == f"{name}: mean {shown}, standard deviation {spread[2:]} over {over}"
    page.locator(f"{TEXTS} th[data-key='induction']").click()  # sorting reads the means
    page.wait_for_function(f"document.querySelector('{TEXTS}').dataset.sortBy === 'induction'")
    order = sorted(((l, h) for l in range(6) for h in range(3)), key=lambda lh: (-mean["induction"][lh], lh))
    assert [tuple(r) for r in page.locator(f"{TEXTS} tr[data-layer]").evaluate_all(
        "els => els.map(e => [+e.dataset.layer, +e.dataset.head])")] == order
    outside = page.locator(TEXTS).evaluate("""el => { const r = document.querySelector('.case-texts').getBoundingClientRect();
      return [...el.querySelectorAll('*')].filter(e => e.offsetParent !== null)
        .filter(e => e.getBoundingClientRect().right - r.right > 0.5).map(e => e.className || e.tagName); }""")
    assert outside == []  # the ± columns fit
    page.locator(".case-texts").screenshot(path=str(OUTPUT / "head-atlas-over-texts.png"))


def test_nothing_is_cut_off_and_nothing_went_wrong(page):
    page, log = page
    page.locator(".case-norms").get_by_role("tab", name="Head atlas").click()
    page.wait_for_selector(f"{ATLAS} .ae-atlas-table")
    outside = page.locator(ATLAS).evaluate("""el => { const r = document.querySelector('.case-norms').getBoundingClientRect();
      return [el, ...el.querySelectorAll('*')]
        .filter(e => e.offsetParent !== null && !e.parentElement.closest('.ae-atlas-scroller'))
        .map(e => [e.className || e.tagName, e.getBoundingClientRect().right - r.right])
        .filter(([, over]) => over > 0.5); }""")
    assert outside == []
    scroller = page.locator(f"{ATLAS} .ae-atlas-scroller").evaluate("e => [e.scrollWidth, e.clientWidth]")
    assert scroller[0] <= scroller[1]  # the table fits its box: no column hidden behind a scroll bar
    page.locator(".case-norms").screenshot(path=str(OUTPUT / "head-atlas-tab.png"))
    assert log.our_blocked() == [] and log.page_errors == [] and log.our_console_errors() == []
    assert log.dialogs == []
