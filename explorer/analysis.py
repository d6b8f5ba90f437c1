"""What the heads do, measured on a trace: head scores and attention rollout, from the attention a trace holds.

Torch-free and model-free, so a saved trace gets them too. Each layer is computed in chunks of rows with all its
heads at once (`heads_rows`), so a 2,048-token trace never holds more than a few tens of MB of weights.

Head scores, over the rows i ≥ 1 of each head's attention α (every position of the trace):
- previous_token: mean of α[i, i-1];  first_token: mean of α[i, 0];  self: mean of α[i, i];
- duplicate_token: mean, over rows whose token occurred earlier, of Σ α[i, j] over j < i with token_j == token_i;
- induction: mean, over rows with some j < i-1 where token_j == token_i, of Σ α[i, j+1] over those j;
- entropy: mean of −Σ_j α[i, j] ln α[i, j] (nats);
- distance: mean, over rows, of how far back the head looks, Σ_{j≥1} α[i, j]·(i − j) / Σ_{j≥1} α[i, j] in tokens,
  with the first position (where many heads park their attention: a sink) apart.
Attention by distance (`distance_profile`): mean α[i, i − d] over the rows that have a key d back (not the first).
Attention rollout (Abnar & Zuidema 2020): Ā_l = ½·mean_h(A_l) + ½·I, flow = Ā_{L−1} ·…· Ā_0.
Commitment (NDIF Workbench's commitment strip), from the logit lens: for each position p the lens covers, the first
layer l whose top-1 at p is the token at p + 1 and stays its top-1 in every layer after l, up to the last.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

from .errors import MissingDataError

SCORES = ("previous_token", "first_token", "self", "duplicate_token", "induction", "entropy", "distance")
CHUNK_ROWS = 256


def _token_masks(token_ids: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """For rows start..stop-1: where an earlier key holds the same token, and the keys just after such tokens."""
    rows = np.arange(start, stop)[:, None]
    keys = np.arange(len(token_ids))[None, :]
    same = (token_ids[start:stop, None] == token_ids[None, :]) & (keys < rows)
    after = np.zeros_like(same)
    before_previous = same & (keys < rows - 1)
    after[:, 1:] = before_previous[:, :-1]  # key j+1 for every earlier j < i-1 with the same token
    return same, after


def head_scores(trace, progress: bool = False, on_layer: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """name -> float32 [n_layers, n_heads]; NaN where a score has no rows (no repeated token, say).
    on_layer(layer) is called after each layer, for a progress bar (an exception it raises stops the work)."""
    ids = np.asarray(trace.token_ids)
    n = len(ids)
    sums = {name: np.zeros((trace.n_layers, trace.n_heads)) for name in SCORES}
    counts = dict.fromkeys(SCORES, 0)
    for layer in tqdm(range(trace.n_layers), desc="head scores", unit="layer", disable=not progress):
        for start in range(1, n, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, n)
            a = trace.layers[layer].heads_rows(start, stop)[:, :, :stop]  # [H, rows, keys ≤ last row]: causal
            rows = np.arange(start, stop)
            same, after = (m[:, :stop] for m in _token_masks(ids, start, stop))
            has_same, has_after = same.any(1), after.any(1)
            s = sums
            s["previous_token"][layer] += a[:, np.arange(len(rows)), rows - 1].sum(1)
            s["first_token"][layer] += a[:, :, 0].sum(1)
            s["self"][layer] += a[:, np.arange(len(rows)), rows].sum(1)
            s["duplicate_token"][layer] += (a * same)[:, has_same].sum((1, 2))
            s["induction"][layer] += (a * after)[:, has_after].sum((1, 2))
            s["entropy"][layer] += -(a * np.log(np.where(a > 0, a, 1))).sum((1, 2))
            back = (rows[:, None] - np.arange(1, stop)[None, :]).astype(np.float32)  # i − j for keys j ≥ 1
            looked = a[:, :, 1:]
            weight = looked.sum(2)
            s["distance"][layer] += np.where(weight > 0, (looked * back).sum(2) / np.where(weight > 0, weight, 1),
                                             0).sum(1)
            if layer == 0:
                for name in ("previous_token", "first_token", "self", "entropy", "distance"):
                    counts[name] += len(rows)
                counts["duplicate_token"] += int(has_same.sum())
                counts["induction"] += int(has_after.sum())
        if on_layer is not None:
            on_layer(layer)
    return {name: (sums[name] / counts[name] if counts[name] else np.full_like(sums[name], np.nan)).astype(np.float32)
            for name in SCORES}


def rollout(trace, progress: bool = False, on_layer: Callable[[int], None] | None = None) -> np.ndarray:
    """Attention rollout, float32 [T, T]: row i says how much each input position reaches position i's output.
    on_layer(layer) is called after each layer, as in `head_scores`."""
    n = trace.n_tokens
    eye = np.eye(n, dtype=np.float32)
    flow = eye.copy()
    for layer in tqdm(range(trace.n_layers), desc="rollout", unit="layer", disable=not progress):
        mean = np.empty((n, n), dtype=np.float32)
        for start in range(0, n, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, n)
            mean[start:stop, :stop] = trace.layers[layer].heads_rows(start, stop)[:, :, :stop].mean(0)
            mean[start:stop, stop:] = 0
        flow = (0.5 * mean + 0.5 * eye) @ flow
        if on_layer is not None:
            on_layer(layer)
    return flow


def distance_profile(trace, layer: int, head: int, max_distance: int = 64, kind: str = "raw") -> dict[str, np.ndarray]:
    """A head's attention by distance: "weight"[d] = mean α[i, i − d] over the rows i with a key d back that is not
    the first position, d = 0..max_distance; "first_token" = mean α[i, 0] (the sink, apart), over rows i ≥ 1.
    kind as in `trace.attention` ("no_position": the same head with its positional term taken out)."""
    n = trace.n_tokens
    depth = min(max_distance, n - 2) + 1 if n > 1 else 1
    sums, counts, first = np.zeros(depth), np.zeros(depth), 0.0
    for start in range(1, n, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, n)
        a = trace.attention_rows(layer, head, start, stop, kind=kind)
        rows = np.arange(start, stop)
        first += float(a[:, 0].sum())
        for d in range(depth):
            have = rows - d >= 1
            sums[d] += a[np.nonzero(have)[0], rows[have] - d].sum()
            counts[d] += have.sum()
    return {"distance": np.arange(depth), "weight": (sums / np.maximum(counts, 1)).astype(np.float32),
            "first_token": np.float32(first / max(n - 1, 1))}


NO_LENS = ('this trace has no logit lens: capture one with lm.generate(prompt, lens="steps") '
           'or lm.trace(text, lens="all")')
NOT_COMMITTED = -1  # commitment's value where the last layer's top-1 is not the next token (or there is none)


def commitment(lens, token_ids) -> np.ndarray:
    """int32 [P], one per position of `lens.positions`: the first layer from which the lens ranks the token that
    came next first, in that layer and every later one; NOT_COMMITTED where the last layer does not rank it first
    (a sampled token) and at the trace's end (no next token)."""
    ids = np.asarray(token_ids)
    after = lens.positions.astype(np.int64) + 1
    nxt = np.where(after < len(ids), ids[np.minimum(after, len(ids) - 1)], -1)  # -1: no token, never a top-1 id
    first = lens.top_ids[:, :, 0] == nxt[None, :]  # [L, P]: this layer ranks the next token first
    kept = np.logical_and.accumulate(first[::-1], axis=0)[::-1]  # kept[l]: first in l and in every layer after
    return np.where(kept[-1], kept.argmax(axis=0), NOT_COMMITTED).astype(np.int32)


class AnalysisAccessors:
    """The analyses of this module as methods of a Trace (`trace.head_scores()`, ...): Trace inherits them."""

    __slots__ = ()  # a mixin: the trace keeps its own attributes

    def head_scores(self, progress: bool = False) -> dict[str, np.ndarray]:
        """Scores of every head, name -> [n_layers, n_heads]: previous_token, first_token, self, duplicate_token,
        induction, entropy (definitions in explorer/analysis.py)."""
        return head_scores(self, progress=progress)

    def distance_profile(self, layer: int, head: int, max_distance: int = 64, kind: str = "raw") -> dict:
        """A head's mean attention by distance i − j (the first position, a sink, apart): see analysis.py."""
        self._check(layer, head)
        return distance_profile(self, layer, head, max_distance, kind)

    def attention_flow(self, kind: str = "rollout", progress: bool = False) -> np.ndarray:
        """How attention flows from the input through the layers, float32 [T, T]: "rollout" (Abnar & Zuidema 2020)."""
        if kind != "rollout":
            raise ValueError(f"attention_flow knows 'rollout', not {kind!r}")
        return rollout(self, progress=progress)

    def commitment(self) -> np.ndarray:
        """Per position the lens covers (`lens.positions`), the first layer from which the lens ranks the token that
        came next first and keeps it first to the last layer, int32 [P]; -1 where the last layer's top-1 is not that
        token (it was sampled) or there is none (the trace's end). MissingDataError for a trace with no lens."""
        if self.lens is None:
            raise MissingDataError(NO_LENS)
        return commitment(self.lens, self.token_ids)
