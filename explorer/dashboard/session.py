"""The traces of one dashboard page: every prompt generated, branch, run with heads off and file loaded, kept in
a bounded list (a class shares the server's memory), each with a short label. The sidebar that shows them is
session_panel.py.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from ..trace import Trace
from ..views.whatif.branch_tree import heads_label, heads_off
from ..views.frontend.tokens_html import visible

MAX_TRACES = 20
MAX_BYTES = 1_000_000_000  # of trace data; a class gets less (Dashboard: CLASS_SESSION_BYTES)


@dataclass
class SessionTrace:
    """A trace of the session, its label in the list, where it came from, and its family: the traces the
    explorer shows together in its tree (a prompt's first trace, its branches and runs with heads off, or the
    traces of one file), named by the id of the first of them."""

    trace: Trace
    label: str
    source: str
    family: str
    words: str  # the first words of its prompt or its file's name, which its branches' labels repeat


def _cut(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1].rstrip() + "…"


def first_words(text: str, words: int = 5, chars: int = 26) -> str:
    """The first few words of a prompt, on one line, short: 'The cat sat on the …'."""
    all_words = text.split()
    out = " ".join(all_words[:words])
    if len(all_words) > words and len(out) < chars:
        out += " …"
    return _cut(out, chars) if out else "(empty prompt)"


def prompt_of(trace: Trace) -> str:
    """What the user typed, as well as a trace tells it: a chat template's markup and system turn are left out."""
    text = trace.prompt_text
    if trace.settings.get("chat"):
        text = re.sub(r"<\|[^|<>]{1,40}\|>|<s>|</s>", "\n", text)
        turns = re.split(r"(?m)^\s*user\s*$", text)
        text = re.sub(r"(?m)^\s*assistant\s*$", "", turns[-1])
    return text


class Session:
    """The session's traces, oldest first: at most `max_traces`, and at most `max_bytes` of trace data (the
    newest trace is always kept). `add` returns the entries it let go to make room."""

    def __init__(self, max_traces: int = MAX_TRACES, max_bytes: int = MAX_BYTES):
        self.max_traces, self.max_bytes = max_traces, max_bytes
        self.entries: list[SessionTrace] = []
        self.added = 0  # traces added so far: each label's number

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def traces(self) -> list[Trace]:
        return [e.trace for e in self.entries]

    def get(self, trace_id: str) -> SessionTrace | None:
        return next((e for e in self.entries if e.trace.id == trace_id), None)

    def family(self, key: str) -> list[Trace]:
        """The session's traces of the family `key`, oldest first."""
        return [e.trace for e in self.entries if e.family == key]

    def add(self, trace: Trace, source: str, family: str, origin: str | None = None,
            keep: Trace | None = None, mark: str = "") -> list[SessionTrace]:
        """Add `trace` (nothing happens if it is in already) labelled by `origin` (the prompt typed, a file's
        name) or, for a branch or a run with heads off, by its family's first label, after `mark` ("teacher · ");
        then let the oldest go while there are too many or they are too big, except `trace` and `keep` (the
        trace shown)."""
        if self.get(trace.id) is not None:
            return []
        self.added += 1
        words = self._words(trace, family, origin)
        entry = SessionTrace(trace, f"{self.added}. {mark}{_label(trace, words)}", source, family, words)
        self.entries.append(entry)
        dropped = []
        while len(self.entries) > self.max_traces or (
                len(self.entries) > 1 and sum(e.trace.nbytes for e in self.entries) > self.max_bytes):
            oldest = next((e for e in self.entries if e.trace is not trace and e.trace is not keep), None)
            if oldest is None:
                break
            self.entries.remove(oldest)
            dropped.append(oldest)
        for gone in dropped:  # a branch names its parent by id from now on, so the parent's memory can go
            for e in self.entries:
                if e.trace.parent is gone.trace:
                    e.trace.parent = None
        return dropped

    def _words(self, trace: Trace, family: str, origin: str | None) -> str:
        """`origin`'s first words; else a branch's parent's, a run with heads off its family's first, or the
        trace's own prompt's."""
        if origin is not None:
            return first_words(origin)
        parent = self.get(trace.parent_id) if trace.parent_id is not None else None
        if parent is None and heads_off(trace):
            parent = next((e for e in self.entries if e.family == family), None)
        return parent.words if parent is not None else first_words(prompt_of(trace))


def _label(trace: Trace, words: str) -> str:
    """`words`, and for a branch its step and token, for a run with heads off its heads: one short line."""
    step = trace.branch_step
    if step is not None and step < len(trace.steps):
        return f"{first_words(words, 3, 18)} · branch at step {step}: “{_cut(visible(trace.steps[step].token), 12)}”"
    off = heads_off(trace)
    if off:
        return f"{first_words(words, 3, 18)} · heads off {_cut(heads_label(off), 16)}"
    return words


def _one_line(text: str, chars: int) -> str:
    return _cut(text.strip().replace("\n", "↵ "), chars)


def describe(entry: SessionTrace) -> str:
    """The trace of `entry` in a sentence (HTML): its text, model, sizes, where it came from."""
    t = entry.trace
    wrote = f" → “{html.escape(_one_line(t.generated_text, 60))}”" if t.n_generated else ""
    return (f"<b>{html.escape(entry.label)}</b><br>“{html.escape(_one_line(prompt_of(t), 80))}”{wrote}"
            f"<br><small>{html.escape(t.model.name or 'an unnamed model')}, {t.n_tokens} tokens "
            f"({t.n_generated} generated), {t.nbytes / 1e6:.1f} MB; {html.escape(entry.source)}</small>")
