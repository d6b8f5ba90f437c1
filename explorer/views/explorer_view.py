"""The full explorer: every view of one trace in tabs, sharing one selection, each built when first opened.

With a model (`ExplorerView(trace, lm=lm)`, a LanguageModel or a dashboard's RemoteModel) it also asks what if:
a click on a candidate in the stepper branches there, heads can be switched off, and the family of traces it made
(the first, its branches, runs with heads off) shows as a tree above the tabs, a click on a node showing it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import ipywidgets as widgets

from ..trace import Trace, save_traces
from .whatif.branch_tree import BranchTree
from .selection import Selection


def _stepper(trace, selection, on_branch=None, on_attribution=None):
    from .steps.stepper_view import stepper

    return stepper(trace, selection, on_branch=on_branch, on_attribution=on_attribution)


def _heatmap(trace, selection):
    from .attention.heatmap_view import heatmap

    return heatmap(trace, selection=selection)


def _heads_map(trace, selection):
    from .attention.heads_map_view import heads_map

    return heads_map(trace, selection)


def _head_atlas(trace, selection, open_heatmap=None):
    from .meaning.head_atlas import head_atlas

    return head_atlas(trace, selection, on_open=open_heatmap)


def _lens(trace, selection):
    from .meaning.commitment_view import commitment_strip
    from .meaning.lens_view import lens

    return widgets.VBox([commitment_strip(trace), lens(trace, selection)])


def _query_key(trace, selection):
    from .meaning.query_key_view import query_key  # plotly: loaded only by those who open this tab

    return query_key(trace, selection)


def _attribution(trace, selection, open_heatmap=None):
    from .meaning.attribution_view import attribution

    return attribution(trace, selection, on_open=open_heatmap)


def _contribution(trace, selection):
    from .meaning.contribution_view import contribution

    return contribution(trace, selection)


def _attention_math(trace, selection):
    from .attention.attention_math import attention_math

    return attention_math(trace, selection=selection)


def _positional(trace, selection):
    from .positions.positional_view import positional  # plotly: loaded only by those who open this tab

    return positional(trace, selection)


def _bertviz(trace, selection):
    from .attention.bertviz_offline import head_view, model_view

    return widgets.VBox([head_view(trace, selection=selection), model_view(trace, selection=selection)])


_NEEDS_LENS = (_lens, _attribution, _contribution)  # views drawn again when a trace shown before its lens gets it


def _tabs() -> list[tuple[str, Callable]]:
    """Each tab's title and builder; a builder imports its view when its tab is first opened."""
    return [
        ("Step through", _stepper),
        ("Heatmap", _heatmap),
        ("All heads", _heads_map),
        ("Head atlas", _head_atlas),
        ("Logit lens", _lens),
        ("Attribution", _attribution),
        ("Contribution", _contribution),
        ("Queries & keys", _query_key),
        ("Attention math", _attention_math),
        ("Positions", _positional),
        ("bertviz", _bertviz),
    ]


# ipywidgets shrinks every tab of a Tab to share one row: eleven titles in a 900-pixel explorer were cut to
# "Queries & ke". Each tab keeps its title's width, and the tabs wrap onto a second row where they do not fit.
_TAB_STYLE = """<style>
.explorer-view.explorer-view > .jupyter-widget-tab > .lm-TabBar .lm-TabBar-content { flex-wrap: wrap; }
.explorer-view.explorer-view > .jupyter-widget-tab > .lm-TabBar .lm-TabBar-tab { flex: 0 0 auto; }
</style>"""


class ExplorerView(widgets.VBox):
    """Tabs of views over one trace. Views are built when their tab is first shown (big views at start-up
    hang Voilà) and closed when the trace changes, so a long session does not keep old traces alive.

    With `lm`, the explorer branches and switches heads off (explorer_view.whatif), and keeps the `family` of
    traces it has shown: the first, its branches and runs with heads off, drawn as a tree above the tabs.
    A trace not related to the family (a new generation, a file) starts a new family. `on_trace_added` is a list
    of callables, each called with every trace that joins the family (the first included)."""

    def __init__(self, trace: Trace | None = None, selection: Selection | None = None, lm=None):
        super().__init__()
        self.add_class("explorer-view")
        self.selection = selection if selection is not None else Selection()
        self.lm = lm
        self.trace: Trace | None = None
        self.family: list[Trace] = []
        self.on_trace_added: list[Callable[[Trace], None]] = []
        self.builders = _tabs()
        self.tabs = widgets.Tab(children=[widgets.VBox() for _ in self.builders])
        for i, (title, _) in enumerate(self.builders):
            self.tabs.set_title(i, title)
        self.message = widgets.HTML()
        self.tabs.observe(lambda _: self._build_current(), "selected_index")
        self.tree = BranchTree(on_select=self._on_tree_select, layout=widgets.Layout(display="none"))
        self.whatif = None
        if lm is not None:
            from .whatif.whatif_panel import WhatIfPanel

            self.whatif = WhatIfPanel(lm, self.selection, current=lambda: self.trace, add_trace=self.add_trace)
        style = widgets.HTML(_TAB_STYLE, layout=widgets.Layout(display="none"))
        self.children = [style, self.message, self.tree, *([self.whatif] if self.whatif else []), self.tabs]
        if trace is not None:
            self.set_trace(trace)

    def set_trace(self, trace: Trace, step: int | None = None) -> None:
        """Show another trace: close the old views and build the open tab anew, at `step` (default 0). A trace
        of the family stays in it, a branch of one joins it, any other starts a new family."""
        new_family = False
        if not any(t is trace for t in self.family):
            ids = {t.id for t in self.family}
            if trace.parent_id is None or trace.parent_id not in ids:
                self.family, new_family = [], True  # the old family's traces are let go
            self._join(trace)
        self._show(trace, step, new_family)

    def _show(self, trace: Trace, step: int | None, new_family: bool) -> None:
        """Draw `trace` of the family at `step`; a new family starts with every head on."""
        for box in self.tabs.children:
            children, box.children = box.children, ()
            for child in children:
                _close_tree(child)
        self.trace = trace
        with self.selection.hold_trait_notifications():
            self.selection.layer = min(self.selection.layer, trace.n_layers - 1)
            if self.selection.head is not None:
                self.selection.head = min(self.selection.head, trace.n_heads - 1)
            self.selection.token = None
            self.selection.step = min(max(step or 0, 0), max(trace.n_generated - 1, 0))
        self._build_current()
        self._show_tree()
        if self.whatif is not None:
            self.whatif.trace_changed(new_family)

    def add_trace(self, trace: Trace, show: bool = True) -> None:
        """Add `trace` to the family (a branch under its parent, a run with heads off beside the first) and, with
        `show`, show it: a branch at the step where it diverges."""
        if not any(t is trace for t in self.family):
            self._join(trace)
        if show:
            self.set_trace(trace, step=trace.branch_step)
        else:
            self._show_tree()

    def set_family(self, traces: Sequence[Trace], show: Trace | None = None) -> None:
        """Show a family at once (as `explorer.load_traces` gives it back): `show`, or the first trace."""
        if not traces:
            raise ValueError("there are no traces to show")
        self.family = []
        for trace in traces:
            self._join(trace)
        self._show(show if show is not None else traces[0], None, new_family=True)

    def _join(self, trace: Trace) -> None:
        self.family.append(trace)
        for callback in list(self.on_trace_added):
            callback(trace)

    def save_family(self, path: str | os.PathLike) -> None:
        """Write the family (the first trace, its branches, runs with heads off) to one file; load it back with
        `explorer.load_traces(path)` and `ExplorerView.set_family`."""
        save_traces(self.family, path)

    def lens_ready(self, trace: Trace) -> None:
        """`trace` got its logit lens after it was shown (generate's on_capture): the views that show the lens are
        drawn again, the others stay as they are."""
        if trace is not self.trace:
            return
        for i, (_, build) in enumerate(self.builders):
            box = self.tabs.children[i]
            if build in _NEEDS_LENS and box.children:
                children, box.children = box.children, ()
                for child in children:
                    _close_tree(child)
            else:  # a view that shows a part of the lens redraws that part (the stepper's commitment strip)
                for child in box.children:
                    if callable(getattr(child, "lens_ready", None)):
                        child.lens_ready()
        self._build_current()

    def _show_tree(self) -> None:
        self.tree.show(self.family, self.trace)
        self.tree.layout.display = "" if len(self.family) > 1 else "none"

    def _on_tree_select(self, trace: Trace) -> None:
        """A click on a node of the tree: show that trace at the step shown now, so the two can be compared."""
        self.set_trace(trace, step=self.selection.step)

    def branch(self, step: int, token) -> None:
        """Branch the trace shown at `step` with `token` (a token's text, id or Candidate), in the background
        (explorer.whatif.wait() waits for it); the branch joins the family and is shown."""
        if self.whatif is None:
            raise ValueError("branching needs a model: ExplorerView(trace, lm=lm)")
        self.whatif.branch(step, token)

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
        """What a view gets besides the trace and the selection: the head atlas, a way to open the Heatmap tab;
        the stepper, a way to branch when there is a model."""
        if build in (_head_atlas, _attribution):
            return {"open_heatmap": lambda layer, head: self.show_tab("Heatmap")}
        if build is _stepper:
            attributed = self.trace is not None and (self.trace.attribution is not None or self.trace.lens_pending)
            return {"on_branch": self.branch if self.whatif is not None else None,
                    "on_attribution": (lambda: self.show_tab("Attribution")) if attributed else None}
        return {}

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


def show(trace: Trace, selection: Selection | None = None, lm=None) -> ExplorerView:
    """The full explorer for `trace`: step-through, heatmap, all heads, head atlas, logit lens, queries and keys,
    attention math, positions, bertviz; with `lm`, branching and heads off too."""
    return ExplorerView(trace, selection, lm=lm)
