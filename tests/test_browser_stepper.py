"""The stepper (coloured by attention or by surprisal), the read-text view of a trace with no steps, and the
positional view in Voilà, in headless Chromium, offline.

One Voilà page for the module: the stepper and positional view of the real default trace (rotary), with
HTML put into some of its tokens, and the positional view of a tiny GPT-2 trace (learned positions).
Tests read what the browser shows: the text, the highlight, the charts' SVG text.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from explorer.trace import Candidate
from explorer.views.frontend.tokens_html import SURPRISAL_FULL, visible
from synthetic import synthetic_trace, with_analysis
from voila_harness import OUTPUT, notebook_page, redraws, stepper_round_trips, watch_redraws, write_notebook

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"
SCRIPT = "</script><script>alert(2)</script>"

CELL = """
import explorer
from ipywidgets import HTML, VBox
from explorer.views.steps.stepper_view import stepper
from explorer.views.positions.positional_view import positional

def case(name, *views):
    box = VBox([HTML("<h3>" + name + "</h3>"), *views])
    box.add_class("case-" + name)
    return box

rotary = explorer.load_trace(ROTARY)
learned = explorer.load_trace(LEARNED)
display(case("rotary", stepper(rotary), positional(rotary)))
display(case("learned", positional(learned)))
display(case("read", stepper(explorer.load_trace(READ))))
"""

# the text a TokenText shows: tokens of the visible spans, a newline drawn as "↵" before the line break
SHOWN_TEXT = """(root) => [...root.querySelectorAll('.token-text-box span')].filter(s => !s.hidden)
    .map(s => s.textContent.replaceAll('↵\\n', '\\n')).join('')"""


def hostile(trace):
    """The trace with HTML in a prompt token, in the 4th generated token and in that step's last candidate."""
    tokens = list(trace.tokens)
    tokens[1] = XSS
    steps = list(trace.steps)
    s = steps[3]
    tokens[s.position] = SCRIPT
    top = [Candidate(SCRIPT if c.token_id == s.token_id else c.token, c.token_id, c.prob) for c in s.top_k]
    top[-1] = Candidate(XSS, top[-1].token_id, top[-1].prob) if top[-1].token_id != s.token_id else top[-1]
    steps[3] = dataclasses.replace(s, token=SCRIPT, top_k=top)
    return dataclasses.replace(trace, tokens=tokens, steps=steps)


@pytest.fixture(scope="module")
def read_trace():
    """A trace read in one pass (no steps) with a known surprisal but at position 0 and 6, and HTML in token 4."""
    trace = with_analysis(synthetic_trace(40, seed=1), lens=None, seed=1)
    trace.tokens[4] = XSS
    trace.surprisal[6] = np.nan  # as a prompt token of an older trace
    trace.surprisal[8] = 15.0  # past the top of the scale: full colour
    return trace


@pytest.fixture(scope="module")
def traces(tmp_path_factory, default_trace, read_trace):
    from conftest import make_tiny_lm

    learned = make_tiny_lm("gpt2").trace("Hello, world")
    rotary = hostile(default_trace)
    folder = tmp_path_factory.mktemp("stepper")
    rotary.save(folder / "rotary.trace")
    learned.save(folder / "learned.trace")
    read_trace.save(folder / "read.trace")
    return folder, rotary, learned


@pytest.fixture(scope="module")
def page(traces):
    folder, _, _ = traces
    paths = (f"ROTARY = {str(folder / 'rotary.trace')!r}\nLEARNED = {str(folder / 'learned.trace')!r}\n"
             f"READ = {str(folder / 'read.trace')!r}")
    notebook = write_notebook(folder / "stepper.ipynb", [paths, CELL])
    with notebook_page(notebook, ".case-learned .positional-view .main-svg", viewport=(1300, 1600)) as (page, log):
        page.wait_for_selector(".case-read .stepper-view .read-text-view .token-text[data-draw-count]")
        page.wait_for_function("document.querySelectorAll('.token-text[data-draw-count]').length >= 3")
        page.wait_for_function("document.querySelectorAll('.stepper-view .step-charts .bar-label').length >= 2")
        assert page.locator(".stepper-view .step-charts svg").count() == 1  # one SVG for both charts
        assert page.locator(".stepper-view .js-plotly-plot").count() == 0  # no plotly.js sent for the stepper
        page.screenshot(path=str(OUTPUT / "stepper-load.png"), full_page=True)
        yield page, log
        page.screenshot(path=str(OUTPUT / "stepper-end.png"), full_page=True)


def shown(page) -> dict:
    """What the stepper shows now; the text and its highlight are read in one go."""
    root = page.locator(".case-rotary .stepper-view").first
    text = root.locator(".token-text").first
    now = text.evaluate("(el) => ({highlight: +el.dataset.highlight, text: (" + SHOWN_TEXT + ")(el),"
                        " marked: el.querySelector('span.highlight').textContent})")
    labels = root.locator(".step-charts .bar-label")
    now["ticks"] = labels.evaluate_all("els => els.map(e => e.firstChild.textContent)")  # as drawn (cut)
    now["tick_titles"] = labels.evaluate_all("els => els.map(e => e.querySelector('title').textContent)")
    now["title"] = next(t for t in root.locator(".step-charts .title").all_text_contents() if t.startswith("step "))
    return now


def wait_step(page, trace, step: int) -> None:
    """Until the text highlights the token of `step` and the bar chart is titled with it."""
    page.wait_for_function(
        "([position, title]) => { const root = document.querySelector('.case-rotary .stepper-view');"
        " return root.querySelector('.token-text').dataset.highlight == position"
        " && [...root.querySelectorAll('.step-charts .title')].some(a => a.textContent.startsWith(title)); }",
        arg=[str(trace.steps[step].position), f"step {step}:"])


def slider_value(page) -> int:
    return int(page.locator(".case-rotary .stepper-view .widget-readout").first.inner_text())


def test_slider_steps_change_the_text_highlight_and_bars(page, traces):
    page, _ = page
    _, trace, _ = traces
    for step in (0, 1, 2):
        if step:
            page.locator(".case-rotary .stepper-view .noUi-handle").first.focus()
            page.keyboard.press("ArrowRight")
        wait_step(page, trace, step)
        s, now = trace.steps[step], shown(page)
        assert now["text"] == "".join(trace.tokens[: s.position + 1])
        assert now["marked"].replace("↵\n", "\n") == s.token
        assert visible(s.top_k[0].token) in now["tick_titles"]  # the step's most likely candidate is a bar
        assert visible(s.token) in now["title"]
    page.locator(".case-rotary .stepper-view").screenshot(path=str(OUTPUT / "stepper-step2.png"))


def test_play_button_advances_the_steps(page, traces):
    page, _ = page
    _, trace, _ = traces
    start = slider_value(page)
    play = page.locator(".case-rotary .widget-play button").first
    play.click()
    target = trace.steps[min(start + 2, trace.n_generated - 1)].position
    page.wait_for_function(
        f"+document.querySelector('.case-rotary .stepper-view .token-text').dataset.highlight >= {target}",
        timeout=30_000)
    play.click()  # the same button pauses
    page.wait_for_timeout(1000)  # a step already on its way may still land
    step = slider_value(page)
    assert step >= start + 2
    wait_step(page, trace, step)
    assert shown(page)["text"] == "".join(trace.tokens[: trace.steps[step].position + 1])


def test_positional_views_draw(page):
    page, _ = page
    for case in ("rotary", "learned"):
        view = page.locator(f".case-{case} .positional-view")
        assert view.locator(".main-svg").count() >= 1
        assert view.locator(".heatmaplayer image").count() == 2  # two heatmaps drawn as images
    assert page.locator(".case-rotary .positional-view .scatterlayer .js-line").count() == 3
    assert "Rotary" in page.locator(".case-rotary .positional-view").inner_text()
    assert "Learned" in page.locator(".case-learned .positional-view").inner_text()
    page.locator(".case-rotary .positional-view").screenshot(path=str(OUTPUT / "positional-rotary.png"))
    page.locator(".case-learned .positional-view").screenshot(path=str(OUTPUT / "positional-learned.png"))


def test_html_in_tokens_shows_as_text(page, traces):
    page, log = page
    _, trace, _ = traces
    stepper_view = page.locator(".case-rotary .stepper-view").first
    stepper_view.locator(".token-text-box.chips span[data-index='3']").click()  # a click on a chip goes to step 3
    wait_step(page, trace, 3)
    now = shown(page)
    assert now["text"] == "".join(trace.tokens[: trace.steps[3].position + 1])
    assert XSS in now["text"] and now["marked"] == SCRIPT
    assert any(t.startswith("<img␣src=x") for t in now["ticks"])  # the label is text, not an element
    assert stepper_view.locator("img").count() == 0 and page.locator("img[src='x']").count() == 0
    assert SCRIPT in stepper_view.inner_text()  # the info line, escaped
    stepper_view.locator(".token-text span[data-index='1']").first.hover()  # hover shows the token as text
    tip = stepper_view.locator(".token-text-tip").first
    assert XSS.replace(" ", "␣") in tip.text_content() and "attention" in tip.text_content()
    page.locator(".case-rotary .stepper-view").screenshot(path=str(OUTPUT / "stepper-hostile.png"))
    assert log.dialogs == []


# the background alpha of each token shown: 0 where it has no colour
ALPHAS = """(root) => [...root.querySelectorAll('.token-text-box span')].filter(s => !s.hidden).map(s => {
    const c = s.style.backgroundColor, m = c.match(/rgba\\([^)]*,\\s*([\\d.]+)\\)/);
    return m ? +m[1] : c.startsWith('rgb(') ? 1 : 0; })"""  # an opaque colour reads rgb(...)


def surprisal_alphas(surprisal: np.ndarray) -> np.ndarray:
    """The alpha each token should have: white at 0 nats, full colour from SURPRISAL_FULL, none where not known."""
    return np.where(np.isnan(surprisal), 0, np.minimum(1, np.nan_to_num(surprisal) / SURPRISAL_FULL))


def hover_tip(view, index: int) -> str:
    view.locator(f".token-text span[data-index='{index}']").first.hover()
    return view.locator(".token-text-tip").first.text_content()


def nats_and_bits(nats: float) -> str:
    return f"surprisal {nats:.2f} nats ({nats / math.log(2):.2f} bits)"


def test_stepper_colours_the_text_by_surprisal(page, traces):
    page, log = page
    _, trace, _ = traces
    view = page.locator(".case-rotary .stepper-view").first
    text = view.locator(".token-text").first
    assert not view.locator(".surprisal-legend").is_visible()
    view.locator(".stepper-colour-by button", has_text="surprisal").click()
    page.wait_for_function("document.querySelector('.case-rotary .stepper-view .token-text').dataset.valueName"
                           " === 'surprisal'")
    assert view.locator(".surprisal-legend").is_visible()
    step = trace.steps[slider_value(page)]
    shown = trace.surprisal[: step.position + 1]
    # the browser keeps alpha in 8 bits
    np.testing.assert_allclose(text.evaluate(ALPHAS), surprisal_alphas(shown), atol=1 / 255)
    tip = hover_tip(view, step.position)  # the new token: its surprisal is -ln of its probability
    assert nats_and_bits(-math.log(step.prob)) in tip and f"p {step.prob:.4f} · rank {step.rank}" in tip
    prompt = trace.surprisal[1]
    assert (nats_and_bits(prompt) if not np.isnan(prompt) else "surprisal not known") in hover_tip(view, 1)
    assert "surprisal not known" in hover_tip(view, 0)  # nothing before the first token
    assert "most surprising so far" in view.inner_text()
    view.screenshot(path=str(OUTPUT / "stepper-surprisal.png"))
    view.locator(".stepper-colour-by button", has_text="attention").click()  # back, as the other tests expect
    page.wait_for_function("document.querySelector('.case-rotary .stepper-view .token-text').dataset.valueName"
                           " === 'attention'")
    row = trace.step_attention(step.index, 0, None)
    alphas = text.evaluate(ALPHAS)
    assert int(np.argmax(alphas)) == int(np.argmax(row)) and not view.locator(".surprisal-legend").is_visible()
    assert log.dialogs == []


def test_a_trace_with_no_steps_shows_its_text_coloured_by_surprisal(page, read_trace):
    page, log = page
    view = page.locator(".case-read .stepper-view").first
    assert "No decoding steps" in view.inner_text() and view.locator(".surprisal-legend").is_visible()
    text = view.locator(".read-text-view .token-text").first
    assert text.evaluate(SHOWN_TEXT) == "".join(read_trace.tokens)  # every token shown, HTML as text
    np.testing.assert_allclose(text.evaluate(ALPHAS), surprisal_alphas(read_trace.surprisal), atol=1 / 255)
    tip = hover_tip(view, 4)
    assert visible(XSS) in tip and nats_and_bits(read_trace.surprisal[4]) in tip
    assert "surprisal not known" in hover_tip(view, 6)
    assert view.locator("img").count() == 0 and log.dialogs == []
    view.screenshot(path=str(OUTPUT / "read-text.png"))


def wait_candidates(page, step: int) -> None:
    """Until the candidates drawn are those of `step` (data-key) and the strip has taken its click."""
    page.wait_for_function(
        "s => { const v = document.querySelector('.case-rotary .stepper-view');"
        " return v.querySelector('.stepper-candidates').dataset.key === 'step ' + s"
        " && !v.querySelector('.chips span.selected'); }", arg=step)


def test_another_step_keeps_the_chips_and_an_idle_stepper_redraws_nothing(page, traces):
    page, _ = page
    _, trace, _ = traces
    view = page.locator(".case-rotary .stepper-view").first
    chips = view.locator(".stepper-candidates .token-text-box span")
    first, then = (4, 5) if slider_value(page) != 4 else (5, 4)
    view.locator(f".token-text-box.chips span[data-index='{first}']").click()
    wait_candidates(page, first)
    chips.evaluate_all("spans => spans.forEach((s, i) => { s.aeMark = i; })")  # these very nodes
    watch_redraws(page, ".case-rotary .stepper-candidates")
    view.locator(f".token-text-box.chips span[data-index='{then}']").click()
    wait_candidates(page, then)
    assert chips.all_text_contents() == [visible(c.token) for c in trace.steps[then].top_k]
    assert chips.evaluate_all("spans => spans.map(s => s.aeMark)") == list(range(len(trace.steps[then].top_k)))
    (moved,) = redraws(page)
    assert moved["replaced"] == 0 and moved["draws"] >= 1  # new tokens written into the chips there were

    # settled: two trips through the kernel for the text's colour redraw neither the candidates nor the strip
    watch_redraws(page, ".case-rotary .stepper-candidates, .case-rotary .token-text:has(.chips)")
    stepper_round_trips(page, ".case-rotary")
    assert redraws(page) == [{"replaced": 0, "draws": 0, "connected": True}] * 2, redraws(page)


def test_nothing_of_ours_went_out_and_no_errors(page):
    page, log = page
    page.wait_for_timeout(300)
    assert log.our_blocked() == [], log.our_blocked()
    assert log.page_errors == [], log.page_errors
    assert log.our_console_errors() == [], json.dumps(log.our_console_errors())[:2000]
    assert log.dialogs == []
