"""The standalone HTML page in headless Chromium from file://, offline: the surprisal text, the logit lens and the
head atlas show the trace's values, the atlas sorts on a click, and HTML in tokens stays text."""

from __future__ import annotations

import math

import numpy as np
import pytest

from explorer.views.export import standalone_html
from explorer.views.frontend.tokens_html import SURPRISAL_FULL, visible
from synthetic import smollm2_shaped_trace, with_analysis
from voila_harness import OUTPUT, browser, offline_page

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"
SCRIPT = "</script><script>alert(2)</script>"
N, GENERATED, VOCAB = 64, 24, 20
# a span's background alpha: 0 with no colour; an opaque colour reads rgb(...)
ALPHA = ("s => { const c = s.style.backgroundColor, m = c.match(/rgba\\([^)]*,\\s*([\\d.]+)\\)/);"
         " return m ? +m[1] : c.startsWith('rgb(') ? 1 : 0; }")


@pytest.fixture(scope="module")
def trace():
    """A SmolLM2-shaped trace (30 layers x 9 heads) whose words repeat, with HTML in a prompt token, a generated
    token and a lens word, 24 generated steps and the lens at their positions."""
    t = smollm2_shaped_trace(N)
    t.token_ids = [i % VOCAB for i in range(N)]
    t.tokens = [f" w{i}" for i in t.token_ids]
    t.tokens[2], t.tokens[N - GENERATED + 2] = XSS, SCRIPT
    t.token_ids[2], t.token_ids[N - GENERATED + 2] = VOCAB, VOCAB + 1  # their own ids: the lens words are theirs
    t = with_analysis(t, n_generated=GENERATED, lens="steps")
    t.lens.words[int(t.lens.top_ids[-1, 0, 0])] = XSS
    t.surprisal[5] = np.nan  # as a prompt token of an older trace
    t.surprisal[7] = 12.5  # past the top of the scale: full colour
    return t


@pytest.fixture(scope="module")
def page(trace, tmp_path_factory):
    path = standalone_html(trace, tmp_path_factory.mktemp("export") / "trace.html")
    with browser() as b:
        page, log = offline_page(b, viewport=(1300, 1000))
        page.route(lambda url: url.startswith("file://"), lambda r: r.continue_())  # the page itself, nothing else
        page.goto(path.as_uri())
        page.wait_for_selector("body[data-ready]")
        page.screenshot(path=str(OUTPUT / "export-page.png"), full_page=True)
        yield page, log


def test_text_is_coloured_by_the_traces_surprisal(page, trace):
    page, _ = page
    spans = page.locator(".ae-surprisal-text span")
    assert spans.count() == N
    shown = spans.evaluate_all("els => els.map(s => s.textContent.replaceAll('↵\\n', '\\n')).join('')")
    assert shown == "".join(trace.tokens)
    values = spans.evaluate_all("els => els.map(s => s.dataset.surprisal === '' ? NaN : +s.dataset.surprisal)")
    np.testing.assert_allclose(values, trace.surprisal, rtol=5e-4)  # NaN where not known
    alphas = spans.evaluate_all(f"els => els.map({ALPHA})")
    expected = np.where(np.isnan(trace.surprisal), 0, np.minimum(1, trace.surprisal / SURPRISAL_FULL))
    np.testing.assert_allclose(alphas, expected, atol=1 / 255)  # the browser keeps alpha in 8 bits
    titles = spans.evaluate_all("els => els.map(s => s.title)")
    assert "surprisal not known" in titles[0] and "surprisal not known" in titles[5]
    for s in trace.steps[:3]:
        nats = float(trace.surprisal[s.position])
        assert f"surprisal {nats:.2f} nats ({nats / math.log(2):.2f} bits)" in titles[s.position]
        assert f"generated at step {s.index} · p " in titles[s.position] and f"rank {s.rank}" in titles[s.position]
    page.locator(".ae-surprisal-text").screenshot(path=str(OUTPUT / "export-surprisal.png"))


def test_lens_table_shows_the_lens_layers_bottom_to_top(page, trace):
    page, _ = page
    lens = trace.lens
    rows = page.locator(".ae-lens tr[data-layer]")
    assert rows.evaluate_all("els => els.map(r => +r.dataset.layer)") == list(range(trace.n_layers))[::-1]
    cells = page.locator(".ae-lens td").evaluate_all(
        "els => els.map(td => [+td.dataset.layer, +td.dataset.position, +td.dataset.topId, td.textContent,"
        " td.dataset.nextProb === '' ? NaN : +td.dataset.nextProb, td.title])")
    assert len(cells) == lens.n_layers * len(lens.positions)
    for layer, position, top_id, text, next_prob, title in cells:
        c = lens.column(position)
        assert top_id == lens.top_ids[layer, c, 0] and text == visible(lens.words[top_id])
        np.testing.assert_allclose(next_prob, lens.next_prob[layer, c], rtol=5e-4)
        assert all(f"“{visible(word)}”" in title for word, _, _ in lens.top_k(layer, position))
    assert page.locator(".ae-lens td", has_text=visible(XSS)).count() >= 1  # the lens word, as text
    page.locator(".ae-lens").screenshot(path=str(OUTPUT / "export-lens.png"))


def atlas_rows(page) -> list[list[float]]:
    return page.locator(".ae-atlas tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.children].map(td => td.dataset.value === '' ? NaN : +td.dataset.value))")


def test_atlas_shows_the_head_scores_and_sorts_on_a_header_click(page, trace):
    page, _ = page
    scores = trace.head_scores()
    names = list(scores)
    assert page.locator(".ae-atlas th").all_text_contents() == ["layer", "head", *[n.replace("_", " ") for n in names]]
    rows = atlas_rows(page)
    assert len(rows) == trace.n_layers * trace.n_heads
    for row in rows:
        layer, head = int(row[0]), int(row[1])
        np.testing.assert_allclose(row[2:], [scores[n][layer, head] for n in names], rtol=5e-4, atol=1e-7)
    column = names.index("induction")
    page.locator(".ae-atlas th[data-column='induction']").click()
    rows = atlas_rows(page)
    values = [r[2 + column] for r in rows]
    assert values == sorted(values, reverse=True)
    induction = scores["induction"]
    assert (rows[0][0], rows[0][1]) == np.unravel_index(int(np.argmax(induction)), induction.shape)
    assert page.locator(".ae-atlas th[data-column='induction']").get_attribute("data-sort") == "desc"
    page.locator(".ae-atlas-box").screenshot(path=str(OUTPUT / "export-atlas.png"))
    page.locator(".ae-atlas th[data-column='induction']").click()  # again: ascending
    values = [r[2 + column] for r in atlas_rows(page)]
    assert values == sorted(values)
    page.locator(".ae-atlas th[data-column='layer']").click()
    assert [(int(r[0]), int(r[1])) for r in atlas_rows(page)][:3] == [(trace.n_layers - 1, h) for h in range(3)]


def test_html_in_tokens_shows_as_text_and_nothing_went_out(page):
    page, log = page
    assert page.locator("img").count() == 0
    assert XSS in page.locator(".ae-surprisal-text").text_content()
    assert SCRIPT in page.locator(".ae-surprisal-text").text_content()
    assert log.dialogs == [] and log.page_errors == [] and log.console_errors == [] and log.blocked == []
