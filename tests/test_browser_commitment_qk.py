"""The commitment strip and the queries-and-keys scatter in a real browser: in Voilà and in JupyterLab 4, headless
Chromium, offline.

The strip's colours, layers and tooltips are read off the page and checked against the commitment computed by a plain
loop over the trace's lens (test_commitment.reference), with every token inside its box. The scatter's point counts
are read from plotly's own data of what it drew, and a hover over its most isolated point shows that point's token
and position.
"""

from __future__ import annotations

import re

import pytest
from synthetic import synthetic_trace, with_analysis
from test_browser_jupyterlab import cell, jupyterlab, past_the_right_edge, quiet_settings, run_all_cells
from test_commitment import XSS, flickering, reference, words
from voila_harness import OUTPUT, browser, offline_page, served_page, write_notebook

from explorer.views.frontend.tokens_html import visible
from explorer.views.meaning.commitment_view import layer_colour

pytestmark = pytest.mark.browser

QK_TOKENS = 300

VOILA = """
import explorer, ipywidgets as W
from explorer.views import commitment_strip, query_key, show

def case(name, child):
    box = W.VBox([W.HTML("<h3>" + name + "</h3>"), child])
    box.add_class("case-" + name)
    return box

display(case("steps", show(explorer.load_trace(STEPS))))
display(case("none", commitment_strip(explorer.load_trace(NONE))))
display(case("qk", query_key(explorer.load_trace(QK), layer=1, head=2)))
"""

# each strip token as the page shows it: its data, background, tooltip, text, and whether it lies inside its box
READ_STRIP = """strip => [...strip.querySelectorAll('.ae-commitment-token')].map(t => {
  const box = t.closest('.ae-commitment-tokens').getBoundingClientRect(), r = t.getBoundingClientRect();
  return {position: +t.dataset.position, layer: +t.dataset.layer, background: getComputedStyle(t).backgroundColor,
          title: t.title, text: t.textContent, inside: r.width > 0 && r.left >= box.left - 0.5 && r.right <= box.right + 0.5};
})"""
# how far the strip's parts run past their own boxes sideways (0: nothing cut at the right)
STRIP_OVERFLOW = """strip => [...strip.querySelectorAll('.ae-commitment, .ae-commitment-tokens, .ae-commitment-legend')]
  .map(e => e.scrollWidth - e.clientWidth)"""

# plotly's figure: the points each trace holds, and the page position of the point farthest from all others (not
# position 0, a sink's key, alone anyway)
PLOT = """gd => {
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
  const pts = gd._fullData.flatMap((d, c) => Array.from(d.x, (x, i) => [c, i, xa._offset + xa.l2p(x),
                                                                      ya._offset + ya.l2p(d.y[i])]));
  let best = null, far = -1;
  for (const p of pts) {
    let near = Infinity;
    for (const q of pts) if (q !== p) near = Math.min(near, Math.hypot(p[2] - q[2], p[3] - q[3]));
    if (near > far && p[1] > 0 && p[2] > xa._offset + 5 && p[3] > ya._offset + 5) { far = near; best = p; }
  }
  return {names: gd._fullData.map(d => d.name), lengths: gd._fullData.map(d => d._length), types:
          gd._fullData.map(d => d.type), title: gd._fullLayout.title.text, curve: best[0], point: best[1],
          x: box.left + best[2], y: box.top + best[3], gap: far};
}"""


def check_strip(root, trace, generated_only: bool) -> int:
    """The strip under `root` shows what the plain loop over the lens says, each token in its layer's colour with
    its tooltip, nothing cut off; returns how many tokens it shows."""
    strip = root.locator(".ae-commitment-strip").first
    strip.locator(".ae-commitment-token").first.wait_for(timeout=60_000)
    shown = strip.evaluate(READ_STRIP)
    lens, n = trace.lens, trace.lens.n_layers
    expected = [(int(p) + 1, layer) for p, layer in zip(lens.positions, reference(trace)) if int(p) + 1 < trace.n_tokens
                and (not generated_only or int(p) + 1 >= trace.n_prompt)]
    assert [(t["position"], t["layer"]) for t in shown] == expected
    for t in shown:
        assert t["background"].replace(" ", "") == layer_colour(t["layer"], n)
        assert t["text"] == visible(trace.tokens[t["position"]])
        words_said = ("never committed" if t["layer"] == -1 else f"first committed at layer {t['layer']} of {n}")
        assert t["title"].startswith(f"#{t['position']} “{visible(trace.tokens[t['position']])}”: {words_said}")
        assert t["inside"], t
    assert {t["layer"] for t in shown} >= {0, n - 1, -1}  # the flickering lens has early, late and never
    assert strip.evaluate(STRIP_OVERFLOW) == [0, 0, 0]
    assert strip.locator(".ae-commitment-swatch").count() == n + 1  # a swatch a layer, and one for never
    return len(shown)


def check_scatter(page, root, trace, layer: int, head: int) -> None:
    """The scatter under `root` holds every query and key of the head, as WebGL, and a hover shows a token."""
    plot = root.locator(".js-plotly-plot").first
    plot.wait_for(timeout=60_000)
    page.wait_for_function("gd => gd._fullData?.length === 2 && gd._fullLayout?.title?.text", arg=plot.element_handle())
    drawn = plot.evaluate(PLOT)
    assert drawn["names"] == ["queries", "keys"] and drawn["types"] == ["scattergl", "scattergl"]
    assert drawn["lengths"] == [trace.n_tokens, trace.n_tokens]
    assert drawn["title"].startswith(f"layer {layer}, head {head}:")
    assert plot.locator("canvas.gl-canvas-context").count() == 1
    assert drawn["gap"] > 6  # a point alone under the pointer
    plot.scroll_into_view_if_needed()
    drawn = plot.evaluate(PLOT)  # its place after the scroll
    page.mouse.move(drawn["x"], drawn["y"])
    kind = "query" if drawn["curve"] == 0 else "key"
    want = f"{kind} #{drawn['point']} “{visible(trace.tokens[drawn['point']])}”"
    hover = root.locator(".hoverlayer .hovertext")
    hover.first.wait_for(timeout=10_000)
    assert hover.first.text_content() == want


def qk_trace():
    trace = synthetic_trace(QK_TOKENS, n_layers=2, n_heads=4, kv_heads=2, dim=16, seed=5)
    trace.tokens[7] = XSS
    return trace


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("strip")
    made = {
        "steps": flickering(with_analysis(words(60, 8, seed=1), n_generated=30, lens="steps", seed=1), seed=1),
        "none": with_analysis(words(20, 2, seed=3), n_generated=4, lens=None),
        "qk": qk_trace(),
    }
    for name, trace in made.items():
        trace.save(folder / f"{name}.trace")
    return folder, made


@pytest.fixture(scope="module")
def chromium():
    """One Chromium for the module: Playwright's sync API runs one at a time."""
    with browser() as b:
        yield b


@pytest.fixture(scope="module")
def voila(traces, chromium):
    folder, _ = traces
    paths = "\n".join(f"{name.upper()} = {str(folder / f'{name}.trace')!r}" for name in ["steps", "none", "qk"])
    notebook = write_notebook(folder / "strip.ipynb", [paths, VOILA])
    with served_page(chromium, notebook, ".case-qk .js-plotly-plot", viewport=(1280, 1100)) as (page, log):
        yield page, log
        page.close()


def test_voila_stepper_strip_shows_each_tokens_commitment(voila, traces):
    page, log = voila
    root = page.locator(".case-steps .stepper-view")
    assert check_strip(root, traces[1]["steps"], generated_only=True) == 30
    root.locator(".ae-commitment-strip").screenshot(path=str(OUTPUT / "commitment-stepper.png"))
    assert page.locator(".ae-commitment img").count() == 0 and log.dialogs == []


def test_voila_lens_tab_strip(voila, traces):
    page, _ = voila
    case = page.locator(".case-steps")
    case.get_by_role("tab", name="Logit lens").click()
    case.locator(".ae-lens[data-draw-count]").wait_for(timeout=60_000)
    tab = case.locator(".widget-vbox:has(> .ae-commitment-strip):has(.ae-lens)")
    check_strip(tab, traces[1]["steps"], generated_only=False)
    case.screenshot(path=str(OUTPUT / "commitment-lens-tab.png"))


def test_voila_no_lens_is_one_line(voila):
    page, _ = voila
    strip = page.locator(".case-none .ae-commitment-strip")
    assert "this trace has no logit lens" in strip.text_content()
    assert strip.locator(".ae-commitment-token").count() == 0
    assert strip.bounding_box()["height"] < 40  # one line


def test_voila_scatter_draws_every_point_and_hovers_a_token(voila, traces):
    page, _ = voila
    root = page.locator(".case-qk")
    check_scatter(page, root, traces[1]["qk"], 1, 2)
    root.screenshot(path=str(OUTPUT / "query-key-voila.png"))
    # another head from its picker: drawn anew, for that head
    root.locator(".qk-head select").select_option("3")
    page.wait_for_function("() => document.querySelector('.case-qk .js-plotly-plot')?._fullLayout?.title?.text"
                           ".startsWith('layer 1, head 3:')", timeout=60_000)
    check_scatter(page, root, traces[1]["qk"], 1, 3)


def test_voila_explorer_queries_and_keys_tab(voila, traces):
    page, log = voila
    case = page.locator(".case-steps")
    case.get_by_role("tab", name="Queries & keys").click()
    view = case.locator(".query-key-view")
    check_scatter(page, view, traces[1]["steps"], 0, 0)
    case.screenshot(path=str(OUTPUT / "query-key-explorer-tab.png"))
    assert log.page_errors == [] and log.our_console_errors() == [] and log.our_blocked() == []


LAB_CELLS = [
    "import explorer, explorer.views\nsteps = explorer.load_trace(STEPS)\nqk = explorer.load_trace(QK)",
    "explorer.views.stepper(steps)",
    "explorer.views.commitment_strip(steps)",
    "explorer.views.query_key(qk, layer=1, head=2)",
]
LAB_STEPPER, LAB_STRIP, LAB_QK = 1, 2, 3


@pytest.fixture(scope="module")
def lab(traces, chromium, tmp_path_factory):
    folder, _ = traces
    root = tmp_path_factory.mktemp("lab-strip")
    paths = f"STEPS = {str(folder / 'steps.trace')!r}\nQK = {str(folder / 'qk.trace')!r}\n"
    write_notebook(root / "strip.ipynb", [paths + LAB_CELLS[0], *LAB_CELLS[1:]])
    quiet_settings(root / ".jupyter" / "settings")
    with jupyterlab(root) as url:
        page, log = offline_page(chromium, viewport=(1400, 2400))
        page.goto(url + "/lab/tree/strip.ipynb", wait_until="domcontentloaded", timeout=60_000)
        page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=60_000)
        run_all_cells(page, len(LAB_CELLS))
        yield page, log


@pytest.mark.slow
def test_jupyterlab_strips(lab, traces):
    page, _ = lab
    trace = traces[1]["steps"]
    assert check_strip(cell(page, LAB_STEPPER), trace, generated_only=True) == 30
    n = check_strip(cell(page, LAB_STRIP), trace, generated_only=False)
    assert n == len(trace.lens.positions) - (int(trace.lens.positions[-1]) + 1 >= trace.n_tokens)
    cell(page, LAB_STRIP).screenshot(path=str(OUTPUT / "commitment-jupyterlab.png"))
    assert past_the_right_edge(cell(page, LAB_STEPPER)) == [] and past_the_right_edge(cell(page, LAB_STRIP)) == []


@pytest.mark.slow
def test_jupyterlab_scatter(lab, traces):
    page, log = lab
    out = cell(page, LAB_QK)
    check_scatter(page, out, traces[1]["qk"], 1, 2)
    out.screenshot(path=str(OUTPUT / "query-key-jupyterlab.png"))
    assert past_the_right_edge(out) == []
    errors = [m for m in log.console_errors if not re.search(r"WebGL|GPU stall", m)]
    assert log.page_errors == [] and errors == [] and log.blocked == [] and log.dialogs == []
