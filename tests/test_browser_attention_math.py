"""The attention-math view in Voilà, in headless Chromium, offline: it draws, the step buttons walk the stages,
the weights it shows are the trace's, and a token holding HTML shows as text."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from explorer import textbook
from explorer.views.attention.attention_math import STAGES
from voila_harness import OUTPUT, browser, offline_page, voila_server, write_notebook

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"
QUERY = 10

CELL = """
import explorer
from explorer.views import attention_math
trace = explorer.load_trace(PATH)
attention_math(trace, layer=1, head=0, query=QUERY)
"""


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    copy = textbook.load().generate("3 1 4 1 5 9 2 |", max_new_tokens=7)
    return dataclasses.replace(copy, tokens=[XSS, *copy.tokens[1:]])


@pytest.fixture(scope="module")
def page(trace, tmp_path_factory):
    folder = tmp_path_factory.mktemp("attention_math")
    trace.save(folder / "copy.trace")
    notebook = write_notebook(folder / "am.ipynb", [f"PATH = {str(folder / 'copy.trace')!r}\nQUERY = {QUERY}", CELL])
    with voila_server(notebook) as url, browser() as b:
        page, log = offline_page(b, viewport=(1300, 1000))
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_selector(".attention-math-view .am-table, .jp-OutputArea-output pre", timeout=120_000)
        yield page, log


def _shown_rows(page) -> list[list[str]]:
    return page.eval_on_selector_all(
        ".attention-math-view .am-table tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")


def test_the_view_draws_and_walks_the_stages(page, trace):
    page, log = page
    assert "step 1 of 7" in page.inner_text(".attention-math-view")
    for _ in range(STAGES.index("softmax")):
        page.click(".attention-math-view button:has-text('▶')")
    page.wait_for_function("document.querySelector('.attention-math-view').innerText.includes('step 6 of 7')")
    rows = _shown_rows(page)[1:]
    shown = np.array([float(r[-1]) for r in rows])
    np.testing.assert_allclose(shown, trace.attention(1, 0)[QUERY], atol=6e-5)
    assert int(np.argmax(shown)) == 3  # the copy head reads the digit to copy next
    page.screenshot(path=str(OUTPUT / "attention_math_softmax.png"), full_page=True)
    assert log.our_blocked() == [] and log.page_errors == [] and log.our_console_errors() == []


def test_a_token_holding_html_shows_as_text(page):
    page, log = page
    rows = _shown_rows(page)
    assert rows[1][1] == "<img␣src=x␣onerror=alert(1)>"  # the characters, spaces made visible
    assert page.query_selector(".attention-math-view img") is None and log.dialogs == []
