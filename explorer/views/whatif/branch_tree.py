"""The tree of a family of traces: the trace first shown, its branches (and theirs), and runs with heads off.

    tree = BranchTree(on_select=lambda trace: ...)
    tree.show(family, current)

A node is a trace. A branch hangs under its parent, its edge labelled by the step where it diverges, its token
and that token's probability against the parent's: `step 3: “␣Rome” 12% vs “␣Paris” 80%`. A run with heads
switched off has no parent: it sits beside the first trace, labelled with its heads. Only labels and ids go to
the browser; a click sends the node's id back and `on_select` gets its trace.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anywidget
import traitlets

from ...trace import Trace
from .. import frontend
from ..frontend.tokens_html import visible

SNIPPET_CHARS = 48  # of the text each node shows from where it diverges


def percent(p: float) -> str:
    """A probability as a short percentage: 12%, 3.4%, 0.012%."""
    if p >= 0.1:
        return f"{p:.0%}"
    if p >= 0.01:
        return f"{p:.1%}"
    return f"{p * 100:.2g}%"


def heads_label(ablate: Sequence[Sequence[int]]) -> str:
    """Heads as layer.head labels: [(3, 1), (5, 2)] -> 'L3.H1, L5.H2'."""
    return ", ".join(f"L{layer}.H{head}" for layer, head in sorted(tuple(pair) for pair in ablate))


def heads_off(trace: Trace) -> list[tuple[int, int]]:
    """The (layer, head) pairs `trace` was generated with switched off."""
    return sorted(tuple(pair) for pair in trace.settings.get("ablate", []))


def _snippet(trace: Trace, step: int) -> str:
    """The generated text from `step` on, short, whitespace made readable."""
    if not trace.steps:
        text = "".join(trace.tokens)
    else:
        text = "".join(s.token for s in trace.steps[step:])
    text = text.replace("\n", "↵ ")
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"


def tree_nodes(family: Sequence[Trace]) -> list[dict]:
    """The nodes of `family` in the order drawn (each after its parent, depth-first): id, parent id (None at the
    top), depth, the step of divergence and its token and probability against the parent's, heads off, a label
    and a snippet of the text. A trace whose parent is not in the family sits at the top."""
    ids = {t.id for t in family}
    parent_of = {t.id: (t.parent_id if t.parent_id in ids else None) for t in family}
    children: dict[str | None, list[Trace]] = {}
    for t in family:
        children.setdefault(parent_of[t.id], []).append(t)
    by_id = {t.id: t for t in family}
    nodes: list[dict] = []

    def visit(trace: Trace, depth: int) -> None:
        parent = by_id.get(parent_of[trace.id])
        nodes.append(_node(trace, parent, depth, first=not nodes))
        for child in children.get(trace.id, []):
            visit(child, depth + 1)

    for root in children.get(None, []):
        visit(root, 0)
    return nodes


def _node(trace: Trace, parent: Trace | None, depth: int, first: bool) -> dict:
    off = heads_off(trace)
    node = {"id": trace.id, "parent": parent.id if parent is not None else None, "depth": depth, "step": None,
            "token": None, "prob": None, "was_token": None, "was_prob": None, "heads_off": [list(p) for p in off]}
    step = trace.branch_step
    if parent is not None and step is not None and step < len(trace.steps) and step < len(parent.steps):
        s, was = trace.steps[step], parent.steps[step]
        node |= {"step": step, "token": s.token, "prob": s.prob, "was_token": was.token, "was_prob": was.prob}
        label = (f"step {step}: “{visible(s.token)}” {percent(s.prob)} "
                 f"vs “{visible(was.token)}” {percent(was.prob)}")
        if off != heads_off(parent):
            label += f" · heads off {heads_label(off)}" if off else " · all heads on"
        snippet_from = step
    else:
        label = f"heads off {heads_label(off)}" if off else ("original" if first else "another trace")
        snippet_from = 0
    node["label"] = label
    node["snippet"] = _snippet(trace, snippet_from)
    return node


class BranchTree(anywidget.AnyWidget):
    """A compact tree of a family of traces, the current one highlighted; a click on a node calls on_select."""

    _esm = frontend.module("whatif/branch_tree.js")
    _css = frontend.stylesheet("whatif/branch_tree.css")
    nodes = traitlets.List().tag(sync=True)  # tree_nodes(family)
    current = traitlets.Unicode("").tag(sync=True)  # the id of the trace shown

    def __init__(self, on_select: Callable[[Trace], None] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.on_select = on_select
        self._family: dict[str, Trace] = {}
        self.on_msg(self._on_msg)

    def show(self, family: Sequence[Trace], current: Trace | None) -> None:
        """Draw `family` with `current` highlighted."""
        self._family = {t.id: t for t in family}
        with self.hold_sync():
            self.nodes = tree_nodes(family)
            self.current = current.id if current is not None else ""

    def select(self, trace_id: str) -> None:
        """What a click on a node does: on_select(its trace)."""
        trace = self._family.get(trace_id)
        if trace is not None and self.on_select is not None:
            self.on_select(trace)

    def _on_msg(self, _widget, content, _buffers) -> None:
        if isinstance(content, dict) and content.get("kind") == "select" and isinstance(content.get("id"), str):
            self.select(content["id"])

    def close(self) -> None:
        self._family = {}
        super().close()


__all__ = ["BranchTree", "heads_label", "percent", "tree_nodes"]
