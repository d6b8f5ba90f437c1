"""The views' front-end code, put together once: each module is prelude.js followed by the view's own .js.

An anywidget module cannot import a sibling file, so the shared colours and helpers (prelude.js: plain
top-level declarations, no `export`) are prepended here. The standalone HTML page uses the same functions.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
VIEWS = HERE.parent  # a view's .js and .css are named from here, as "attention/heatmap.js"


def module(name: str) -> str:
    """The source of the ES module `name` (a .js file under explorer/views/) with prelude.js in front of it."""
    # the text, not a Path: anywidget watches a Path for edits and its watcher keeps every instance alive
    return (HERE / "prelude.js").read_text(encoding="utf-8") + "\n" + (VIEWS / name).read_text(encoding="utf-8")


def stylesheet(name: str) -> str:
    """The text of the stylesheet `name` (a .css file under explorer/views/), for a `_css` or a page's <style>."""
    return (VIEWS / name).read_text(encoding="utf-8")
