"""What-if in the dashboard as a user meets it: the real command (generation service + Voilà, SmolLM2), headless
Chromium, offline. Generate, branch with a click on a candidate in the stepper, the session list in the sidebar,
Compare two of its traces, back to the explorer, a head off and a run with it off, Save session as a download
that loads back as a tree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import explorer
from dashboard_harness import fill, start_dashboard, stop, upload, wait_generated, wait_message, wait_step, wait_stepper
from voila_harness import OUTPUT, browser, offline_page, redraws, stepper_round_trips, watch_redraws

pytestmark = [pytest.mark.browser, pytest.mark.slow]

STEP = 3
VIEWPORT = (1400, 1100)


def plain(labels: list[str]) -> list[str]:
    """Labels as written (ipywidgets draws a select's spaces as no-break spaces)."""
    return [label.replace("\xa0", " ") for label in labels]


def wait_options(page, count: int) -> list[str]:
    """The session list's labels once it has `count`, as the page has them (select_option needs them so)."""
    page.wait_for_function("n => document.querySelectorAll('.ae-session-list select option').length == n",
                           arg=count, timeout=120_000)
    return page.locator(".ae-session-list select option").all_inner_texts()


def inside_the_window(page, selector: str) -> None:
    """Every element matching `selector` is drawn, and drawn inside the window's width (nothing cut off)."""
    width = page.evaluate("document.documentElement.clientWidth")
    boxes = [e.bounding_box() for e in page.locator(selector).all()]
    assert boxes, selector
    for box in boxes:
        assert box is not None and box["width"] > 20 and box["height"] > 20, (selector, box)
        assert box["x"] >= 0 and box["x"] + box["width"] <= width + 1, (selector, box, width)


def test_generate_branch_compare_heads_off_and_save_the_session(tmp_path):
    proc, url, _ = start_dashboard()
    saved: list[Path] = []
    try:
        with browser() as b:
            page, log = offline_page(b, viewport=VIEWPORT)
            try:
                drive(page, url, tmp_path, saved)
            except Exception:
                page.screenshot(path=str(OUTPUT / "dashboard-whatif-failure.png"), full_page=True)
                raise
            assert log.dialogs == [] and log.page_errors == []
            assert log.our_blocked() == [], log.our_blocked()
            assert log.our_console_errors() == [], log.our_console_errors()
    finally:
        stop(proc)
        for path in saved:
            path.unlink(missing_ok=True)  # written next to the dashboard's notebook


def drive(page, url: str, tmp_path: Path, saved: list[Path]) -> None:
    """What the user does, step by step; the files Save session wrote on the server go into `saved`."""
    page.goto(url, timeout=180_000)
    wait_message(page, r"Ready: type a prompt")
    assert plain(wait_options(page, 1)) == ["1. What is the capital of …"]  # the service's first trace

    page.locator(".ae-prompt textarea").fill("The cat sat on the")
    page.locator(".ae-dashboard input[type=checkbox]").first.uncheck()
    fill(page, "ae-max-new-tokens", "8")
    page.locator(".ae-generate").click()
    wait_generated(page, 8)
    assert plain(wait_options(page, 2))[0] == "2. The cat sat on the"
    assert page.locator(".explorer-view .branch-tree").is_hidden()  # one trace in the family: no tree

    # branch: go to step 3 in the stepper, click the runner-up candidate
    stepper = page.locator(".stepper-view").first
    stepper.locator(".token-text-box.chips span[data-index='%d']" % STEP).click()
    wait_step(page, STEP)  # the line and the candidates: the candidates come last
    # the chips hold still under the click: nothing redraws them or the generated tokens while the kernel answers
    watch_redraws(page, ".stepper-view .stepper-candidates, .stepper-view .token-text:has(.chips)")
    stepper_round_trips(page, "")
    assert redraws(page) == [{"replaced": 0, "draws": 0, "connected": True}] * 2, redraws(page)
    candidates = stepper.locator(".token-text-box.candidates span")
    chosen = stepper.locator(".token-text-box.chips span[data-index='%d']" % STEP).inner_text()
    texts = candidates.all_inner_texts()
    runner_up = next(c for c in texts if c != chosen)
    candidates.nth(texts.index(runner_up)).click()  # by place: has_text would match any chip holding the text
    listed = wait_options(page, 3)
    assert plain(listed)[0] == f"3. The cat sat … · branch at step {STEP}: “{runner_up}”", listed
    wait_message(page, r"Added to the session: 3\.")
    page.wait_for_function("document.querySelectorAll('.explorer-view .branch-tree-node').length == 2")
    assert page.locator(".ae-progress-label").inner_text().startswith(f"branching at step {STEP}: done")
    assert page.locator(".ae-session-list select").input_value() != ""  # the branch is selected
    assert "branch" in page.locator(".ae-session-detail").inner_text()
    page.wait_for_timeout(500)
    page.screenshot(path=str(OUTPUT / "dashboard-whatif-branch.png"), full_page=True)

    # a click in the list shows a trace of the session: the first one
    page.locator(".ae-session-list select").select_option(label=listed[2])
    wait_message(page, r"Showing 1\. What is the capital")
    wait_stepper(page, r"capital")
    page.locator(".ae-session-list select").select_option(label=listed[0])
    wait_message(page, r"Showing 3\.")
    wait_stepper(page, rf"step {STEP} of 8")  # a branch opens at the step where it diverges

    # compare the generated trace (A) and its branch (B)
    page.locator(".ae-compare-a select").select_option(label=listed[1])
    page.locator(".ae-compare-b select").select_option(label=listed[0])
    page.locator(".ae-compare-button").click()
    wait_message(page, r"Comparing A, 2\. The cat sat on the, with B, 3\.")
    page.wait_for_selector(".ae-compare .ae-cmp-method", timeout=60_000)
    method = page.locator(".ae-compare .ae-cmp-method").inner_text()
    assert re.search(r"same prompt", method, re.I) or "position" in method, method
    assert f"B is a branch of A at step {STEP}" in method, method
    assert page.locator(".explorer-view").is_hidden()
    inside_the_window(page, ".ae-compare .ae-cmp-a, .ae-compare .ae-cmp-b, .ae-compare .ae-cmp-diff")
    inside_the_window(page, ".ae-compare-box, .ae-back")
    page.wait_for_timeout(500)
    page.screenshot(path=str(OUTPUT / "dashboard-whatif-compare.png"), full_page=True)

    page.locator(".ae-back").click()
    page.wait_for_selector(".explorer-view", state="visible")
    assert page.locator(".ae-compare").count() == 0  # closed
    wait_stepper(page, rf"step {STEP} of 8")

    # a head off: the step before and after, then a run with it off joins the session
    pickers = page.locator(".stepper-view .widget-dropdown select")
    pickers.nth(0).select_option(label="5")
    pickers.nth(1).select_option(label="head 2")
    page.locator("button.whatif-switch-off").click()
    page.wait_for_selector(".whatif-change[data-pending='false'] .whatif-side[data-side='after']", timeout=60_000)
    page.locator("button.whatif-generate").click()
    listed = wait_options(page, 4)
    assert plain(listed)[0] == "4. The cat sat … · heads off L5.H2", listed
    assert page.locator(".ae-progress-label").inner_text().startswith("generating with heads off: done")
    page.wait_for_function("document.querySelectorAll('.explorer-view .branch-tree-node').length == 3")
    page.wait_for_timeout(500)
    page.screenshot(path=str(OUTPUT / "dashboard-whatif-heads-off.png"), full_page=True)

    # Save session: a download link of one file holding the four traces
    page.locator(".ae-save-session").click()
    text = wait_message(page, r"Saved .*session-.*\.trace \(4 traces\)")
    saved.append(Path(re.search(r"Saved (\S+\.trace)", text)[1]))
    link = page.locator(".ae-links a.ae-download")
    assert re.fullmatch(r"download session-\d{8}-\d{6}\.trace", link.inner_text())
    with page.expect_download() as download:
        link.click()
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    traces = explorer.load_traces(path)
    assert len(traces) == 4 and traces[2].parent is traces[1] and traces[2].branch_step == STEP
    assert [tuple(pair) for pair in traces[3].settings["ablate"]] == [(5, 2)]

    # and the file loads back as a tree of its four traces
    upload(page, path)
    wait_message(page, r"Loaded session-.*: 4 traces, shown as a tree")
    page.wait_for_function("document.querySelectorAll('.explorer-view .branch-tree-node').length == 4")
    page.wait_for_timeout(500)
    page.screenshot(path=str(OUTPUT / "dashboard-whatif-loaded.png"), full_page=True)
    inside_the_window(page, ".ae-session-list, .ae-compare-a, .ae-compare-b, .ae-compare-button")
