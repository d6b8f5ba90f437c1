"""The head atlas: every head of every layer in one table of its seven head scores, to sort, filter and open.

The scores (explorer/analysis.py) take ~7 s at 2,048 tokens and 30 layers, so they are computed once, in a thread
started when the view is built (the tab is first shown), with a progress bar; the table arrives when they are done.
An atlas over many texts (`explorer.head_atlas(lm, texts)`, a HeadAtlasOverTexts) comes with its scores: the table
shows their means, each with its standard deviation over the texts.
The browser sends a query such as `induction >= 0.3 and layer < 10`; it is parsed here, never evaluated as Python:

    query      := or ;  or := and ("or" and)* ;  and := not ("and" not)* ;  not := "not" not | "(" or ")" | comparison
    comparison := operand (op operand)+     operand := column | number     op := < <= > >= = == !=

A chain `0.2 < self <= 0.5` means both comparisons, as in Python. A comparison with NaN (a score with no rows) is
false. Clicking a row sets the shared selection's layer and head and calls `on_open(layer, head)`.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
import threading
from collections.abc import Callable

import anywidget
import numpy as np
import traitlets

from ... import analysis
from ...atlas import HeadAtlasOverTexts
from .. import frontend
from ..selection import FollowsSelection, OpensHeads, Selection

COLUMNS = ("layer", "head", *analysis.SCORES)
SCORE_LABELS = {
    "previous_token": "mean weight on the token just before",
    "first_token": "mean weight on the first token (the attention sink)",
    "self": "mean weight on the token itself",
    "duplicate_token": "mean weight on earlier copies of the same token (rows whose token occurred before)",
    "induction": "mean weight on the token after an earlier copy of the current token (A B … A → B)",
    "entropy": "mean entropy of a row, in nats (low: focused; high: spread out)",
    "distance": "how far back the head looks, in tokens: mean i − j weighted by attention, the first token apart "
                "(1: previous-token heads; large: long-range heads)",
}
_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "=": operator.eq,
        "==": operator.eq, "!=": operator.ne}
_TOKEN = re.compile(r"""\s*(?:
    (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<word>[A-Za-z_][A-Za-z_0-9]*)
  | (?P<op><=|>=|==|!=|<|>|=)
  | (?P<paren>[()])
)""", re.VERBOSE)
_KEYWORDS = ("and", "or", "not")


class QueryError(ValueError):
    """A query the atlas cannot read; the message says what is wrong and where."""


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, text, position) of each token of a query; kind is number, word, keyword, op or paren."""
    out, pos, end = [], 0, len(text.rstrip())
    while pos < end:
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            at = len(text) - len(text[pos:].lstrip())
            raise QueryError(f"unexpected {text[at]!r} at character {at + 1}")
        kind, start = m.lastgroup, m.start(m.lastgroup)
        value = m.group(kind)
        if kind == "word" and value.lower() in _KEYWORDS:
            kind, value = "keyword", value.lower()
        out.append((kind, value, start))
        pos = m.end()
    return out


class _Parser:
    """Recursive descent over a query's tokens, building a function of the columns that returns a bool mask."""

    def __init__(self, text: str):
        self.tokens, self.i = _tokens(text), 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str, int]:
        token = self.peek()
        if token is None:
            raise QueryError("the query ends too early: a condition looks like `induction > 0.3`")
        self.i += 1
        return token

    def parse(self) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        condition = self.or_()
        if (token := self.peek()) is not None:
            raise QueryError(f"unexpected {token[1]!r} at character {token[2] + 1}: join conditions with and / or")
        return condition

    def or_(self):
        parts = [self.and_()]
        while (t := self.peek()) is not None and t[:2] == ("keyword", "or"):
            self.i += 1
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else lambda cols: np.logical_or.reduce([p(cols) for p in parts])

    def and_(self):
        parts = [self.not_()]
        while (t := self.peek()) is not None and t[:2] == ("keyword", "and"):
            self.i += 1
            parts.append(self.not_())
        return parts[0] if len(parts) == 1 else lambda cols: np.logical_and.reduce([p(cols) for p in parts])

    def not_(self):
        t = self.peek()
        if t is not None and t[:2] == ("keyword", "not"):
            self.i += 1
            inner = self.not_()
            return lambda cols: ~inner(cols)
        if t is not None and t[1] == "(":
            self.i += 1
            inner = self.or_()
            close = self.peek()
            if close is None or close[1] != ")":
                where = "the query ends" if close is None else f"{close[1]!r} at character {close[2] + 1}"
                raise QueryError(f"a '(' is not closed: {where} instead of ')'")
            self.i += 1
            return inner
        return self.comparison()

    def operand(self):
        kind, text, pos = self.take()
        if kind == "number":
            value = float(text)
            return text, lambda cols: value
        if kind == "word":
            name = _column(text, pos)
            return name, lambda cols: cols[name]
        raise QueryError(f"expected a column or a number at character {pos + 1}, not {text!r}")

    def comparison(self):
        first_text, left = self.operand()
        tests = []
        while (t := self.peek()) is not None and t[0] == "op":
            self.i += 1
            _, right = self.operand()
            tests.append((left, _OPS[t[1]], right))
            left = right
        if not tests:
            raise QueryError(f"{first_text!r} is not a condition: compare it, e.g. `{first_text} > 0.3`")

        def compare(cols):
            n = len(cols["layer"])
            masks = []
            for a, op, b in tests:
                with np.errstate(invalid="ignore"):
                    masks.append(np.broadcast_to(op(a(cols), b(cols)), (n,)))
            return np.logical_and.reduce(masks)

        return compare


def _column(word: str, pos: int) -> str:
    name = word.lower()
    if name in COLUMNS:
        return name
    close = difflib.get_close_matches(name, COLUMNS, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise QueryError(f"unknown column {word!r} at character {pos + 1}{hint}: columns are {', '.join(COLUMNS)}")


def parse_query(text: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """A query as a function of the columns (name -> array, one entry a head) that gives the heads it keeps.
    An empty query keeps every head. QueryError when the text is not a query."""
    if not text.strip():
        return lambda cols: np.ones(len(cols["layer"]), dtype=bool)
    return _Parser(text).parse()


def head_columns(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The scores [layers, heads] flattened to one entry a head (layer-major), with the layer and head numbers."""
    n_layers, n_heads = next(iter(scores.values())).shape
    layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
    return {"layer": layer, "head": head, **{name: scores[name].astype(float).ravel() for name in analysis.SCORES}}


def select_heads(columns: dict[str, np.ndarray], query: str, sort_by: str = "layer",
                 descending: bool = False) -> np.ndarray:
    """The heads a query keeps (indices into `columns`), sorted by `sort_by`; heads without that score (NaN) last,
    ties by layer then head."""
    if sort_by not in COLUMNS:
        raise QueryError(f"cannot sort by {sort_by!r}: columns are {', '.join(COLUMNS)}")
    kept = np.flatnonzero(parse_query(query)(columns))
    key = columns[sort_by][kept].astype(float)
    key = -key if descending else key
    key[np.isnan(key)] = np.inf
    return kept[np.argsort(key, kind="stable")]  # `kept` is in layer, head order: stable keeps it for ties


class HeadAtlasView(OpensHeads, FollowsSelection, anywidget.AnyWidget):
    """A table of every head's scores: sort by a column, filter by a query, click a row to open the head."""

    _esm = frontend.module("meaning/head_atlas.js")
    _css = frontend.stylesheet("meaning/head_atlas.css")

    columns = traitlets.List(traitlets.Unicode(), list(COLUMNS)).tag(sync=True)
    labels = traitlets.Dict(SCORE_LABELS).tag(sync=True)
    n_layers = traitlets.Int(0).tag(sync=True)
    n_heads = traitlets.Int(0).tag(sync=True)
    n_tokens = traitlets.Int(0).tag(sync=True)
    progress = traitlets.Int(0).tag(sync=True)  # layers done
    ready = traitlets.Bool(False).tag(sync=True)  # the scores are in `table`
    failure = traitlets.Unicode("").tag(sync=True)  # why the scores could not be computed
    table = traitlets.List().tag(sync=True)  # a row a head, layer-major: [layer, head, *scores] (None for NaN)
    n_texts = traitlets.Int(0).tag(sync=True)  # an atlas over this many texts; 0: the scores of one trace
    source = traitlets.Unicode("").tag(sync=True)  # what the texts were, in words
    spread = traitlets.List().tag(sync=True)  # over texts: a row a head as in `table`, [*standard deviations]
    counts = traitlets.List().tag(sync=True)  # over texts: a row a head, [*how many texts have the score]
    query = traitlets.Unicode("").tag(sync=True)
    sort_by = traitlets.Unicode("layer").tag(sync=True)
    descending = traitlets.Bool(False).tag(sync=True)
    shown = traitlets.List(traitlets.Int()).tag(sync=True)  # rows of `table` the query keeps, in sorted order
    shown_for = traitlets.List([]).tag(sync=True)  # [query, sort_by, descending] that `shown` answers, set with it
    error = traitlets.Unicode("").tag(sync=True)  # why the query was refused ("" when it was read)
    layer = traitlets.Int(0).tag(sync=True)  # the selected head, highlighted
    head = traitlets.Int(None, allow_none=True).tag(sync=True)

    def __init__(self, trace, selection: Selection | None = None, on_open: Callable[[int, int], None] | None = None,
                 in_background: bool = True, **kwargs):
        """`trace`: a Trace (its scores are computed here), or a HeadAtlasOverTexts (scores over many texts)."""
        over_texts = trace if isinstance(trace, HeadAtlasOverTexts) else None
        self.trace = None if over_texts else trace
        self.over_texts = over_texts
        self.selection = selection if selection is not None else Selection()
        self.on_open = on_open
        self.scores: dict[str, np.ndarray] | None = None  # name -> [layers, heads], once computed
        self._columns: dict[str, np.ndarray] | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._worker: threading.Thread | None = None
        if over_texts:
            kwargs |= {"n_texts": over_texts.n_texts, "source": over_texts.source, "progress": over_texts.n_layers,
                       "n_tokens": sum(over_texts.n_tokens)}
        else:
            kwargs |= {"n_tokens": trace.n_tokens}
        super().__init__(n_layers=trace.n_layers, n_heads=trace.n_heads, **kwargs)
        self._follow_selection()
        self.follow(self.selection, self._follow_selection, ["layer", "head"])
        self.observe(self._apply, ["query", "sort_by", "descending"])
        self.on_msg(self._on_msg)
        if over_texts:
            self._show(over_texts.mean, over_texts.std, over_texts.n)
        elif in_background:
            self._worker = threading.Thread(target=self._compute, name="head-atlas-scores", daemon=True)
            self._worker.start()
        else:
            self._compute()

    # --- the scores, computed once
    def _compute(self) -> None:
        def step(layer: int) -> None:
            if self._closed.is_set():
                raise _Closed
            self.progress = layer + 1

        try:
            scores = analysis.head_scores(self.trace, on_layer=step)
        except _Closed:
            return
        except Exception as e:  # shown in the widget: a thread's exception would otherwise go unseen
            self.failure = f"the head scores could not be computed: {type(e).__name__}: {e}"
            return
        if not self._closed.is_set():
            self._show(scores)

    def _show(self, scores: dict[str, np.ndarray], spread: dict[str, np.ndarray] | None = None,
              counts: dict[str, np.ndarray] | None = None) -> None:
        """Put the scores in the table (with their spread and counts over texts, when given) and show it."""
        with self._lock:
            self.scores, self._columns = scores, head_columns(scores)
        with self.hold_sync():
            self.table = [[int(layer), int(head), *map(_number, values)]
                          for layer, head, *values in zip(*(self._columns[c] for c in COLUMNS))]
            if spread is not None and counts is not None:
                self.spread = [list(map(_number, row)) for row in _per_head(spread)]
                self.counts = [[int(n) for n in row] for row in _per_head(counts)]
            self._apply()
            self.ready = True

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the scores are computed (or failed)."""
        if self._worker is not None:
            self._worker.join(timeout)

    # --- the query and the order
    def _apply(self, _change=None) -> None:
        """Read the query; on success show the heads it keeps in order, else say why and keep the last table."""
        with self._lock:
            try:
                if self._columns is None:  # no scores yet: still say at once whether the query reads
                    parse_query(self.query)
                    order = None
                else:
                    order = select_heads(self._columns, self.query, self.sort_by, self.descending)
            except QueryError as e:
                self.error = str(e)
                return
            self.error = ""
            if order is not None:
                with self.hold_sync():
                    self.shown = order.tolist()
                    self.shown_for = [self.query, self.sort_by, self.descending]

    # --- the selection, and opening a head
    def _follow_selection(self, _change=None) -> None:
        with self.hold_trait_notifications():
            self.layer, self.head = self.selection.layer, self.selection.head

    def _on_msg(self, _widget, content, _buffers) -> None:
        self._open_asked(content)

    def close(self) -> None:
        self._closed.set()  # a computation still running stops at its next layer
        super().close()

    def __repr__(self) -> str:
        state = "ready" if self.ready else f"{self.progress} of {self.n_layers} layers computed"
        if self.n_texts:
            state = f"over {self.n_texts} texts"
        return f"HeadAtlasView({self.n_layers} layers x {self.n_heads} heads, {state}, query={self.query!r})"


def _number(value) -> float | None:
    """A score as JSON: 6 decimals, None for NaN (no row for it)."""
    return None if math.isnan(value) else round(float(value), 6)


def _per_head(arrays: dict[str, np.ndarray]) -> list[list]:
    """Each head's values of every score, layer-major, in the order of analysis.SCORES."""
    return np.stack([arrays[name].astype(float).ravel() for name in analysis.SCORES], 1).tolist()


class _Closed(Exception):
    """Raised inside the score computation of a view closed meanwhile, to stop it."""


def head_atlas(trace, selection: Selection | None = None, on_open: Callable[[int, int], None] | None = None,
               in_background: bool = True) -> HeadAtlasView:
    """Every head's scores in a table to sort, filter (`induction > 0.3 and layer < 10`) and click open.

    `trace` is a Trace, or the scores over many texts of `explorer.head_atlas(lm, texts)` (means, ± their standard
    deviation). A trace's scores are computed in a thread (in_background) or before this returns; on_open(layer,
    head) is called after a click has selected a head.
    """
    return HeadAtlasView(trace, selection=selection, on_open=on_open, in_background=in_background)
