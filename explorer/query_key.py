"""One head's queries and keys in one picture (AttentionViz, Yeh et al. 2023): both sets projected together to 2-D by
PCA, after the keys are scaled and moved so that nearness in the picture follows the dot product.

Neither step changes the head's attention. Scaling queries by c and keys by 1/c keeps every q·k; adding one vector t
to every key adds q·t to every score of q's row, which that row's softmax does not see. So c is chosen to give both
clouds the same mean norm (c² = mean‖k‖ / mean‖q‖), then t moves the keys' centroid onto the queries'. A layer with a
logit soft-cap or learned sinks is scaled only: there a shift would change the softmax (the cap is not linear, the
sink's logit does not move with the keys).

Queries and keys are the ones the trace stores, after rotary, the same that `trace.attention` recomputes rows from.
Torch-free and model-free: a saved trace gets it too.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from .errors import MissingDataError, SelectionError


@dataclass
class QueryKeyMap:
    """A head's queries and keys, aligned and projected to 2-D: row i of `queries` and of `keys` is position i."""

    layer: int
    head: int
    queries: np.ndarray  # float32 [T, 2]
    keys: np.ndarray  # float32 [T, 2]
    scale: float  # c: queries were multiplied by c, keys divided by c
    shift: np.ndarray  # float32 [d]: then added to every key (zeros where the keys were not moved)
    moved: bool  # whether the keys were moved (False on a layer with a soft-cap or sinks)
    explained: np.ndarray  # float32 [2]: the share of the aligned vectors' variance along each axis


def _index(value, what: str, count: int) -> int:
    """`value` as an index in 0..count-1; SelectionError, naming the range, otherwise."""
    try:
        i = operator.index(value)
    except TypeError:
        raise SelectionError(f"{what} must be a whole number in 0..{count - 1}, not {value!r}") from None
    if not 0 <= i < count:
        raise SelectionError(f"{what} {i} is out of range: this trace has {what}s 0..{count - 1}")
    return i


def head_vectors(trace, layer, head) -> tuple[np.ndarray, np.ndarray]:
    """Head `head` of layer `layer`: its queries [T, d] and the keys it reads [T, d] (its group's), float64."""
    layer = _index(layer, "layer", trace.n_layers)
    head = _index(head, "head", trace.n_heads)
    store = trace.layers[layer]
    if getattr(store, "query", None) is None:
        raise MissingDataError(f"layer {layer} keeps attention weights only, no queries and keys (the model's attention "
                               "went through hooks, not transformers' attention interface): there is nothing to project")
    group = store.n_heads // store.key.shape[0]
    return store.query[head].astype(np.float64), store.key[head // group].astype(np.float64)


def align(query: np.ndarray, key: np.ndarray, move: bool = True) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Queries and keys [T, d] scaled to the same mean norm and, with `move`, the keys moved onto the queries'
    centroid: (queries, keys, c, t) with queries·c and keys/c + t; every row's softmax is unchanged."""
    q_norm, k_norm = np.linalg.norm(query, axis=1).mean(), np.linalg.norm(key, axis=1).mean()
    scale = float(np.sqrt(k_norm / q_norm)) if q_norm > 0 and k_norm > 0 else 1.0
    q, k = query * scale, key / scale
    shift = q.mean(0) - k.mean(0) if move else np.zeros(q.shape[1])
    return q, k + shift, scale, shift


def project(points: np.ndarray, n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """PCA of `points` [N, d]: their coordinates on the first n principal axes [N, n] (each axis signed so that its
    largest loading is positive; zeros past the data's rank) and the share of the variance along each [n]."""
    centred = points - points.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    vt = vt[:n]
    vt = vt * np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])[:, None]
    coords = np.zeros((len(points), n))
    coords[:, : len(vt)] = centred @ vt.T
    variance = s**2
    explained = np.zeros(n)
    explained[: len(vt)] = variance[:n] / variance.sum() if variance.sum() > 0 else 0
    return coords, explained


def query_key_map(trace, layer: int, head: int) -> QueryKeyMap:
    """Head `head` of layer `layer`'s queries and keys, aligned (see the module) and projected together to 2-D."""
    query, key = head_vectors(trace, layer, head)
    store = trace.layers[layer]
    move = not store.softcap and store.sinks is None
    q, k, scale, shift = align(query, key, move)
    coords, explained = project(np.concatenate([q, k]))
    n = len(q)
    return QueryKeyMap(layer=int(layer), head=int(head), queries=coords[:n].astype(np.float32),
                       keys=coords[n:].astype(np.float32), scale=scale, shift=shift.astype(np.float32), moved=move,
                       explained=explained.astype(np.float32))


class QueryKeyAccessors:
    """This module's picture as a method of a Trace (`trace.query_key_map(layer, head)`): Trace inherits it."""

    __slots__ = ()  # a mixin: the trace keeps its own attributes

    def query_key_map(self, layer: int, head: int) -> QueryKeyMap:
        """A head's queries and keys projected together to 2-D (AttentionViz): keys scaled and moved so that nearness
        follows the dot product, each softmax row unchanged; see explorer/query_key.py."""
        return query_key_map(self, layer, head)
