"""Two traces side by side: which of their positions correspond, and how their attention and choices differ.

Torch-free (numpy and difflib), so a viewer kernel compares saved traces with no model. How positions are paired:

- **position**: the same tokenizer and the same prompt (two generations, a branch, two models that share a
  tokenizer): position i of A is position i of B, over the positions both have;
- **token runs**: the same tokenizer, different prompts (a changed word): the longest common runs of token ids
  (difflib's SequenceMatcher, no junk heuristic; a lone token only where it keeps the alignment of the run before
  it), the tokens outside them unmatched;
- **text**: different tokenizers, whose ids mean different things: each token's characters in the joined text,
  the two texts matched by SequenceMatcher, and a token of A paired with the token of B that shares most of its
  matched characters when that token of B shares most of its own with it (mutual best, in order).

`explorer.compare(a, b)` opens the view of two traces (explorer/views/whatif/compare_view.py) aligned by this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import NamedTuple

import numpy as np

from .trace import Step, Trace

METHODS = ("position", "token runs", "text")
BY_TEXT = "by text only: different tokenizers"


class Tokenizers(NamedTuple):
    """Whether two traces' token ids mean the same tokens, and why we think so."""

    same: bool
    why: str


def spellings(trace: Trace, pieces: bool = True) -> dict[int, str]:
    """Each token id of the trace and how it is spelled: its tokenizer piece (when asked and the trace has them),
    else its decoded text."""
    words = trace.pieces if pieces and trace.pieces is not None else trace.tokens
    return dict(zip(trace.token_ids, words))


def shared_tokenizer(a: Trace, b: Trace) -> Tokenizers:
    """Whether a and b were tokenized alike, read from what the traces hold.

    The rule: the vocabulary sizes, where both are known, are equal; every id both traces use is spelled the same
    in both (pieces when both have them, else the decoded text); and there is positive evidence: the same model
    name, or known equal vocabulary sizes and at least one id in common. Anything else counts as different
    tokenizers. An id match is then a text match, so pairing by ids never pairs tokens that read differently.
    """
    va, vb = a.model.vocab_size, b.model.vocab_size
    if va and vb and va != vb:
        return Tokenizers(False, f"vocabularies of {va} and {vb} tokens")
    pieces = a.pieces is not None and b.pieces is not None
    sa, sb = spellings(a, pieces), spellings(b, pieces)
    common = sorted(set(sa) & set(sb))
    for i in common:
        if sa[i] != sb[i]:
            return Tokenizers(False, f"token id {i} is {sa[i]!r} in A and {sb[i]!r} in B")
    if a.model.name and a.model.name == b.model.name:
        return Tokenizers(True, f"the same model, {a.model.name}")
    if va and vb and common:
        return Tokenizers(True, f"different models with one vocabulary ({va} tokens; the {len(common)} ids both use "
                                "are spelled alike)")
    return Tokenizers(False, "nothing shows that their ids mean the same tokens")


@dataclass(frozen=True)
class Alignment:
    """Which positions of A and B correspond: `pairs` of (position in A, position in B), both increasing."""

    pairs: list[tuple[int, int]]
    method: str  # "position", "token runs" or "text"
    sentence: str  # how the pairs were found, for a reader
    tokenizers: Tokenizers
    n_a: int  # tokens in A
    n_b: int

    @property
    def matched_a(self) -> list[int]:
        return [i for i, _ in self.pairs]

    @property
    def matched_b(self) -> list[int]:
        return [j for _, j in self.pairs]

    @property
    def unmatched_a(self) -> list[int]:
        """Positions of A paired with nothing in B."""
        return sorted(set(range(self.n_a)) - set(self.matched_a))

    @property
    def unmatched_b(self) -> list[int]:
        return sorted(set(range(self.n_b)) - set(self.matched_b))


def align(a: Trace, b: Trace) -> Alignment:
    """Pair the positions of a and b: by position, by the longest common token runs, or by text (module docstring)."""
    tokenizers = shared_tokenizer(a, b)
    if not tokenizers.same:
        return _by_text(a, b, tokenizers)
    if a.token_ids[: a.n_prompt] == b.token_ids[: b.n_prompt]:
        n = min(a.n_tokens, b.n_tokens)
        longer = "" if a.n_tokens == b.n_tokens else (
            f"; the last {abs(a.n_tokens - b.n_tokens)} positions of {'A' if a.n_tokens > b.n_tokens else 'B'}"
            " have no counterpart")
        sentence = (f"Same tokenizer ({tokenizers.why}) and the same prompt: position by position, "
                    f"{n} positions{longer}.")
        return Alignment([(i, i) for i in range(n)], "position", sentence, tokenizers, a.n_tokens, b.n_tokens)
    blocks = token_runs(a.token_ids, b.token_ids)
    pairs = [(i + k, j + k) for i, j, size in blocks for k in range(size)]
    runs = f"{len(blocks)} run{'' if len(blocks) == 1 else 's'}"
    sentence = (f"Same tokenizer ({tokenizers.why}), different prompts: by the longest common runs of token ids, "
                f"{len(pairs)} of {a.n_tokens} (A) and {b.n_tokens} (B) tokens matched in {runs}; "
                f"{a.n_tokens - len(pairs)} of A and {b.n_tokens - len(pairs)} of B unmatched.")
    return Alignment(pairs, "token runs", sentence, tokenizers, a.n_tokens, b.n_tokens)


def token_runs(ids_a: list[int], ids_b: list[int]) -> list[tuple[int, int, int]]:
    """The longest common runs of two id sequences as (start in A, start in B, length), in order.

    SequenceMatcher's blocks, less the lone tokens that merely recur: a run of one token is kept only where as
    many tokens of A as of B lie between it and the run before (a word swapped for a word, or the first token),
    so a common token such as " the" met at different places in two continuations is not paired.
    """
    matcher = SequenceMatcher(None, ids_a, ids_b, autojunk=False)
    runs, end_a, end_b = [], 0, 0
    for m in matcher.get_matching_blocks():
        if m.size > 1 or (m.size == 1 and m.a - end_a == m.b - end_b):
            runs.append((m.a, m.b, m.size))
            end_a, end_b = m.a + m.size, m.b + m.size
    return runs


def _owners(tokens: list[str]) -> np.ndarray:
    """For each character of "".join(tokens), the position of the token it belongs to."""
    return np.repeat(np.arange(len(tokens)), [len(t) for t in tokens])


def text_pairs(tokens_a: list[str], tokens_b: list[str]) -> list[tuple[int, int]]:
    """Tokens of two tokenizations paired by text: (i, j) when token j holds most of token i's matched characters
    and token i most of token j's (the first such on ties), kept only in increasing order."""
    owner_a, owner_b = _owners(tokens_a), _owners(tokens_b)
    matcher = SequenceMatcher(None, "".join(tokens_a), "".join(tokens_b), autojunk=False)
    shared: dict[tuple[int, int], int] = {}
    for m in matcher.get_matching_blocks():
        if not m.size:
            continue
        both = np.stack([owner_a[m.a : m.a + m.size], owner_b[m.b : m.b + m.size]], axis=1)
        keys, counts = np.unique(both, axis=0, return_counts=True)
        for (i, j), c in zip(keys.tolist(), counts.tolist()):
            shared[(i, j)] = shared.get((i, j), 0) + c
    best_a: dict[int, tuple[int, int]] = {}  # i -> (count, j), the largest count, the first j on ties
    best_b: dict[int, tuple[int, int]] = {}
    for (i, j), c in sorted(shared.items()):
        if c > best_a.get(i, (0, -1))[0]:
            best_a[i] = (c, j)
        if c > best_b.get(j, (0, -1))[0]:
            best_b[j] = (c, i)
    pairs, last_j = [], -1
    for i, (_, j) in sorted(best_a.items()):
        if best_b[j][1] == i and j > last_j:
            pairs.append((i, j))
            last_j = j
    return pairs


def _by_text(a: Trace, b: Trace, tokenizers: Tokenizers) -> Alignment:
    pairs = text_pairs(a.tokens, b.tokens)
    sentence = (f"{BY_TEXT[0].upper()}{BY_TEXT[1:]} ({tokenizers.why}): tokens paired where their characters "
                f"match in the two texts, {len(pairs)} pairs from {a.n_tokens} (A) and {b.n_tokens} (B) tokens; "
                "paired tokens may differ in length.")
    return Alignment(pairs, "text", sentence, tokenizers, a.n_tokens, b.n_tokens)


class HeadsCompared(NamedTuple):
    """Which layer and head of each trace are compared (head None: the mean of the layer's heads), and a note
    when the two models differ in shape."""

    layer_a: int
    head_a: int | None
    layer_b: int
    head_b: int | None
    note: str


def counterpart(a: Trace, b: Trace, layer: int, head: int | None) -> HeadsCompared:
    """The layer and head of b to set against `layer`/`head` of a: the same ones when the models have as many
    layers and heads; otherwise the mean of the heads of the layer at the same relative depth."""
    a._check(layer, head)
    if (a.n_layers, a.n_heads) == (b.n_layers, b.n_heads):
        return HeadsCompared(layer, head, layer, head, "")
    depth = layer / (a.n_layers - 1) if a.n_layers > 1 else 0.0
    layer_b = int(round(depth * (b.n_layers - 1)))
    note = (f"The models differ in shape (A: {a.n_layers} layers × {a.n_heads} heads, B: {b.n_layers} × "
            f"{b.n_heads}): comparing the mean of the heads of A's layer {layer} with B's layer {layer_b}, "
            "at the same relative depth.")
    return HeadsCompared(layer, None, layer_b, None, note)


class Difference(NamedTuple):
    """Attention of A and of B over the matched positions (rows: queries, columns: keys) and A − B."""

    a: np.ndarray  # float32 [m, m]
    b: np.ndarray
    delta: np.ndarray


def _matched_block(trace: Trace, layer: int, head: int | None, positions: list[int], kind: str) -> np.ndarray:
    if not positions:
        return np.zeros((0, 0), dtype=np.float32)
    idx = np.asarray(positions)
    rows = trace.attention_rows(layer, head, int(idx[0]), int(idx[-1]) + 1, kind=kind)
    return np.ascontiguousarray(rows[idx - idx[0]][:, idx])


def difference(a: Trace, b: Trace, alignment: Alignment, layer: int, head: int | None = None,
               kind: str = "raw") -> Difference:
    """A's and B's attention with rows and columns restricted to the matched pairs, and their difference A − B.

    Layer and head are A's; B's are the same, or its counterpart when the models differ in shape (`counterpart`).
    Weights on unmatched keys are left out, so a row need not sum to 1.
    """
    heads = counterpart(a, b, layer, head)
    sub_a = _matched_block(a, heads.layer_a, heads.head_a, alignment.matched_a, kind)
    sub_b = _matched_block(b, heads.layer_b, heads.head_b, alignment.matched_b, kind)
    return Difference(sub_a, sub_b, sub_a - sub_b)


class StepPair(NamedTuple):
    """Generated step `index` of A and of B (None where that trace has no such step), and whether they chose
    different tokens."""

    index: int
    a: Step | None
    b: Step | None
    differs: bool


def step_pairs(a: Trace, b: Trace, alignment: Alignment) -> list[StepPair]:
    """Step k of A with step k of B, for every k either has. Chosen tokens differ by id when the tokenizer is the
    same, by text when it is not; a step only one trace has is not counted as a different choice."""
    by_id = alignment.tokenizers.same
    out = []
    for k in range(max(a.n_generated, b.n_generated)):
        sa = a.steps[k] if k < a.n_generated else None
        sb = b.steps[k] if k < b.n_generated else None
        differs = sa is not None and sb is not None and (
            sa.token_id != sb.token_id if by_id else sa.token != sb.token)
        out.append(StepPair(k, sa, sb, differs))
    return out
