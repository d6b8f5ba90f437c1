"""A widget that tells the kernel when a page has drawn it: work that would delay the page waits for it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anywidget


class PageReady(anywidget.AnyWidget):
    """Invisible; calls `callback` once, the first time a front end renders it (Voilà, JupyterLab), after setting
    `query` to the page's query string ("?token=…&teacher=…", or "")."""

    _esm = Path(__file__).with_name("page_ready.js").read_text()

    def __init__(self, callback: Callable[[], None]):
        super().__init__()
        self._callback: Callable[[], None] | None = callback
        self.query = ""
        self.on_msg(self._on_message)

    def _on_message(self, _widget, content, _buffers) -> None:
        if content.get("event") == "rendered" and self._callback is not None:
            callback, self._callback = self._callback, None
            query = content.get("query")
            self.query = query[:2000] if isinstance(query, str) else ""
            callback()
