"""The dashboard as a new user meets it: started by the real command, driven in headless Chromium, offline."""

from __future__ import annotations

import re
import subprocess

import pytest

from dashboard_harness import CLI, fill, start_dashboard, stop, upload, wait_error, wait_generated, wait_message, wait_stepper
from voila_harness import OUTPUT, browser, offline_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def hostile_trace(tmp_path_factory):
    """A saved trace (tiny GPT-2) whose tokens hold HTML, to load through the page."""
    from conftest import make_tiny_lm

    trace = make_tiny_lm("gpt2").generate("hello", max_new_tokens=6, progress=False)
    trace.tokens[2] = HOSTILE
    trace.steps[1].token = trace.tokens[trace.steps[1].position] = "</script><b>bold</b>"
    path = tmp_path_factory.mktemp("traces") / "hostile.trace"
    trace.save(path)
    return path


def step_info(page) -> str:
    return page.locator(".stepper-view").first.inner_text()


def test_a_new_user_generates_scrubs_selects_loads_and_meets_clear_errors(hostile_trace):
    proc, url, _ = start_dashboard()
    try:
        with browser() as b:
            page, log = offline_page(b, viewport=(1400, 1100))
            page.goto(url, timeout=180_000)
            wait_message(page, r"Ready: type a prompt")  # the service's first trace (a chat answer)
            page.wait_for_selector(".stepper-view")
            assert "SmolLM2-135M-Instruct" in page.locator(".ae-facts").inner_text()
            assert "9 query / 3 key-value" in page.locator(".ae-facts").inner_text()

            # type a prompt and generate (no chat template: plain continuation, 8 tokens)
            page.locator(".ae-prompt textarea").fill("The cat sat on the")
            page.locator(".ae-dashboard input[type=checkbox]").first.uncheck()
            fill(page, "ae-max-new-tokens", "8")
            page.locator(".ae-generate").click()
            wait_stepper(page, r"step 0 of 8")
            wait_generated(page, 8)
            assert re.search(r"step 0 of 8", step_info(page))
            wait_stepper(page, r"The\W+cat\W+sat\W+on\W+the")  # spaces are drawn visible
            assert page.locator(".ae-progress-label").inner_text().startswith("8 tokens")

            # scrub the stepper with the keyboard
            page.locator(".stepper-view .slider-container .noUi-handle, .stepper-view .ui-slider-handle").first.focus()
            page.keyboard.press("ArrowRight")
            wait_stepper(page, r"step 1 of 8")
            page.keyboard.press("ArrowRight")
            wait_stepper(page, r"step 2 of 8")

            # switch the head: the most-attended line is recomputed for that head
            before = page.locator(".stepper-view").inner_text()
            page.locator(".stepper-view select").nth(1).select_option(label="head 4")
            wait_stepper(page, r"head 4: most attended")
            assert page.locator(".stepper-view").inner_text() != before

            # click a token in the text: the heatmap tab opens on that token, with the same layer and head
            page.locator(".stepper-view .token-text-box span[data-index='1']").first.click()
            page.get_by_role("tab", name="Heatmap").click()
            page.wait_for_selector(".explorer-view canvas")
            page.wait_for_function(
                "() => /selected token .*cat/.test(document.querySelector('.explorer-view').innerText)", timeout=60_000)
            page.screenshot(path=str(OUTPUT / "dashboard-heatmap.png"), full_page=True)
            page.get_by_role("tab", name="Step through").click()

            # errors show in the page and lose nothing
            page.locator(".ae-prompt textarea").fill("")
            page.locator(".ae-generate").click()
            wait_error(page, "prompt is empty")
            assert re.search(r"step \d of 8", step_info(page))  # the last trace is still shown
            page.locator(".ae-prompt textarea").fill("Hello")
            fill(page, "ae-max-new-tokens", "0")
            page.locator(".ae-generate").click()
            wait_error(page, "max_new_tokens must be at least 1")
            fill(page, "ae-max-new-tokens", "5")
            page.locator(".ae-mode button", has_text="sample").click()
            fill(page, "ae-top-p", "1.5")
            page.locator(".ae-generate").click()
            wait_error(page, r"top_p must be in \(0, 1\]")
            not_a_trace = hostile_trace.with_name("notes.trace")
            not_a_trace.write_text("this is not a trace")
            upload(page, not_a_trace)
            wait_error(page, "notes.trace: the file is not a readable attention-explorer trace")
            assert re.search(r"step \d of 8", step_info(page))

            # the kernel lives on: a sampled generation with a seed
            fill(page, "ae-top-p", "0.9")
            fill(page, "ae-seed", "3")
            page.locator(".ae-generate").click()
            wait_stepper(page, r"step 0 of 5")
            wait_generated(page, 5)

            # the page answers while a generation runs (Generate works in a thread of its own): the stepper of
            # the trace shown moves while the tokens of the next one come
            page.locator(".ae-mode button", has_text="greedy").click()  # greedy counts on: 200 tokens, no end of text
            page.locator(".ae-prompt textarea").fill("1, 2, 3, 4, 5, 6,")
            fill(page, "ae-max-new-tokens", "200")
            page.locator(".ae-generate").click()
            page.wait_for_function(
                "() => /^\\d+ \\/ 200 tokens/.test(document.querySelector('.ae-progress-label')?.innerText || '')",
                timeout=60_000)
            page.locator(".stepper-view .slider-container .noUi-handle, .stepper-view .ui-slider-handle").first.focus()
            page.keyboard.press("ArrowRight")
            wait_stepper(page, r"step 1 of 5")
            assert page.locator(".ae-generate").is_disabled()  # still generating (one generation at a time)
            wait_generated(page, 200)
            wait_stepper(page, r"step 0 of 200")

            # load a saved trace: its HTML tokens show as text, and nothing runs
            upload(page, hostile_trace)
            wait_message(page, r"Loaded hostile.trace")
            text = page.locator(".stepper-view").inner_text()
            assert HOSTILE in text and "</script><b>bold</b>" in text
            assert "tiny-gpt2" in page.locator(".ae-facts").inner_text()  # the facts follow the shown trace
            assert page.locator(".stepper-view img[src=x]").count() == 0
            page.wait_for_timeout(500)
            page.screenshot(path=str(OUTPUT / "dashboard-loaded.png"), full_page=True)
            assert log.dialogs == [] and log.page_errors == []
            assert log.our_blocked() == [], log.our_blocked()
            assert log.our_console_errors() == [], log.our_console_errors()
    finally:
        stop(proc)


def test_a_saved_trace_is_shown_with_no_model(hostile_trace):
    proc, url, _ = start_dashboard("--trace", str(hostile_trace))
    try:
        with browser() as b:
            page, log = offline_page(b)
            page.goto(url, timeout=120_000)
            wait_message(page, r"Loaded .*hostile.trace")
            assert "no model is loaded" in page.locator(".ae-dashboard").inner_text()
            assert page.locator(".ae-generate").count() == 0
            assert "tiny-gpt2" in page.locator(".ae-facts").inner_text()
            assert HOSTILE in page.locator(".stepper-view").inner_text()
            # every tab's whole title shows, within the explorer (they wrap onto a second row where they must)
            tabs = page.locator(".explorer-view .lm-TabBar-tab").evaluate_all(
                "els => els.map(e => { const l = e.querySelector('.lm-TabBar-tabLabel'), r = e.getBoundingClientRect();"
                " return [l.textContent, l.scrollWidth <= l.clientWidth, r.left, r.right]; })")
            box = page.locator(".explorer-view").bounding_box()
            assert len(tabs) == 11 and [t[0] for t in tabs if not t[1]] == []
            assert all(box["x"] - 1 <= left and right <= box["x"] + box["width"] + 1 for _, _, left, right in tabs)
            page.locator(".explorer-view .lm-TabBar").screenshot(path=str(OUTPUT / "dashboard-tabs.png"))
            assert log.dialogs == [] and log.page_errors == [] and log.our_blocked() == []
    finally:
        stop(proc)


def test_a_saved_tree_of_branches_is_shown_with_no_model(tmp_path):
    """`dashboard --trace tree.trace`: a saved session (a trace and its branch) opens as a session and a tree."""
    import explorer
    from conftest import make_tiny_lm

    lm = make_tiny_lm("llama")
    trace = lm.generate("A tree", max_new_tokens=6, progress=False)
    explorer.save_traces([trace, lm.branch(trace, 2, 40, progress=False)], tmp_path / "tree.trace")
    proc, url, _ = start_dashboard("--trace", str(tmp_path / "tree.trace"))
    try:
        with browser() as b:
            page, log = offline_page(b)
            page.goto(url, timeout=120_000)
            wait_message(page, r"Loaded .*tree.trace")
            options = [o.replace("\xa0", " ") for o in page.locator(".ae-session-list select option").all_inner_texts()]
            assert len(options) == 2 and sum("branch at step 2" in o for o in options) == 1, options
            assert page.locator(".explorer-view .branch-tree").count() == 1
            page.screenshot(path=str(OUTPUT / "dashboard-tree-file.png"), full_page=True)
            assert log.dialogs == [] and log.page_errors == [] and log.our_blocked() == []
    finally:
        stop(proc)


def test_a_bad_trace_is_refused_before_serving(tmp_path):
    bad = tmp_path / "bad.trace"
    bad.write_bytes(b"\x00" * 64)
    out = subprocess.run([CLI, "dashboard", "--trace", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not a readable attention-explorer trace" in out.stderr


# Font Awesome's solid face as the page uses it: loaded, and what an icon of a button is drawn with
ICON_FONT = """() => [document.fonts.check('900 16px "Font Awesome 5 Free"'),
  getComputedStyle(document.querySelector('.ae-dashboard .fa'), '::before').fontFamily]"""


def test_the_dashboard_asks_nothing_beyond_this_machine_and_its_icons_show(tmp_path):
    """A classroom may have no internet: every request of the page (Voilà's, ours, the widgets') goes to the
    dashboard, Font Awesome included (Voilà's own template asks a CDN for it), and the buttons' icons still draw."""
    from conftest import make_tiny_lm

    path = tmp_path / "small.trace"
    make_tiny_lm("llama").generate("hello", max_new_tokens=4, progress=False).save(path)
    proc, url, _ = start_dashboard("--trace", str(path))  # no model: the same page, the same template
    try:
        with browser() as b:
            page, log = offline_page(b)
            page.goto(url, timeout=180_000)
            wait_message(page, "Loaded")
            page.wait_for_selector(".stepper-view .token-text[data-draw-count]")
            page.screenshot(path=str(OUTPUT / "dashboard-icons.png"))
            assert log.requests and log.outside() == [], log.outside()
            assert page.evaluate(ICON_FONT) == [True, '"Font Awesome 5 Free"']
            assert log.page_errors == []
    finally:
        stop(proc)
