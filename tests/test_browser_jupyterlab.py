"""The README's Python example in JupyterLab 4, in headless Chromium, offline.

A notebook loads a saved trace (no model needed) and shows the explorer, a heatmap, a stepper and bertviz's
head view; JupyterLab's own Run menu runs it. The tests check that every view drew, inside JupyterLab's
output area and their iframes (nothing cut at the right edge), that nothing asked the
network (news, update checks and the extension manager's PyPI list are off) and that the page logged no error.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from voila_harness import OUTPUT, browser, free_port, local_server, offline_page, write_notebook

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CELLS = [
    "import explorer\ntrace = explorer.load_trace(PATH)",
    "explorer.show(trace)",
    "explorer.views.heatmap(trace, layer=1, head=2)",
    "explorer.views.stepper(trace)",
    "explorer.views.head_view(trace)",
]
SHOW, HEATMAP, STEPPER, HEAD_VIEW = 1, 2, 3, 4  # the cells' indices
# everything JupyterLab would fetch beyond this machine: the news feed, the check for a newer version and
# PyPI's list of extensions (the extension manager)
OFFLINE = ["--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly"]


@contextmanager
def jupyterlab(root: Path, timeout: float = 90):
    """Start JupyterLab with no token on a free 127.0.0.1 port over `root`; yield its base URL; stop it after.

    Its settings, workspaces and runtime files live in `root`, so the user's own JupyterLab plays no part.
    """
    port = free_port()
    home = root / ".jupyter"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces")}
    command = [str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser", f"--port={port}",
               "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=",
               "--allow-root", f"--ServerApp.root_dir={root}", *OFFLINE]
    with local_server(f"jupyterlab-{port}", command, root, env, port, "/api/status", timeout) as url:
        yield url


def cell(page, i: int):
    return page.locator(".jp-Notebook .jp-CodeCell").nth(i)


def quiet_settings(settings: Path) -> None:
    """The user settings of someone who answered No to "get notified about official Jupyter news?"."""
    folder = settings / "@jupyterlab" / "apputils-extension"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')


def run_all_cells(page, n_cells: int) -> None:
    """Run → Run All Cells once the kernel is connected; until every cell shows its execution count."""
    # the toolbar's indicator reads "idle" before the kernel has even started: the status bar says when it is
    page.wait_for_function("document.querySelector('#jp-main-statusbar')?.textContent.includes('| Idle')",
                           timeout=60_000)
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
    page.wait_for_function(
        "n => { const p = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')];"
        " return p.length === n && p.every(e => /\\[\\d+\\]/.test(e.textContent)); }", arg=n_cells, timeout=60_000)
    page.wait_for_function("document.querySelector('#jp-main-statusbar').textContent.includes('| Idle')",
                           timeout=60_000)


@pytest.fixture(scope="module")
def trace():
    from conftest import make_tiny_lm

    return make_tiny_lm("llama").generate("Hello, world", max_new_tokens=10, temperature=0.8, seed=3, progress=False)


@pytest.fixture(scope="module")
def lab(trace, tmp_path_factory):
    """JupyterLab after Run → Run All Cells on the README's example; yields (page, log)."""
    root = tmp_path_factory.mktemp("lab")
    trace.save(root / "hello.trace")
    write_notebook(root / "readme.ipynb", [f"PATH = {str(root / 'hello.trace')!r}\n" + CELLS[0], *CELLS[1:]])
    quiet_settings(root / ".jupyter" / "settings")
    with jupyterlab(root) as url, browser() as b:
        page, log = offline_page(b, viewport=(1400, 2400))
        page.goto(url + "/lab/tree/readme.ipynb", wait_until="domcontentloaded", timeout=60_000)
        page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=60_000)
        run_all_cells(page, len(CELLS))
        yield page, log


def test_every_cell_ran_without_an_error(lab):
    page, _ = lab
    stderr = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    assert stderr.count() == 0, stderr.all_inner_texts()
    assert page.locator(".ae-error").count() == 0, page.locator(".ae-error").all_inner_texts()


def test_heatmap_paints_its_canvas(lab):
    page, _ = lab
    out = cell(page, HEATMAP)
    canvas = out.locator(".ae-heatmap canvas.ae-window")
    canvas.wait_for(timeout=30_000)
    painted = canvas.evaluate("c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                              " let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }")
    box = canvas.bounding_box()
    assert box["width"] > 100 and box["height"] > 100
    assert painted > 0.9 * canvas.evaluate("c => c.width * c.height")  # every cell is coloured (grey or not)
    out.screenshot(path=str(OUTPUT / "jupyterlab-heatmap.png"))


def test_stepper_draws_its_text_and_charts(lab, trace):
    page, _ = lab
    out = cell(page, STEPPER)
    out.locator(".stepper-view .token-text[data-draw-count]").first.wait_for(timeout=30_000)
    out.locator(".stepper-view .step-charts .bar-label").nth(1).wait_for(timeout=30_000)
    assert out.locator(".stepper-view .step-charts svg").count() == 1  # one SVG for both charts
    marked = out.locator(".stepper-view .token-text span.highlight").first.text_content()
    assert marked.replace("↵\n", "\n") == trace.steps[0].token
    out.screenshot(path=str(OUTPUT / "jupyterlab-stepper.png"))


def test_head_view_draws_the_tokens_in_its_iframe(lab, trace):
    page, _ = lab
    out = cell(page, HEAD_VIEW)
    out.scroll_into_view_if_needed()
    assert out.locator("iframe[sandbox='allow-scripts']").count() == 1
    frame = out.frame_locator("iframe[sandbox='allow-scripts']")
    frame.locator("#vis svg text").first.wait_for(timeout=30_000)
    assert frame.locator("#vis svg text").count() == 2 * trace.n_tokens  # left column and right column
    out.screenshot(path=str(OUTPUT / "jupyterlab-head-view.png"))


# what runs past the right edge of JupyterLab's output area: an area that scrolls sideways, a drawing beyond it
PAST_THE_RIGHT_EDGE = """areas => areas.flatMap(area => {
    const right = area.getBoundingClientRect().right, wide = area.scrollWidth - area.clientWidth;
    const drawn = [...area.querySelectorAll('canvas, svg, iframe, table, .widget-box, .widget-html')]
        .filter(e => e.getBoundingClientRect().width > 0 && e.getBoundingClientRect().right > right + 1)
        .map(e => `${e.tagName.toLowerCase()}.${(e.className.baseVal ?? e.className).split(' ').at(-1)} ends `
                  + `${Math.round(e.getBoundingClientRect().right - right)} px past the edge`);
    return [...(wide > 0 ? [`the output area scrolls sideways by ${wide} px`] : []), ...drawn];
})"""


def past_the_right_edge(out) -> list[str]:
    return out.locator(".jp-OutputArea-output").evaluate_all(PAST_THE_RIGHT_EDGE)


# each tab of the explorer and what shows that it drew
TABS = {
    "Step through": ".stepper-view .step-charts svg .bar-label",
    "Heatmap": ".ae-heatmap canvas.ae-window",
    "All heads": ".ae-heads-map canvas.ae-thumbs",
    "Head atlas": ".ae-atlas table.ae-atlas-table tr td",
    "Logit lens": ".ae-lens-cell",
    "Attribution": ".ae-attribution-cell",
    "Contribution": ".ae-contribution canvas",
    "Queries & keys": ".query-key-view .js-plotly-plot .main-svg",
    "Attention math": ".attention-math-view table",
    "Positions": ".positional-view .js-plotly-plot .main-svg",
    "bertviz": "iframe[sandbox='allow-scripts']",
}
@pytest.mark.parametrize("title", list(TABS))
def test_explorer_tab_draws_inside_the_output_area(lab, title):
    page, _ = lab
    out = cell(page, SHOW)
    out.scroll_into_view_if_needed()
    out.locator(".explorer-view .lm-TabBar-tab", has_text=title).first.click()
    shot = OUTPUT / f"jupyterlab-explorer-{title.lower().replace(' ', '-')}.png"
    try:
        out.locator(f".explorer-view {TABS[title]}").first.wait_for(timeout=30_000)
    except Exception:
        out.screenshot(path=str(shot))  # what showed instead, to look at
        raise
    if title == "bertviz":  # head view and model view, each drawn inside its iframe
        assert out.locator(f".explorer-view {TABS[title]}").count() == 2
        for i in range(2):
            out.frame_locator(f".explorer-view {TABS[title]} >> nth={i}").locator("svg text").first.wait_for(
                timeout=30_000)
    out.screenshot(path=str(shot))
    assert past_the_right_edge(out) == []


@pytest.mark.parametrize("index", [HEATMAP, STEPPER, HEAD_VIEW], ids=["heatmap", "stepper", "head_view"])
def test_each_view_fits_inside_the_output_area(lab, index):
    page, _ = lab
    assert past_the_right_edge(cell(page, index)) == []


# bertviz's pages in their iframes: (cell, tab to open or None, which iframe of the cell)
PAGES = {
    "head_view": (HEAD_VIEW, None, 0),
    "explorer head view": (SHOW, "bertviz", 0),
    "explorer model view": (SHOW, "bertviz", 1),
}


@pytest.mark.parametrize("name", list(PAGES))
def test_bertviz_page_fits_its_iframe(lab, name):
    page, _ = lab
    index, tab, nth = PAGES[name]
    out = cell(page, index)
    out.scroll_into_view_if_needed()
    if tab:
        out.locator(".explorer-view .lm-TabBar-tab", has_text=tab).first.click()
    frame = out.locator("iframe[sandbox='allow-scripts']").nth(nth).element_handle(timeout=30_000).content_frame()
    frame.wait_for_selector("svg text", timeout=30_000)
    width, room = frame.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert width <= room, f"{name}: {width} px drawn in a {room} px iframe"


def test_nothing_went_to_the_network_and_nothing_logged_an_error(lab):
    page, log = lab
    page.screenshot(path=str(OUTPUT / "jupyterlab.png"))
    assert log.requests and log.outside() == []  # every request the page made (seen, not only routed)
    assert log.blocked == []
    assert log.console_errors == []
    assert log.page_errors == []
    assert log.dialogs == []


def test_positions_strip_and_position_taken_out_fit_in_jupyterlab(lab, trace):
    """The explorer's Positions tab: a click on layer 1 of the strip pictures layer 1; the heatmap cell drawn with
    the positional term taken out; both inside the output area."""
    page, log = lab
    out = cell(page, SHOW)
    out.scroll_into_view_if_needed()
    out.locator(".explorer-view .lm-TabBar-tab", has_text="Positions").first.click()
    plot = out.locator(".explorer-view .positional-view .js-plotly-plot .main-svg").first
    shown = plot.element_handle(timeout=30_000)  # layer 0's picture, which layer 1's replaces
    out.locator(".explorer-view .ae-layer-strip .ae-layer-button").nth(1).click()
    page.wait_for_function("el => !el.isConnected", arg=shown, timeout=30_000)
    out.locator(".explorer-view .positional-view", has_text="layer 1: rotary").first.wait_for(timeout=30_000)
    plot.wait_for(timeout=30_000)
    out.screenshot(path=str(OUTPUT / "jupyterlab-positions-layer-1.png"))
    assert past_the_right_edge(out) == []
    heat = cell(page, HEATMAP)
    heat.scroll_into_view_if_needed()
    heat.locator(".ae-kind").select_option("no_position")
    page.wait_for_function("() => [...document.querySelectorAll('.jp-CodeCell .ae-heatmap')]"
                           ".some((h) => h.dataset.kind === 'no_position')", timeout=30_000)
    heat.screenshot(path=str(OUTPUT / "jupyterlab-heatmap-no-position.png"))
    assert past_the_right_edge(heat) == []
    assert log.page_errors == []
