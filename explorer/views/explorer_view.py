"""The full explorer: every view of one trace in tabs, sharing one selection, each built when first opened."""

from __future__ import annotations

from collections.abc import Callable

import ipywidgets as widgets

from ..trace import Trace
from .selection import Selection


def _stepper(trace, selection):
    from .stepper_view import stepper

    return stepper(trace, selection)


def _heatmap(trace, selection):
    from .heatmap_view import heatmap

    return heatmap(trace, selection=selection)


def _heads_map(trace, selection):
    from .heads_map_view import heads_map

    return heads_map(trace, selection)


def _head_atlas(trace, selection, open_heatmap=None):
    from .head_atlas import head_atlas

    return head_atlas(trace, selection, on_open=open_heatmap)


def _lens(trace, selection):
    from .lens_view import lens

    return lens(trace, selection)


def _attention_math(trace, selection):
    from .attention_math import attention_math

    return attention_math(trace, selection=selection)


def _positional(trace, selection):
    from .positional_view import positional  # plotly: loaded only by those who open this tab

    return positional(trace, selection)


def _bertviz(trace, selection):
    from .bertviz_offline import head_view, model_view

    return widgets.VBox([head_view(trace, selection=selection), model_view(trace, selection=selection)])


def _tabs() -> list[tuple[str, Callable]]:
    """Each tab's title and builder; a builder imports its view when its tab is first opened."""
    return [
        ("Step through", _stepper),
        ("Heatmap", _heatmap),
        ("All heads", _heads_map),
        ("Head atlas", _head_atlas),
        ("Logit lens", _lens),
        ("Attention math", _attention_math),
        ("Positions", _positional),
        ("bertviz", _bertviz),
    ]


class ExplorerView(widgets.VBox):
    """Tabs of views over one trace. Views are built when their tab is first shown (big views at start-up
    hang Voilà) and closed when the trace changes, so a long session does not keep old traces alive."""

    def __init__(self, trace: Trace | None = None, selection: Selection | None = None):
        super().__init__()
        self.add_class("explorer-view")
        self.selection = selection if selection is not None else Selection()
        self.builders = _tabs()
        self.tabs = widgets.Tab(children=[widgets.VBox() for _ in self.builders])
        for i, (title, _) in enumerate(self.builders):
            self.tabs.set_title(i, title)
        self.message = widgets.HTML()
        self.tabs.observe(lambda _: self._build_current(), "selected_index")
        self.children = [self.message, self.tabs]
        self.trace: Trace | None = None
        if trace is not None:
            self.set_trace(trace)

    def set_trace(self, trace: Trace) -> None:
        """Show another trace: close the old views and build the open tab anew."""
        for box in self.tabs.children:
            children, box.children = box.children, ()
            for child in children:
                _close_tree(child)
        self.trace = trace
        with self.selection.hold_trait_notifications():
            self.selection.layer = min(self.selection.layer, trace.n_layers - 1)
            if self.selection.head is not None:
                self.selection.head = min(self.selection.head, trace.n_heads - 1)
            self.selection.token, self.selection.step = None, 0
        self._build_current()

    def _build_current(self) -> None:
        index = self.tabs.selected_index or 0
        box = self.tabs.children[index]
        if self.trace is None or box.children:
            return
        title, build = self.builders[index]
        try:
            box.children = [build(self.trace, self.selection, **self._links(build))]
            self.message.value = ""
        except Exception as e:  # one view failing must not take the others down
            self.message.value = f"<div class='ae-error'>The {title} view could not be drawn: {_escape(e)}</div>"

    def _links(self, build: Callable) -> dict:
        """What a view gets besides the trace and the selection: the head atlas, a way to open the Heatmap tab."""
        return {"open_heatmap": lambda layer, head: self.show_tab("Heatmap")} if build is _head_atlas else {}

    def show_tab(self, title: str) -> None:
        """Switch to the tab called `title` (its view is built if it is new)."""
        self.tabs.selected_index = [t for t, _ in self.builders].index(title)


def _close_tree(widget: widgets.Widget) -> None:
    """Close a widget and every widget inside it, so the kernel lets go of them and their data."""
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widget.close()


def _escape(e: Exception) -> str:
    import html

    return html.escape(f"{type(e).__name__}: {e}")


def show(trace: Trace, selection: Selection | None = None) -> ExplorerView:
    """The full explorer for `trace`: step-through, heatmap, all heads, head atlas, attention math, positions,
    bertviz."""
    return ExplorerView(trace, selection)
