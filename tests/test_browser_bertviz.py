"""bertviz's head view and model view of a saved trace, served by Voilà to an offline Chromium: they draw
the tokens inside their sandboxed iframes, hostile tokens show as text, and nothing reaches for the network."""

from __future__ import annotations

import copy

import pytest

from explorer.views.attention.bertviz_offline import display_token
from voila_harness import OUTPUT, browser, offline_page, voila_server, write_notebook

pytestmark = pytest.mark.browser

HOSTILE = {3: "<img src=x onerror=alert(1)>", 5: "</script>", 8: "<b>bold</b>&amp;"}


@pytest.fixture(scope="module")
def hostile_trace(tiny_trace):
    trace = copy.copy(tiny_trace)
    trace.tokens = list(tiny_trace.tokens)
    for i, token in HOSTILE.items():
        trace.tokens[i] = token
    trace.tokens[tiny_trace.n_prompt + 1] = HOSTILE[3]  # a generated one too
    return trace


@pytest.fixture(scope="module")
def loaded(hostile_trace, tmp_path_factory):
    """The Voilà page of a notebook that loads the saved trace and shows both views; (page, log)."""
    folder = tmp_path_factory.mktemp("bertviz_voila")
    hostile_trace.save(folder / "hostile.trace")
    notebook = write_notebook(folder / "bertviz_views.ipynb", [
        "import explorer\nfrom explorer import views\nfrom IPython.display import display\n"
        "trace = explorer.load_trace('hostile.trace')",
        "display(views.head_view(trace))",
        "display(views.model_view(trace, display_mode='light'))",
    ])
    with voila_server(notebook) as url, browser() as b:
        page, log = offline_page(b, viewport=(1280, 1000))
        page.goto(url, timeout=120_000)
        for i in range(2):
            page.frame_locator("iframe[sandbox] >> nth=%d" % i).locator("svg text").first.wait_for(timeout=120_000)
        yield page, log


def frame(page, i: int):
    return page.frame_locator(f"iframe[sandbox='allow-scripts'] >> nth={i}")


def test_both_views_are_sandboxed_iframes(loaded):
    page, _ = loaded
    assert page.locator("iframe").count() == 2
    assert page.locator("iframe[sandbox='allow-scripts']").count() == 2
    assert page.locator("img").count() == 0


def test_head_view_draws_every_token_as_text(loaded, hostile_trace):
    page, log = loaded
    head = frame(page, 0)
    shown = [display_token(t) for t in hostile_trace.tokens]  # the default window holds all 22 tokens
    texts = head.locator("#vis svg text").all_text_contents()
    assert texts == shown + shown  # left column, then right column
    assert head.locator("img").count() == 0 and head.locator("b").count() == 0
    assert head.locator("#layer option").all_text_contents() == [str(i) for i in range(hostile_trace.n_layers)]
    head.locator("#vis svg text").nth(3).hover()  # the hostile token: its weights light up
    head.locator("#layer").select_option("1")
    head.locator("#vis svg text").nth(3).hover()
    page.locator("iframe").nth(0).screenshot(path=str(OUTPUT / "bertviz_head_view_voila.png"))
    assert log.dialogs == []


def test_model_view_draws_thumbnails_and_the_tokens_of_a_head(loaded, hostile_trace):
    page, log = loaded
    model = frame(page, 1)
    labels = model.locator("svg text").all_text_contents()
    assert labels[:1] == ["Heads"] and "Layers" in labels
    thumbnails = model.locator("svg line").count()
    n = hostile_trace.n_tokens
    assert thumbnails == hostile_trace.n_layers * hostile_trace.n_heads * n * n
    model.locator("svg").first.click(position={"x": 90, "y": 120})  # the first thumbnail: layer 0, head 0
    model.locator("text", has_text="Layer 0, Head 0").wait_for()
    texts = model.locator("svg text").all_text_contents()
    for token in hostile_trace.tokens:
        assert texts.count(display_token(token)) >= 2  # left and right column of the detail
    assert model.locator("img").count() == 0
    page.locator("iframe").nth(1).screenshot(path=str(OUTPUT / "bertviz_model_view_voila.png"))
    assert log.dialogs == []


def test_nothing_of_ours_reached_for_the_network_or_failed(loaded):
    page, log = loaded
    page.screenshot(path=str(OUTPUT / "bertviz_voila.png"), full_page=True)
    assert log.dialogs == []
    assert log.our_blocked() == []
    assert log.page_errors == []
    assert log.our_console_errors() == []
