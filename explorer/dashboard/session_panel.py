"""The session in the dashboard's sidebar: its traces (newest first; a click shows one with its family in the
explorer's tree), the shown one described, A and B pickers and Compare, which shows the two side by side in
`compare_box`, in place of the explorer, until Back to the explorer.

Traces join it from the dashboard (generated, loaded: `add`, `add_file`) and from the explorer (branches and runs
with heads off, through `explorer.on_trace_added`); a click in the explorer's own tree is followed too.
"""

from __future__ import annotations

import html
from collections.abc import Callable

import ipywidgets as widgets

from ..trace import Trace
from ..views.explorer_view import ExplorerView
from .session import MAX_BYTES, MAX_TRACES, Session, SessionTrace, describe


# a sidebar widget as wide as the sidebar: 100% would overflow it by ipywidgets' margins and lose its right edge
FULL_WIDTH = "calc(100% - 6px)"


def _size(n: float) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


class SessionPanel(widgets.VBox):
    """The session's list, the shown trace described, A, B and Compare; `compare_box` goes where the explorer
    is. `say(text, error)` is the dashboard's message line; `on_shown(entry)` hears which trace is shown."""

    def __init__(self, explorer: ExplorerView, say: Callable[..., None],
                 on_shown: Callable[[SessionTrace | None], None], max_traces: int = MAX_TRACES,
                 max_bytes: int = MAX_BYTES):
        super().__init__()
        self.add_class("ae-session")
        self.explorer, self.say, self.on_shown = explorer, say, on_shown
        self.session = Session(max_traces, max_bytes)
        self.compare_view = None
        self._quiet = False  # set while the list is redrawn: a redraw is not a click
        self.title = widgets.HTML("<b>Session</b>").add_class("ae-session-title")
        self.list = widgets.Select(options=[], rows=6, layout=widgets.Layout(width=FULL_WIDTH))
        self.list.add_class("ae-session-list")
        self.list.observe(self._clicked, "value")
        self.detail = widgets.HTML().add_class("ae-session-detail")
        self.a = widgets.Dropdown(description="A", layout=widgets.Layout(width=FULL_WIDTH)).add_class("ae-compare-a")
        self.b = widgets.Dropdown(description="B", layout=widgets.Layout(width=FULL_WIDTH)).add_class("ae-compare-b")
        for picker in (self.a, self.b):
            picker.style.description_width = "18px"
        self.compare_button = widgets.Button(description="Compare A and B", icon="columns", disabled=True,
                                             layout=widgets.Layout(width="auto"))
        self.compare_button.add_class("ae-compare-button")
        self.compare_button.on_click(lambda _: self.compare(self.a.value, self.b.value))
        self.children = [self.title, self.list, self.detail, self.a, self.b, self.compare_button]

        self.back_button = widgets.Button(description="Back to the explorer", icon="arrow-left",
                                          layout=widgets.Layout(width="auto", min_width="180px"))
        self.back_button.add_class("ae-back")
        self.back_button.on_click(lambda _: self.show_explorer())
        self.compare_title = widgets.HTML().add_class("ae-compare-title")
        self.compare_box = widgets.VBox(
            [widgets.HBox([self.back_button, self.compare_title], layout=widgets.Layout(align_items="center"))],
            layout=widgets.Layout(display="none"))
        self.compare_box.add_class("ae-compare-box")

        explorer.on_trace_added.append(self._trace_added)
        explorer.tree.observe(lambda _: self.refresh(), "current")  # a click in the explorer's tree too

    # --- traces joining
    def add(self, trace: Trace, source: str, origin: str | None = None) -> str:
        """Add a new trace (generated, loaded) as a family of its own and show it (a trace the session has
        already is shown with its family); return what was let go to make room, as a sentence ('' if nothing)."""
        if self.session.get(trace.id) is not None:  # loaded again: the session's own, with its family
            self.show(trace.id)
            return ""
        before = self.explorer.trace
        dropped = self.session.add(trace, source, family=trace.id, origin=origin, keep=trace)
        self.show_explorer()
        self.explorer.set_trace(trace)
        self.refresh(a=before.id if before is not None else None, b=trace.id)
        return self._dropped(dropped)

    def add_aside(self, trace: Trace, source: str, origin: str | None = None, mark: str = "") -> str:
        """Add a trace that comes to the page by itself (what the teacher shows) as a family of its own, without
        changing what the explorer shows; return what was let go to make room, as a sentence ('' if nothing)."""
        if self.session.get(trace.id) is not None:
            return ""
        dropped = self.session.add(trace, source, family=trace.id, origin=origin, keep=self.explorer.trace,
                                   mark=mark)
        self.refresh()
        return self._dropped(dropped)

    def add_file(self, traces: list[Trace], source: str, origin: str | None = None) -> str:
        """Add the traces of one file as one family (a tree of branches) and show the first; as `add`."""
        traces = traces[: self.session.max_traces]
        dropped = []
        for i, trace in enumerate(traces):
            dropped += self.session.add(trace, source, family=traces[0].id, origin=origin if i == 0 else None,
                                        keep=traces[0])
        self.show_explorer()
        self.explorer.set_family(traces)
        self.refresh(a=traces[0].id, b=traces[1].id if len(traces) > 1 else None)
        return self._dropped(dropped)

    def _trace_added(self, trace: Trace) -> None:
        """A trace joins the explorer's family: a branch or a run with heads off made there joins the session,
        in the family of the traces it joined, and becomes B (A the trace it was made from)."""
        if self.session.get(trace.id) is not None:
            return
        kind = "a branch" if trace.branch_step is not None else "generated with heads off"
        family = next((e.family for t in self.explorer.family if t is not trace and (e := self.session.get(t.id))),
                      trace.id)
        shown = self.explorer.trace
        dropped = self.session.add(trace, f"{kind}, made here", family=family, keep=shown)
        self.refresh(a=shown.id if shown is not None else None, b=trace.id)
        self.say(f"Added to the session: {self.session.get(trace.id).label}." + self._dropped(dropped))

    def _dropped(self, dropped: list[SessionTrace]) -> str:
        if not dropped:
            return ""
        names = ", ".join(f"“{e.label}”" for e in dropped)
        return (f" The session keeps at most {self.session.max_traces} traces and {_size(self.session.max_bytes)}: "
                f"the oldest, {names}, {'was' if len(dropped) == 1 else 'were'} let go.")

    # --- the list
    def refresh(self, a: str | None = None, b: str | None = None) -> None:
        """Redraw the list with the trace shown selected; A and B become `a` and `b` when given and stay as they
        were if still in the session."""
        session, shown = self.session, self.explorer.trace
        current = shown.id if shown is not None else None
        options = [(e.label, e.trace.id) for e in reversed(session.entries)]
        ids = [i for _, i in options]
        entry = session.get(current) if current else None
        self._quiet = True
        try:
            with self.hold_sync():
                old_a, old_b = self.a.value, self.b.value
                self.list.options = self.a.options = self.b.options = options
                self.list.value = current if current in ids else None
                self.a.value = a if a in ids else old_a if old_a in ids else ids[min(1, len(ids) - 1)] if ids else None
                self.b.value = b if b in ids else old_b if old_b in ids else ids[0] if ids else None
                self.compare_button.disabled = len(ids) < 2
                self.detail.value = describe(entry) if entry is not None else ""
                held = sum(t.nbytes for t in session.traces)
                self.title.value = (f"<b>Session</b> <small>{len(ids)} trace{'s' * (len(ids) != 1)}, {_size(held)} "
                                    f"(at most {session.max_traces})</small>")
        finally:
            self._quiet = False
        self.on_shown(entry)

    def _clicked(self, change) -> None:
        if not self._quiet and change["new"] is not None:
            self.show(change["new"])

    def show(self, trace_id: str) -> None:
        """Show a trace of the session with its family in the explorer's tree; a branch at the step where it
        diverges."""
        entry = self.session.get(trace_id)
        if entry is None:
            return
        try:
            self.show_explorer()
            if any(t is entry.trace for t in self.explorer.family):
                self.explorer.set_trace(entry.trace, step=entry.trace.branch_step)
            else:
                self.explorer.set_family(self.session.family(entry.family), show=entry.trace)
                self.explorer.selection.step = entry.trace.branch_step or 0
            self.refresh()
            self.say(f"Showing {entry.label}.")
        except Exception as e:  # the list must never take the page down
            self.say(f"{entry.label} could not be shown: {type(e).__name__}: {e}", error=True)

    # --- compare
    def compare(self, a_id: str | None, b_id: str | None) -> None:
        """Show traces `a_id` and `b_id` side by side in place of the explorer (which stays as it is, behind
        Back to the explorer), for the layer and head selected in the explorer."""
        a, b = self.session.get(a_id or ""), self.session.get(b_id or "")
        if a is None or b is None:
            self.say("Pick two traces of the session as A and B.", error=True)
            return
        if a is b:
            self.say("A and B are the same trace: pick two different ones.", error=True)
            return
        try:
            from ..views.whatif.compare_view import compare

            sel = self.explorer.selection
            view = compare(a.trace, b.trace, layer=sel.layer, head=sel.head)
        except Exception as e:  # two traces from anywhere: whatever fails, the page says so and keeps its views
            self.say(f"These two traces could not be compared: {type(e).__name__}: {e}", error=True)
            return
        self._close_compare()
        self.compare_view = view
        self.compare_title.value = f"<b>A</b> {html.escape(a.label)} &nbsp; <b>B</b> {html.escape(b.label)}"
        self.compare_box.children = [*self.compare_box.children[:1], view]
        self.explorer.layout.display = "none"
        self.compare_box.layout.display = ""
        self.say(f"Comparing A, {a.label}, with B, {b.label}.")

    def _close_compare(self) -> None:
        if self.compare_view is not None:
            self.compare_box.children = self.compare_box.children[:1]
            self.compare_view.close()
            self.compare_view = None

    def show_explorer(self) -> None:
        """The explorer again in place of a comparison (which is closed: its arrays go)."""
        self._close_compare()
        self.compare_box.layout.display = "none"
        self.explorer.layout.display = ""
