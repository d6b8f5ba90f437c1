"""The Voilà harness itself, in headless Chromium: a page that lost a widget model is recognised and opened again,
and its errors do not count against the load that drew."""

from __future__ import annotations

import pytest

from voila_harness import LOST_MODEL, browser, offline_page, open_voila_page, voila_server, write_notebook

pytestmark = pytest.mark.browser

SHOWN = "from ipywidgets import Label\nshown = Label('shown'); shown.add_class('harness-shown'); display(shown)"
# a widget shown, then closed by a later cell: its output names a model the kernel no longer has, as when
# Voilà's restore misses one
LOST = "gone = Label('gone'); display(gone)"
CLOSE = "gone.close()"


def test_a_page_that_lost_a_widget_model_is_opened_again_then_given_up(tmp_path):
    notebook = write_notebook(tmp_path / "lost.ipynb", [SHOWN, LOST, CLOSE])
    with browser() as b, voila_server(notebook) as url:
        page, log = offline_page(b)
        with pytest.raises(AssertionError, match="each of 2 loads lost a widget model"):
            open_voila_page(page, log, url + "/", ".harness-shown", tries=2)
        assert page.locator(LOST_MODEL).count() == 1 and page.locator(".harness-shown").count() == 1
        assert sum("lost 1 widget model" in m for m in log.console) == 2
        assert log.console_errors == []  # the lost loads' "widget model not found" is in log.console only
        assert any("widget model not found" in m for m in log.console)


def test_a_page_that_drew_every_widget_opens_once(tmp_path):
    notebook = write_notebook(tmp_path / "drawn.ipynb", [SHOWN, LOST])
    with browser() as b, voila_server(notebook) as url:
        page, log = offline_page(b)
        open_voila_page(page, log, url + "/", ".harness-shown")
        assert page.locator(LOST_MODEL).count() == 0 and page.get_by_text("gone").count() == 1
        assert not any(m.startswith("harness:") for m in log.console)
        assert log.requests.count(url + "/") == 1  # one load
